"""Giving freed memory back to the system: glibc's `malloc_trim(0)` when its heaps hold much free.

A relay that has served a thousand IMAP sessions and seen them end holds memory it no longer
uses: not Python objects (tracemalloc stays flat) but free chunks in the middle of glibc's heaps
- OpenSSL's per-connection buffers, uvloop's 256 KiB TLS read buffer per connection, session
objects - that glibc only returns when they sit at the top of a heap. `malloc_trim(0)` walks the
heaps and hands every free page back (`madvise(MADV_DONTNEED)`); nothing in use moves. Without it
RSS climbed about 7 MiB per 1,000 ended sessions (RELIABILITY.md, `bench/churn.py`).

Every 10 s the trimmer asks glibc how much of its heap is free (`mallinfo2`, a walk over the
free lists, microseconds) and trims only when that is at least `MIN_FREE` (4 MiB), so a fresh
relay at rest does not trim. (Backing off after trims that gave little back was tried: pages
freed between trims stayed resident and the churn bench grew 4.5 MiB a round again.) A trim runs
in a worker thread (ctypes drops the GIL), so the event loop goes on; it took 11 ms over a 280 MiB heap
with nothing to give back and 57 ms giving back 371 MiB (this machine). `RELAY365_MALLOC_TRIM`
sets the interval in seconds (`0`: never, for measuring). Where the C library is not glibc (musl,
macOS) there is no `malloc_trim` and this does nothing; a glibc older than 2.33 has no
`mallinfo2`, and then every round trims.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import time
from collections.abc import Callable

import structlog

from .hardening import libc

log = structlog.get_logger("relay365.memory")

DEFAULT_EVERY = 10.0
MIN_FREE = 4 * 2**20
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _malloc_trim() -> Callable[[int], int] | None:
    trim = getattr(libc(), "malloc_trim", None)  # not glibc: no such symbol
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def heap_free() -> int | None:
    """Bytes glibc holds free in its heaps (`mallinfo2().fordblks`); None without mallinfo2."""
    info = getattr(libc(), "mallinfo2", None)
    if info is None:
        return None
    info.restype = _Mallinfo2
    return int(info().fordblks)


def rss_bytes() -> int | None:
    """This process's resident set size, from /proc (None where there is no /proc)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return None


def interval(environ: dict[str, str] | os._Environ[str] = os.environ) -> float:
    """Seconds between trims from RELAY365_MALLOC_TRIM (0 or less: never)."""
    raw = environ.get("RELAY365_MALLOC_TRIM", "")
    try:
        return float(raw) if raw.strip() else DEFAULT_EVERY
    except ValueError:
        log.warning("malloc_trim_interval_invalid", value=raw, using=DEFAULT_EVERY)
        return DEFAULT_EVERY


class Trimmer:
    """Calls malloc_trim(0) every `every` seconds; `trim()` once, returning the bytes released."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._trim = _malloc_trim()
        self.released = 0  # bytes, over the daemon's life

    @property
    def available(self) -> bool:
        return self._trim is not None and self.every > 0

    def trim(self) -> int:
        if self._trim is None:
            return 0
        before, started = rss_bytes(), time.perf_counter()
        self._trim(0)
        after, ms = rss_bytes(), (time.perf_counter() - started) * 1000
        released = max(0, before - after) if before is not None and after is not None else 0
        self.released += released
        log.debug("memory_trimmed", released_kib=released // 1024, ms=round(ms, 2),
                  rss_mib=None if after is None else round(after / 2**20, 1))
        return released

    def worth_it(self) -> bool:
        free = heap_free()
        return free is None or free >= MIN_FREE

    async def run(self) -> None:
        if not self.available:
            return
        while True:
            await asyncio.sleep(self.every)
            if self.worth_it():
                await asyncio.to_thread(self.trim)
