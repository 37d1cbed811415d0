"""Body: small content in memory, large in a temporary file; read back the same in chunks."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from relay365.delivery.message import CHUNK, Body, BytesMessage, FileMessage, WithHead, read_all
from relay365.smtp.rewrite import HEAD_MAX, rewrite_from, rewrite_message
from tests.support.tmpfs import tmpfs


def fill(body: Body, data: bytes, step: int) -> Body:
    for i in range(0, len(data), step):
        body.write(data[i:i + step])
    return body


def test_small_stays_in_memory_large_moves_to_a_file_with_no_name(tmp_path: Path) -> None:
    small = fill(Body(tmp_path, spill=1000), b"x" * 1000, 100)
    assert small.in_memory and read_all(small) == b"x" * 1000
    data = os.urandom(3 * CHUNK + 17)
    big = fill(Body(tmp_path, spill=1000), data, 4096)
    assert not big.in_memory and big.size == len(data)
    assert read_all(big) == data and read_all(big) == data  # read as often as needed
    assert max(len(c) for c in big.chunks()) <= CHUNK
    assert list(tmp_path.iterdir()) == []  # anonymous: nothing to clean up after a crash
    big.close()


def test_a_write_failure_is_kept_not_raised(tmp_path: Path) -> None:
    missing = tmp_path / "file"
    missing.write_text("not a directory")
    body = Body(missing / "sub", spill=10)  # cannot be made: falls back to the system temp dir
    body.write(b"y" * 100)
    assert body.error is None and read_all(body) == b"y" * 100
    body.close()

    class FullDisk(Body):
        def _open(self):  # type: ignore[no-untyped-def]
            return open("/dev/full", "wb")  # every write: ENOSPC

    full = FullDisk(tmp_path, spill=10)
    full.write(b"z" * (1 << 20))
    assert full.error is not None  # ENOSPC, kept for the 452
    full.write(b"more")  # ignored, no exception
    full.close()


def test_a_directory_that_refuses_a_temporary_file_falls_back_to_the_system_temp_dir(
        tmp_path: Path) -> None:
    """The spool read-only: a large message sent straight on (delivery: direct) needs no spool,
    and was refused with 452 because its temporary file could not be made there."""
    with tmpfs(tmp_path / "spool-tmp", "size=64k,ro") as ro:
        body = fill(Body(ro, spill=10), b"y" * 100_000, 4096)
        assert body.error is None and not body.in_memory and read_all(body) == b"y" * 100_000
        body.close()


def test_file_message_and_with_head(tmp_path: Path) -> None:
    path = tmp_path / "m.eml"
    path.write_bytes(b"a" * (CHUNK + 5))
    assert read_all(FileMessage(path)) == b"a" * (CHUNK + 5)
    body = fill(Body(tmp_path, spill=8), b"Old: 1\r\n\r\nbody", 3)
    w = WithHead(body, b"New: 2\r\n\r\n", 10)
    assert read_all(w) == b"New: 2\r\n\r\nbody" and w.size == len(read_all(w))
    body.close()
    assert read_all(BytesMessage(b"q" * (2 * CHUNK))) == b"q" * (2 * CHUNK)


HEADERS = st.lists(st.sampled_from([
    b"From: Scanner <scan@lan.test>\r\n", b"Subject: x\r\n", b"Reply-To: r@x.test\r\n",
    b"From: a@b.test\r\n", b" folded\r\n", b"To: t@x.test\r\n"]), max_size=6).map(b"".join)


@given(HEADERS, st.binary(max_size=300), st.integers(1, 64))
def test_rewrite_message_is_rewrite_from_of_the_whole(headers: bytes, rest: bytes, step: int) -> None:
    for message in (headers + b"\r\n" + rest, headers, b"\r\n" + rest):
        body = fill(Body(None, spill=32), message, step)
        assert read_all(rewrite_message(body, "box@contoso.test")) == rewrite_from(
            message, "box@contoso.test")
        body.close()


def test_rewrite_message_reads_only_the_head_of_a_large_message(tmp_path: Path) -> None:
    big = b"From: a@lan.test\r\nSubject: s\r\n\r\n" + b"b" * (4 * HEAD_MAX)
    body = fill(Body(tmp_path), big, CHUNK)
    out = rewrite_message(body, "box@contoso.test")
    assert isinstance(out, WithHead) and len(out.head) < 200
    assert read_all(out) == rewrite_from(big, "box@contoso.test")
    body.close()
