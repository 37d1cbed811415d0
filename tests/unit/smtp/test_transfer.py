"""`smtp.transfer.Transfer`: the header-block limit on the streamed path, whatever the read sizes.

CI caught the integration test flaking: when one 64 KiB read carried both the 256 KiB mark and the
blank line, the over-size header block went upstream. The upstream stream here is a recorder (the
collaborator), the `Transfer` is the real one.
"""

from __future__ import annotations

import asyncio

import pytest

from relay365 import replies
from relay365.delivery.message import Body
from relay365.smtp.rewrite import HEAD_MAX
from relay365.smtp.transfer import Transfer

MB = "scanner@contoso.com"


class Recorder:
    def __init__(self) -> None:
        self.written = bytearray()
        self.aborted = False

    async def write(self, data: bytes) -> None:
        self.written += data

    def abort(self) -> None:
        self.aborted = True


@pytest.fixture
def body(tmp_path):
    b = Body(tmp_path)
    yield b
    b.close()


def streaming(body: Body, rewrite: bool) -> tuple[Transfer, Recorder]:
    t = Transfer(handler=None, state=None, body=body)  # type: ignore[arg-type]
    up = Recorder()
    t.stream = up  # type: ignore[assignment]
    t.rewrite_to = MB if rewrite else None
    t.head = bytearray() if rewrite else None
    return t, up


def message(header_bytes: int) -> bytes:
    line = b"X-Filler: " + b"h" * 200 + b"\r\n"
    return b"From: a@lan.local\r\n" + line * (header_bytes // len(line)) + b"\r\nbody\r\n"


def feed(t: Transfer, data: bytes, size: int) -> None:
    async def run() -> None:
        for i in range(0, len(data), size):
            await t.feed(data[i:i + size])
    asyncio.run(run())


@pytest.mark.parametrize("size", [1000, 4096, 64 * 1024, 100_000, 400_000])
def test_a_header_block_over_the_limit_is_refused_however_it_is_cut(body, size):
    data = message(HEAD_MAX + 60_000)
    t, up = streaming(body, rewrite=True)
    feed(t, data, size)
    assert t.failed is not None and t.failed.reply == replies.HEADERS_TOO_BIG
    assert up.aborted and b"body" not in up.written


@pytest.mark.parametrize("size", [1000, 64 * 1024, 400_000])
def test_a_header_block_under_the_limit_goes_on_rewritten(body, size):
    data = message(HEAD_MAX - 10_000)
    t, up = streaming(body, rewrite=True)
    feed(t, data, size)
    assert t.failed is None and not up.aborted
    assert up.written.startswith(b"From: scanner@contoso.com\r\nReply-To: a@lan.local\r\n")
    assert up.written.endswith(b"\r\n\r\nbody\r\n")
    assert t.body.size == len(data)
