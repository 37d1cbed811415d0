"""The delivery worker: takes messages out of the spool and hands them to Office 365.

Theory of operation. `SpoolWorker` keeps an index of `queue/` in memory: filled by a scan at start,
kept current by `submit()` and by the outcome of each attempt, and refreshed by a rescan every
`rescan_interval` (or on `rescan()`, for SIGHUP) so operator changes are seen. One loop decides
what may start now, starts it as a task it owns, and sleeps until the next thing is due or it is
woken (a submit, a finished delivery, stop). Per mailbox:
- due messages go in arrival (id) order, at most `concurrency_per_mailbox` at a time;
- a token bucket keeps to `rate_per_minute`;
- a failure of the session (network, login, token) or a throttling reply pauses the whole mailbox,
  so a backlog neither hammers Exchange nor gets reordered; a 4xx about one message defers only it;
- an account whose token state is `needs-auth` is held: nothing is attempted, nothing ages.
What each failure means and when to retry is decided in `relay365.spool.schedule`; this module only
carries it out. The outcome of an attempt is written into the queue by `record.Recorder`; what
the directory refuses (read-only, full) is held in memory and wins over a rescan until it is
written (`relay365.spool.outcome`), so a message delivered but not removed is not sent again; a
spool refused at start is claimed when it can be (`relay365.spool.claim`).

The index is only a cache: a change made while a scan runs is replayed on top of the scan's result,
so a message finished during a scan is never picked up again from a stale listing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import structlog

from ..config import SpoolConfig
from ..delivery import Refusal
from ..delivery.message import Message
from ..errors import RelayError
from . import outcome
from .claim import Claim
from .entry import Entry, crash_point
from .handoff import Deliver, describe
from .notice import notify_admin
from .outcome import DeadLetter, Defer, Remove, SplitOff, Step
from .queue import SpoolQueue
from .record import Recorder
from .schedule import (
    HOLD_RECHECK,
    MailboxState,
    TokenBucket,
    Verdict,
    age_text,
    expired,
    next_attempt,
    retry_delay,
    throttled,
    verdict,
    wait_hint,
)

log = structlog.get_logger("relay365.spool")


@dataclass
class _Scan:
    changes: dict[str, Entry | None] = field(default_factory=dict)  # None: removed


class SpoolWorker:
    def __init__(self, queue: SpoolQueue, deliver: Deliver, config: SpoolConfig | None = None, *,
                 held: Callable[[str], bool] = lambda mailbox: False,
                 clock: Callable[[], float] = time.time,
                 rand: Callable[[], float] = random.random) -> None:
        self.queue = queue
        self.deliver = deliver
        self.config = config if config is not None else SpoolConfig()
        self._held, self._clock, self._rand = held, clock, rand
        self._entries: dict[str, Entry] = {}
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._mailboxes: dict[str, MailboxState] = {}
        self._scan: _Scan | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._next_scan = 0.0
        self._recorder = Recorder(queue, self._notice)
        self._claim = Claim(queue)  # the spool may be refused at start (read-only): claimed later

    # -- the interface for the daemon and the SMTP side ------------------------------------------

    def configure(self, config: SpoolConfig, deliver: Deliver | None = None) -> None:
        """A reloaded config (and a deliverer built from the new upstream settings)."""
        self.config = config
        self.queue.min_free_space = config.min_free_space
        if deliver is not None:
            self.deliver = deliver
        for mb in self._mailboxes.values():
            mb.bucket = mb.bucket.with_rate(config.rate_per_minute)
        self.rescan()

    async def start(self) -> None:
        """Claim the spool, sweep tmp/, scan, run. SpoolError if another relay365 has the spool; a
        spool the file system refuses is claimed by the loop later (`relay365.spool.claim`)."""
        await self._prepare(starting=True)
        self._task = asyncio.create_task(self._run(), name="spool-worker")

    async def _prepare(self, *, starting: bool = False) -> None:
        if (swept := await self._claim.take(starting=starting)) is None:
            return  # refused: `submit` answers 452 with the reason, `_run` tries again
        await self._rescan()
        log.info("spool_worker_started", depth=len(self._entries), swept=swept, spool=str(self.queue.root))

    async def stop(self, timeout: float = 30.0) -> None:
        """Start nothing new; let deliveries in progress finish for up to `timeout` seconds."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        running = set(self._inflight.values())
        cut: list[str] = []
        if running:
            _, pending = await asyncio.wait(running, timeout=timeout)
            cut = [i for i, t in self._inflight.items() if t in pending]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._recorder.unwritten:
            await self._recorder.retry(self._clock(), ())
            self._recorder.report_at_stop()
        await asyncio.to_thread(self.queue.unlock_worker)
        log.info("spool_worker_stopped", depth=len(self._entries), cut=len(cut))

    async def submit(self, mailbox: str, mail_from: str, rcpts: Sequence[str],
                     data: bytes | Message, *,
                     mail_options: Sequence[str] = (), notice: bool = False) -> str:
        """Queue a message durably; when this returns, the client may be told 250.

        Raises `SpoolFullError` (answer `replies.SPOOL_FULL`) or `SpoolError` (`replies.SPOOL_ERROR`).
        """
        if self._claim.refusal is not None:  # not claimed yet: the sweep of tmp/ is still to come
            raise self._claim.refusal

        def store() -> Entry:
            entry_id = self.queue.enqueue(mailbox, mail_from, list(rcpts), data, self._clock(),
                                          mail_options=tuple(mail_options), notice=notice)
            return self.queue.read(self.queue.queue / entry_id)

        entry = await asyncio.to_thread(store)
        self._record(entry.id, entry)
        log.info("spool_enqueued", id=entry.id, mailbox=mailbox, recipients=len(entry.rcpts),
                 size=entry.size, notice=notice)
        self._wake.set()
        return entry.id

    def rescan(self) -> None:
        """Look at the directory again soon (SIGHUP, after `relay365 queue retry`)."""
        self._next_scan = 0.0
        self._wake.set()

    def stats(self) -> tuple[int, float]:
        """(messages waiting, age in seconds of the oldest) - for metrics."""
        if not self._entries:
            return 0, 0.0
        oldest = min(e.received_at for e in self._entries.values())
        return len(self._entries), max(0.0, self._clock() - oldest)

    def note(self, entry_id: str, entry: Entry | None) -> None:
        """The status page changed this entry on disk: index it now, not at the next rescan."""
        self._record(entry_id, entry)  # the caller's rescan() wakes the loop

    def waiting(self) -> list[Entry]:
        """The messages waiting, oldest first, from the index (no disk read)."""
        return sorted(self._entries.values(), key=lambda e: (e.received_at, e.id))

    # -- the loop ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            try:
                if self._claim.refusal is not None:  # start() or the last try failed: wait, try again
                    await self._sleep(outcome.WRITE_RETRY)
                    self._wake.clear()
                    if not self._stopping:
                        await self._prepare()
                    continue
                if self._clock() >= self._next_scan:
                    await self._rescan()
                unwritten = self._recorder.unwritten
                if unwritten and self._clock() >= unwritten.next_try:
                    await self._recorder.retry(self._clock(), self._inflight)
                self._wake.clear()
                wait = min(self._dispatch(self._clock()), unwritten.wait(self._clock()))
            except Exception as exc:  # a broken disk must not end delivery for good
                log.error("spool_worker_error", error=describe(exc), exc_info=exc)
                wait = self.config.rescan_interval
            await self._sleep(wait)

    async def _sleep(self, seconds: float) -> None:
        """Until `seconds` have passed or something wakes the loop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(seconds, 0.001))

    async def _rescan(self) -> None:
        self._scan = _Scan()
        self._next_scan = self._clock() + self.config.rescan_interval
        try:
            entries, damaged = await asyncio.to_thread(self.queue.scan)
        finally:
            scan, self._scan = self._scan, None
        index = {e.id: e for e in entries}
        for entry_id, entry in scan.changes.items():
            if entry is None:
                index.pop(entry_id, None)
            else:
                index[entry_id] = entry
        self._recorder.unwritten.overlay(index)  # what the directory refused to record still holds
        self._entries = index
        for name in damaged:
            log.warning("spool_entry_damaged", id=name, action="inspect or delete it by hand")

    def _record(self, entry_id: str, entry: Entry | None) -> None:
        if entry is None:
            self._entries.pop(entry_id, None)
        else:
            self._entries[entry_id] = entry
        if self._scan is not None:
            self._scan.changes[entry_id] = entry

    def _dispatch(self, now: float) -> float:
        """Start what may start; return the seconds until something else might."""
        wait = self._next_scan - now
        if self._stopping:
            return wait
        waiting: dict[str, list[Entry]] = defaultdict(list)
        for entry in self._entries.values():
            if entry.id not in self._inflight:
                waiting[entry.mailbox.lower()].append(entry)
        for key, entries in waiting.items():
            entries.sort(key=lambda e: e.id)
            wait = min(wait, self._dispatch_mailbox(key, entries, now))
        return wait

    def _mailbox(self, key: str, now: float) -> MailboxState:
        if key not in self._mailboxes:
            self._mailboxes[key] = MailboxState(TokenBucket.per_minute(self.config.rate_per_minute, now))
        return self._mailboxes[key]

    def _dispatch_mailbox(self, key: str, entries: list[Entry], now: float) -> float:
        mb = self._mailbox(key, now)
        if self._held(key):
            if not mb.held:
                log.warning("spool_held", mailbox=key, waiting=len(entries), reason="needs-auth",
                            action="run relay365 auth for this mailbox; its queue resumes then")
            mb.held = True
            return HOLD_RECHECK
        if mb.held:
            mb.held = False
            log.info("spool_resumed", mailbox=key, waiting=len(entries))
        if mb.paused_until > now:
            return mb.paused_until - now
        wait = float("inf")
        for entry in entries:
            if entry.next_attempt > now:
                wait = min(wait, entry.next_attempt - now)
                continue
            if mb.inflight >= self.config.concurrency_per_mailbox:
                break  # a finished delivery wakes the loop
            rate_wait = mb.bucket.wait(now)
            if rate_wait > 0:
                return min(wait, rate_wait)
            mb.bucket = mb.bucket.take(now)
            self._start(entry, mb)
        return wait

    def _start(self, entry: Entry, mb: MailboxState) -> None:
        task = asyncio.get_running_loop().create_task(self._attempt(entry, mb),
                                                      name=f"spool-deliver:{entry.id}")
        self._inflight[entry.id] = task
        mb.inflight += 1

        def done(t: asyncio.Task[None]) -> None:
            self._inflight.pop(entry.id, None)
            mb.inflight -= 1
            self._wake.set()
            exc = None if t.cancelled() else t.exception()
            if exc is not None:
                log.error("spool_attempt_error", id=entry.id, error=describe(exc), exc_info=exc)

        task.add_done_callback(done)

    # -- one attempt ---------------------------------------------------------------------------------

    async def _attempt(self, entry: Entry, mb: MailboxState) -> None:
        started = self._clock()
        try:
            try:
                refusals = tuple(await self.deliver(entry) or ())
            except FileNotFoundError:  # deleted by an operator under our feet
                self._record(entry.id, None)
                return
            except Exception as exc:
                await self._failed(entry, mb, exc)
                return
            crash_point("after_upstream_250")
            await self._delivered(entry, mb, refusals, started)
        except OSError as exc:  # recording the outcome failed; keep it off the loop for a while
            log.error("spool_record_failed", id=entry.id, error=describe(exc))
            self._record(entry.id, _later(entry, self._clock() + self.config.retry_base))

    async def _delivered(self, entry: Entry, mb: MailboxState, refusals: tuple[Refusal, ...],
                         started: float) -> None:
        now = self._clock()
        mb.failures = 0
        permanent = {r.rcpt: r.reply for r in refusals if not r.transient}
        transient = [r for r in refusals if r.transient]
        if permanent and not transient and len(permanent) == len(entry.rcpts):
            await self._dead(entry, "; ".join(f"{r}: {e}" for r, e in permanent.items()), permanent)
            return
        split: list[Step] = [SplitOff(now, permanent)] if permanent else []
        if transient:
            error = "; ".join(f"{r.rcpt}: {r.reply}" for r in transient)
            if any(throttled(r.code, r.text) for r in transient):
                self._throttle(mb, entry, error, now)
            else:
                mb.throttles = 0
            delay = retry_delay(entry.attempts + 1, self.config.retry_base, self.config.retry_cap,
                                self._rand())
            await self._defer(entry, error, max(now + delay, mb.paused_until), Verdict.DEFER,
                              rcpts=tuple(r.rcpt for r in transient), before=split)
            return
        mb.throttles = 0
        await self._write(entry, [*split, Remove()])
        log.info("spool_delivered", id=entry.id, mailbox=entry.mailbox,
                 recipients=len(entry.rcpts) - len(permanent), attempts=entry.attempts + 1,
                 age=round(now - entry.received_at, 3), seconds=round(now - started, 3))

    async def _failed(self, entry: Entry, mb: MailboxState, exc: Exception) -> None:
        now, what, error = self._clock(), verdict(exc), describe(exc)
        if not isinstance(exc, RelayError):
            log.error("spool_deliver_bug", id=entry.id, error=error, exc_info=exc)
        if what is Verdict.HOLD:  # the token state says needs-auth now; _dispatch_mailbox holds
            mb.paused_until = now + HOLD_RECHECK
            log.warning("spool_hold", id=entry.id, mailbox=entry.mailbox, error=error)
            return
        if what is Verdict.PERMANENT:
            await self._dead(entry, error)
            return
        if what is Verdict.THROTTLED:
            self._throttle(mb, entry, error, now, wait_hint(exc))
            when = mb.paused_until
        elif what is Verdict.DEFER_MAILBOX:
            mb.failures += 1
            mb.paused_until = now + retry_delay(mb.failures, self.config.retry_base,
                                                self.config.retry_cap, self._rand())
            when = mb.paused_until
        else:
            when = now + retry_delay(entry.attempts + 1, self.config.retry_base,
                                     self.config.retry_cap, self._rand())
        await self._defer(entry, error, when, what)

    def _throttle(self, mb: MailboxState, entry: Entry, error: str, now: float,
                  retry_after: float | None = None) -> None:
        """Pause the mailbox; never shorter than the upstream's Retry-After (Graph's 429/503)."""
        mb.throttles += 1
        pause = retry_delay(mb.throttles, self.config.throttle_pause, self.config.retry_cap,
                            self._rand())
        if retry_after is not None:
            pause = max(retry_after, min(pause, retry_after * 2))
        mb.paused_until = max(mb.paused_until, now + pause)
        log.warning("spool_throttled", mailbox=entry.mailbox, id=entry.id, pause=round(pause, 3),
                    in_a_row=mb.throttles, error=error)

    async def _defer(self, entry: Entry, error: str, when: float, what: Verdict, *,
                     rcpts: tuple[str, ...] | None = None, before: list[Step] | None = None) -> None:
        now = self._clock()
        cfg = self.config
        if expired(entry.started, now, cfg.max_lifetime):
            await self._dead(entry, f"gave up after {age_text(now - entry.started)} "
                                    f"and {entry.attempts + 1} attempts: {error}", before=before)
            return
        at = next_attempt(now, when - now, entry.started, cfg.max_lifetime)
        await self._write(entry, [*(before or []), Defer(now, at, error, rcpts)])
        log.info("spool_deferred", id=entry.id, mailbox=entry.mailbox, attempts=entry.attempts + 1,
                 verdict=what.value, error=error, retry_in=round(at - now, 3))

    async def _dead(self, entry: Entry, reason: str, rcpt_errors: dict[str, str] | None = None, *,
                    before: list[Step] | None = None) -> None:
        await self._write(entry, [*(before or []), DeadLetter(self._clock(), reason, rcpt_errors)])

    async def _write(self, entry: Entry, steps: list[Step]) -> None:
        """Record an attempt's outcome in the queue (or in memory, while the queue refuses it)."""
        self._record(entry.id, await self._recorder.write(entry, steps, self._clock()))

    async def _notice(self, entry: Entry, reason: str, failed_id: str) -> None:
        await notify_admin(entry, reason, failed_id, admin=self.config.admin_bounce_to,
                           failed=self.queue.failed, now=self._clock(), submit=self.submit)


def _later(entry: Entry, when: float) -> Entry:
    return replace(entry, next_attempt=when)
