"""WireEncoder: in any chunking, the same DATA bytes as aiosmtplib sends for the whole message."""

from __future__ import annotations

from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from relay365.delivery.wire import WireEncoder


def aiosmtplib_wire(message: bytes) -> bytes:
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"


def encode(chunks: list[bytes]) -> bytes:
    enc = WireEncoder()
    return b"".join(enc.feed(c) for c in chunks) + enc.end()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


PIECES = st.sampled_from([b".", b"..", b"\r", b"\n", b"\r\n", b"a", b"Subject: x", b".\r\n", b" "])


@given(st.lists(PIECES, max_size=40).map(b"".join), st.lists(st.integers(0, 400), max_size=8))
def test_any_chunking_gives_what_aiosmtplib_sends(message: bytes, cuts: list[int]) -> None:
    assert encode(split(message, cuts)) == aiosmtplib_wire(message)


def test_examples() -> None:
    assert encode([b"a\r\n.b\r\n"]) == b"a\r\n..b\r\n.\r\n"
    assert encode([b"a\r", b"\n", b".", b"\r\nb"]) == b"a\r\n..\r\nb\r\n.\r\n"
    assert encode([b"a\n.\n"]) == b"a\r\n..\r\n.\r\n"  # a dot line is never the end
    assert encode([b"x\r"]) == b"x\r\n.\r\n"
    assert encode([]) == b"\r\n.\r\n"


def test_one_copy_per_chunk_at_most() -> None:
    chunk = b"x" * 1000 + b"\r\n"
    enc = WireEncoder()
    assert enc.feed(chunk) is chunk  # nothing to change: the chunk itself, not a copy
