"""Idle upstream SMTP sessions kept for the next client of the same mailbox.

A scanner opens one SMTP session per scan; without a pool each of those costs Office 365 a TCP and
TLS handshake and an XOAUTH2 login (tens of milliseconds, and a login Exchange counts). When a
client session ends, its upstream session - already authenticated as the mailbox - is reset (RSET)
and parked here for `idle_seconds`; the next client sending as that mailbox takes it. A parked
session is never older than `max_age` (so a token's lifetime is never stretched far), at most
`per_mailbox` wait per mailbox (Exchange allows 3 concurrent SMTP sessions per mailbox), and the
server may have closed it meanwhile: the caller retries once on a fresh session when a taken one
turns out dead (see `RelayHandler`).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass

import structlog

from .smtp import UpstreamSMTP

log = structlog.get_logger("relay365.delivery.pool")


@dataclass
class _Parked:
    since: float
    up: UpstreamSMTP


class UpstreamPool:
    def __init__(self, idle_seconds: float, *, max_age: float = 300.0, per_mailbox: int = 2) -> None:
        self.idle_seconds = idle_seconds
        self.max_age = max_age
        self.per_mailbox = per_mailbox
        self._parked: dict[str, list[_Parked]] = defaultdict(list)
        self._closing: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return sum(len(v) for v in self._parked.values())

    def take(self, mailbox: str) -> UpstreamSMTP | None:
        """The most recently parked live session for `mailbox`, or None."""
        self._prune()
        parked = self._parked.get(mailbox.lower())
        while parked:
            up = parked.pop().up
            if up.connected:
                return up
            self._close(up)
        return None

    async def give(self, up: UpstreamSMTP) -> None:
        """Park a session whose client is gone (after RSET), or close it."""
        key = (up.mailbox or "").lower()
        if (self.idle_seconds <= 0 or not key or not up.connected or up.interrupted
                or self._too_old(up, time.monotonic())
                or len(self._parked[key]) >= self.per_mailbox):
            await up.close()
            return
        if not await up.rset():  # ends a transaction the client left open; closed on failure
            return
        self._parked[key].append(_Parked(time.monotonic(), up))
        log.info("upstream_parked", mailbox=key, parked=len(self))
        self._schedule()

    async def close_all(self) -> None:
        parked = [p.up for entries in self._parked.values() for p in entries]
        self._parked.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await asyncio.gather(*(up.close() for up in parked), *self._closing, return_exceptions=True)

    # -- housekeeping ----------------------------------------------------------------------------

    def _too_old(self, up: UpstreamSMTP, now: float) -> bool:
        return up.opened_at is not None and now - up.opened_at > self.max_age

    def _prune(self) -> None:
        now = time.monotonic()
        for key, entries in list(self._parked.items()):
            keep = []
            for p in entries:
                if now - p.since < self.idle_seconds and not self._too_old(p.up, now) and p.up.connected:
                    keep.append(p)
                else:
                    self._close(p.up)
            if keep:
                self._parked[key] = keep
            else:
                del self._parked[key]

    def _schedule(self) -> None:
        """One timer for the pool: wake when the oldest parked session's idle time is up."""
        if self._timer is not None:
            return

        def fire() -> None:
            self._timer = None
            self._prune()
            if len(self):
                self._schedule()

        oldest = min(p.since for entries in self._parked.values() for p in entries)
        delay = max(0.05, oldest + self.idle_seconds - time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, fire)

    def _close(self, up: UpstreamSMTP) -> None:
        task = asyncio.get_running_loop().create_task(up.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
