"""After login: a transparent byte splice between the client and the upstream, with back-pressure.

Nothing is parsed, so IDLE, literals, APPEND, COMPRESS and any extension the upstream has just work.
Each direction reads at most `CHUNK` bytes and waits for `drain()` before reading more, so a session
holds at most about two chunks plus the transports' high-water marks, however large the messages.
Nothing is logged per chunk; the caller logs one summary with `SpliceResult`.

The idle timer is one `call_later` per session that re-arms itself from the last activity, rather
than a timeout around every read: a thousand idling sessions cost a thousand timer handles, not a
thousand timers rescheduled per chunk.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..states import ClosedBy

CHUNK = 256 * 1024


@dataclass
class SpliceResult:
    closed_by: ClosedBy
    bytes_up: int  # client -> upstream
    bytes_down: int  # upstream -> client


class _Pump:
    """Copies one direction. `run()` says how it ended, naming the side that ended it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 touch: Callable[[], None],
                 source: str, sink: str) -> None:
        self.reader, self.writer, self.touch = reader, writer, touch
        self.source, self.sink = source, sink
        self.count = 0

    async def run(self) -> ClosedBy:
        read, write, drain = self.reader.read, self.writer.write, self.writer.drain
        while True:
            try:
                data = await read(CHUNK)
            except (ConnectionError, OSError):
                return ClosedBy(f"{self.source}_error")
            if not data:
                return ClosedBy(self.source)
            self.count += len(data)
            self.touch()
            try:
                write(data)
                await drain()
            except (ConnectionError, OSError):
                return ClosedBy(f"{self.sink}_error")


async def splice(client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 *, idle_timeout: float, max_time: float | None = None) -> SpliceResult:
    """Copy both ways until a side closes, nothing moves for `idle_timeout` seconds, or the
    session is `max_time` seconds old (None: no limit)."""
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    last = [start]
    idle = asyncio.Event()
    why = [ClosedBy.IDLE_TIMEOUT]

    def touch() -> None:
        last[0] = time.monotonic()

    def check() -> None:
        now = time.monotonic()
        if max_time is not None and now - start >= max_time:
            why[0] = ClosedBy.SESSION_TIME
            idle.set()
            return
        remaining = last[0] + idle_timeout - now
        if remaining <= 0:
            idle.set()
        else:
            if max_time is not None:
                remaining = min(remaining, start + max_time - now)
            handle[0] = loop.call_later(remaining, check)

    handle = [loop.call_later(idle_timeout if max_time is None else min(idle_timeout, max_time), check)]
    up = _Pump(client[0], upstream[1], touch, "client", "upstream")
    down = _Pump(upstream[0], client[1], touch, "upstream", "client")
    idle_task = asyncio.create_task(idle.wait(), name="splice-idle")
    pumps = [asyncio.create_task(up.run(), name="splice-up"),
             asyncio.create_task(down.run(), name="splice-down")]
    tasks: list[asyncio.Task[object]] = [*pumps, idle_task]
    closed_by = ClosedBy.SHUTDOWN
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        first = next(iter(done))
        closed_by = why[0] if first is idle_task else next(p.result() for p in pumps if p is first)
    finally:
        handle[0].cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in (client[1], upstream[1]):
            writer.close()
    return SpliceResult(closed_by, up.count, down.count)
