"""Writing an attempt's outcome into the queue, and holding what the queue refuses, for the worker.

`Recorder.write(entry, steps)` carries out the `outcome` steps in order, each in a thread (fsync
blocks), logs the facts they make (a dead letter and its id, recipients split off) and sends the
admin notice for a dead letter through `notice`. A step the directory refuses (any OSError:
read-only, full, I/O error) and every step after it stay in `unwritten`, logged once per kind and
entry as `spool_write_failed` (an error: someone has to make the spool writable again), and are
tried again by `retry` every `WRITE_RETRY` seconds; `spool_write_recovered` says when they went
through. What the worker's index holds meanwhile is `outcome.Unwritten`'s business.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable, Container

import structlog

from .. import metrics
from ..replies import one_line
from .entry import Entry
from .outcome import ACTIONS, DeadLetter, Defer, Pending, Remove, Step, Unwritten, step_name
from .queue import SpoolQueue

log = structlog.get_logger("relay365.spool")

Notice = Callable[[Entry, str, str], Awaitable[None]]  # (entry, reason, failed_id)


def _os_error(exc: OSError) -> str:
    return f"{errno.errorcode.get(exc.errno or 0, 'EIO')} ({exc.strerror})"


class Recorder:
    def __init__(self, queue: SpoolQueue, notice: Notice) -> None:
        self.queue = queue
        self.notice = notice
        self.unwritten = Unwritten()

    async def write(self, entry: Entry, steps: list[Step], now: float) -> Entry | None:
        """Record an attempt's outcome; the entry as the index should hold it now (None: gone),
        whether or not the directory took it yet."""
        held = self.unwritten.add(entry, steps)
        await self._flush(held, now)
        return held.view

    async def retry(self, now: float, busy: Container[str]) -> None:
        """Try the unwritten steps again (not those of `busy` entries: their attempt writes)."""
        for entry_id, held in list(self.unwritten.pending.items()):
            if entry_id not in busy and self.unwritten.pending.get(entry_id) is held:
                await self._flush(held, now)
        self.unwritten.tried(now)

    def report_at_stop(self) -> None:
        if self.unwritten:
            log.warning("spool_unwritten_at_stop", ids=sorted(self.unwritten.pending),
                        action="the spool refused these outcomes to the end: delivered ones are "
                               "sent again after the restart, the others tried again")

    async def _flush(self, held: Pending, now: float) -> None:
        entry = held.entry
        while held.steps:
            step = held.steps[0]
            try:
                there = await self._carry_out(entry, step)
            except OSError as exc:
                self.unwritten.refused(now)
                if held.report(step):
                    log.error("spool_write_failed", id=entry.id, mailbox=entry.mailbox,
                              step=step_name(step), path=str(entry.path), error=_os_error(exc),
                              action=ACTIONS[type(step)])
                return
            if not there:  # an operator removed the entry meanwhile: nothing left to record
                held.steps.clear()
                held.view = None
                break
            held.steps.pop(0)
        self.unwritten.pending.pop(entry.id, None)
        if held.reported:
            log.info("spool_write_recovered", id=entry.id, mailbox=entry.mailbox,
                     steps=sorted(held.reported))

    async def _carry_out(self, entry: Entry, step: Step) -> bool:
        """One step in the queue; False when the entry is not there any more."""
        q = self.queue
        if isinstance(step, Remove):
            await asyncio.to_thread(q.complete, entry.id)
            return True
        if isinstance(step, Defer):
            return await asyncio.to_thread(q.defer, entry.id, now=step.now, error=step.error,
                                           next_attempt=step.next_attempt,
                                           rcpts=step.rcpts) is not None
        if isinstance(step, DeadLetter):
            failed_id = await asyncio.to_thread(q.fail, entry.id, step.reason, step.now,
                                                step.rcpt_errors)
            metrics.SPOOL_FAILED.inc()
            log.warning("spool_failed", id=entry.id, failed_id=failed_id, mailbox=entry.mailbox,
                        attempts=entry.attempts + 1, reason=step.reason)
            if failed_id is not None:
                await self.notice(entry, step.reason, failed_id)
            return failed_id is not None
        split = await asyncio.to_thread(q.fail_recipients, entry.id, step.rcpt_errors, step.now)
        log.warning("spool_recipients_failed", id=entry.id, failed_id=split, mailbox=entry.mailbox,
                    recipients=len(step.rcpt_errors),
                    reason=one_line("; ".join(step.rcpt_errors.values()), 300))
        if split is not None:
            await self.notice(entry, "; ".join(f"{r}: {e}" for r, e in step.rcpt_errors.items()),
                              split)
        return split is not None
