"""DataReader: every transcript whole and byte by byte; any chunking gives the same result."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay365.smtp.data import DataError, DataReader


def read(data: bytes, chunks: list[int] | None = None, max_size: int | None = None) -> DataReader:
    reader = DataReader(max_size)
    out = b""
    if chunks is None:
        out = reader.feed(data)
    else:
        pos = 0
        for n in chunks:
            out += reader.feed(data[pos:pos + n])
            pos += n
        out += reader.feed(data[pos:])
    reader.content = out  # type: ignore[attr-defined]
    return reader


CASES = [
    (b"a\r\nb\r\n.\r\n", b"a\r\nb\r\n", b""),
    (b".\r\n", b"", b""),  # an empty message
    (b"..dot\r\n.\r\nQUIT\r\n", b".dot\r\n", b"QUIT\r\n"),  # pipelined command kept
    (b"bare\nlf\n..dot\n\r\n.\r\n", b"bare\r\nlf\r\n.dot\r\n\r\n", b""),  # bare LF ends lines
    (b"x\n.\nMAIL FROM:<a@b>\r\n.\r\n", b"x\r\n.\r\nMAIL FROM:<a@b>\r\n", b""),  # not the end
    (b"x\r\n.\nrest\r\n.\r\n", b"x\r\n.\r\nrest\r\n", b""),
    (b"x\n.\r\nrest\r\n.\r\n", b"x\r\n.\r\nrest\r\n", b""),  # after a bare LF: content
    (b"a\rb\r\n.\r\n", b"a\rb\r\n", b""),  # a lone CR stays inside the line
]


@pytest.mark.parametrize(("data", "content", "rest"), CASES)
def test_transcripts_whole_and_byte_by_byte(data, content, rest):
    for chunks in (None, [1] * len(data)):
        reader = read(data, chunks)
        assert reader.done and reader.error is None
        assert reader.content == content and reader.rest == rest


def test_unfinished_data_is_not_done():
    reader = read(b"a\r\nb\r\n.")
    assert not reader.done


def test_too_big_still_reads_to_the_end():
    reader = read(b"x" * 50 + b"\r\n" + b"y\r\n.\r\nNOOP\r\n", max_size=20)
    assert reader.done and reader.error is DataError.TOO_BIG and reader.rest == b"NOOP\r\n"


def test_a_long_line_is_refused_and_its_tail_is_no_end_marker():
    reader = read(b"z" * 2000 + b".\r\n" + b"ok\r\n.\r\n", chunks=[600, 600, 600])
    assert reader.done and reader.error is DataError.LINE_TOO_LONG
    assert reader.rest == b""  # the ".\r\n" tail of the long line did not end DATA early


@given(st.binary(max_size=300), st.lists(st.integers(1, 40), max_size=30))
def test_any_chunking_gives_the_same_content(data, chunks):
    data = data + b"\r\n.\r\n"
    whole, split = read(data), read(data, chunks)
    assert (whole.content, whole.rest, whole.done, whole.error) == (
        split.content, split.rest, split.done, split.error)


@given(st.binary(max_size=300))
def test_content_lines_always_end_in_crlf_and_the_marker_never_leaks(data):
    reader = read(data + b"\r\n.\r\n")
    assert reader.done
    if reader.error is None and reader.content:
        assert reader.content.endswith(b"\r\n")
        assert b"\n" not in reader.content.replace(b"\r\n", b"")


def test_a_complete_line_over_the_limit_is_refused():
    reader = read(b"y" * 1500 + b"\r\n.\r\n")  # one feed: the line is complete, then the end
    assert reader.done and reader.error is DataError.LINE_TOO_LONG


class LineByLine(DataReader):
    """The reference: the line-by-line rules only, with the fast path turned off."""

    def _fast(self, buf: bytes) -> bytes | None:
        return None


SMTP_PIECES = st.sampled_from([b".", b"..", b"\r", b"\n", b"\r\n", b"a", b"x" * 30, b".\r\n",
                               b"\r\n.\r\n", b"\n.\r\n", b"NOOP\r\n"])


@given(st.lists(SMTP_PIECES, max_size=60).map(b"".join), st.lists(st.integers(1, 80), max_size=12),
       st.sampled_from([None, 40, 200]), st.sampled_from([20, 1001]))
def test_the_fast_path_agrees_with_the_line_rules(data, chunks, max_size, max_line):
    """Whatever the bytes and their chunking: the same content, end, rest and error."""
    results = []
    for cls in (DataReader, LineByLine):
        reader, out, pos = cls(max_size, max_line), b"", 0
        for n in chunks:
            out += reader.feed(data[pos:pos + n])
            pos += n
        out += reader.feed(data[pos:])
        results.append((out, reader.done, reader.rest, reader.error, reader.size))
    assert results[0] == results[1]


def test_the_fast_path_takes_a_large_crlf_message_whole():
    body = b"".join(b"line %d .dots stay\r\n" % i for i in range(20000)) + b"..x\r\n"
    reader = DataReader(None)
    out = reader.feed(body + b".\r\nQUIT\r\n")
    assert reader.done and out == body[:-5] + b".x\r\n" and reader.rest == b"QUIT\r\n"


def test_an_over_long_line_cut_between_its_cr_and_lf_still_ends_before_the_marker():
    """fuzz/findings/smtp_data-done-differs: the CR went with the dropped start of the line, and
    the "." line after it was taken for content, so DATA never ended when cut there."""
    data = b"x" * 200 + b"\r\n.\r\nNOOP\r\n"
    for cut in range(1, len(data)):
        reader = DataReader(None, max_line=200)
        reader.feed(data[:cut])
        reader.feed(data[cut:])
        assert reader.done and reader.error is DataError.LINE_TOO_LONG and reader.rest == b"NOOP\r\n", cut
