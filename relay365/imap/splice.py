"""After login: a transparent byte splice between the client and the upstream, with back-pressure.

Nothing is parsed, so IDLE, literals, APPEND, COMPRESS and any extension the upstream has just work.
The splice works at the transport level: each side's transport gets a small protocol (`_End`)
whose `data_received` writes the bytes straight into the other side's transport - no reader task,
no stream buffer, no copy in Python. Back-pressure is the transports' own: when one side's write
buffer passes its high-water mark, that side's protocol pauses reading from the other, and resumes
it when the buffer drains. A session holds at most the transports' buffers, however large the
messages, and an idle one holds no task at all. Nothing is logged per chunk; the caller logs one
summary with `SpliceResult`.

The idle timer is one `call_later` per session that re-arms itself from the last activity, rather
than a timeout around every read: a thousand idling sessions cost a thousand timer handles, not a
thousand timers rescheduled per chunk.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import cast

from ..states import ClosedBy


@dataclass
class SpliceResult:
    closed_by: ClosedBy
    bytes_up: int  # client -> upstream
    bytes_down: int  # upstream -> client


class _End(asyncio.Protocol):
    """One side of the splice: what its transport receives goes to the other side's transport."""

    __slots__ = ("count", "done", "name", "peer", "touch", "transport")

    def __init__(self, transport: asyncio.Transport, name: str, done: asyncio.Future[ClosedBy],
                 touch: list[float]) -> None:
        self.transport, self.name, self.done, self.touch = transport, name, done, touch
        self.peer: _End = self
        self.count = 0

    def _end(self, why: ClosedBy) -> None:
        if not self.done.done():
            self.done.set_result(why)

    def data_received(self, data: bytes) -> None:
        self.count += len(data)
        self.touch[0] = time.monotonic()
        sink = self.peer.transport
        if sink.is_closing():
            self._end(ClosedBy(f"{self.peer.name}_error"))
            return
        sink.write(data)

    def eof_received(self) -> bool:
        self._end(ClosedBy(self.name))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(ClosedBy(self.name if exc is None else f"{self.name}_error"))

    # my transport's write buffer is full (or drained): stop (or go on) reading the other side
    def pause_writing(self) -> None:
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.peer.transport.resume_reading()


def _buffered(reader: asyncio.StreamReader) -> bytes:
    """What the stream reader received but nobody read yet (the client's pipelined commands, the
    upstream's first untagged lines): it goes across before the transports are switched over.
    StreamReader has no public way to take its buffer without awaiting; `_buffer` is the bytearray
    it has kept since asyncio's first release."""
    buffer = getattr(reader, "_buffer", None)
    if not isinstance(buffer, bytearray) or not buffer:
        return b""
    data = bytes(buffer)
    buffer.clear()
    return data


async def splice(client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 *, idle_timeout: float, max_time: float | None = None) -> SpliceResult:
    """Copy both ways until a side closes, nothing moves for `idle_timeout` seconds, or the
    session is `max_time` seconds old (None: no limit)."""
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    last = [start]
    done: asyncio.Future[ClosedBy] = loop.create_future()
    for _, writer in (client, upstream):
        await writer.drain()  # nothing waits behind a high-water mark the new protocol never saw
    # uvloop's transports are not subclasses of asyncio.Transport, but have its methods
    c_transport = cast(asyncio.Transport, client[1].transport)
    u_transport = cast(asyncio.Transport, upstream[1].transport)
    up, down = _End(c_transport, "client", done, last), _End(u_transport, "upstream", done, last)
    up.peer, down.peer = down, up
    for end, (reader, _) in ((up, client), (down, upstream)):
        pending = _buffered(reader)
        end.transport.set_protocol(end)
        if pending:
            end.data_received(pending)
        if reader.at_eof() or reader.exception() is not None:
            end.connection_lost(reader.exception())
        else:
            end.transport.resume_reading()  # the stream reader may have paused it (full buffer)

    def check() -> None:
        now = time.monotonic()
        if max_time is not None and now - start >= max_time:
            up._end(ClosedBy.SESSION_TIME)
            return
        remaining = last[0] + idle_timeout - now
        if remaining <= 0:
            up._end(ClosedBy.IDLE_TIMEOUT)
        else:
            if max_time is not None:
                remaining = min(remaining, start + max_time - now)
            handle[0] = loop.call_later(remaining, check)

    handle = [loop.call_later(idle_timeout if max_time is None else min(idle_timeout, max_time), check)]
    closed_by = ClosedBy.SHUTDOWN
    try:
        closed_by = await done
    finally:
        handle[0].cancel()
        for writer in (client[1], upstream[1]):
            writer.close()
    return SpliceResult(closed_by, up.count, down.count)
