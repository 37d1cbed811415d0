"""The spool worker's hold on its directory, which the file system may refuse for a while.

Theory of operation. Before the worker delivers anything it claims the spool: makes its
directories, takes the worker lock (one delivering relay365 per spool) and sweeps `tmp/` of what
a crash left half-written. A spool the file system refuses (read-only, no permission, full)
must not stop the relay - direct SMTP, IMAP and POP3 need no spool - so a refusal is kept as
`refusal` (what `submit` answers, 452) and said once as `spool_unwritable` with what to do, and
the worker tries again until the claim holds. Another relay365 holding the lock is fatal when the
relay starts (two relays configured on one spool is an operator's mistake to see at once); once
the relay is running and waiting, it is waited out like any other refusal, never delivered beside.
"""

from __future__ import annotations

import asyncio

import structlog

from . import outcome
from .entry import SpoolError
from .queue import SpoolQueue, storage_error

log = structlog.get_logger("relay365.spool")


class Claim:
    __slots__ = ("queue", "refusal")

    def __init__(self, queue: SpoolQueue) -> None:
        self.queue = queue
        self.refusal: SpoolError | None = None  # why the spool is not claimed yet

    async def take(self, *, starting: bool) -> int | None:
        """Claim the spool: the number of `tmp/` leftovers swept, or None (see `refusal`).

        Raises SpoolError when `starting` and another relay365 holds the spool."""
        def claim() -> int:
            self.queue.ensure_dirs()
            self.queue.lock_worker()
            return self.queue.recover()

        root = self.queue.root
        try:
            swept = await asyncio.to_thread(claim)
        except SpoolError as exc:  # another relay365 has it
            if starting:
                raise
            self.queue.unlock_worker()
            self.refusal = exc
            return None
        except OSError as exc:
            self.queue.unlock_worker()
            first = self.refusal is None
            self.refusal = storage_error(exc, "cannot queue the message", root)
            if first:
                log.error("spool_unwritable", spool=str(root), error=str(self.refusal),
                          action=f"make {root} writable by this user; the relay takes it up "
                                 f"within {outcome.WRITE_RETRY:g} s, no restart needed")
            return None
        if self.refusal is not None:
            log.info("spool_writable", spool=str(root))
        self.refusal = None
        return swept
