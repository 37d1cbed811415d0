"""What an attempt's outcome does to the queue, and what is kept when the queue refuses it.

Theory of operation. After each attempt the worker records its outcome in `queue/` as a short
list of `Step`s, carried out in order: `SplitOff` (refused recipients into a dead letter of their
own), then one of `Remove` (delivered), `Defer` (try again at `next_attempt`) or `DeadLetter`
(refused for good, or too old). `index_after` is what the worker's index holds once they are
done - `None` when the entry leaves the queue.

When the directory refuses a step (read-only, full, an I/O error), the outcome must still hold:
`Unwritten` keeps the steps not yet written and the index view they lead to, and that view
overrides what a rescan of the directory says. So a message delivered but not removed is never
dispatched again by this process (without this, every rescan found it due and sent it again), a
dead letter is not tried again, a deferred one keeps its backoff. The steps are tried again every
`WRITE_RETRY` seconds until the directory takes them. Memory does not survive a restart: then a
delivered message still in `queue/` is sent once more (the duplicate window, as long as the
spool stays unwritable), and a deferred one is due at once.

Pure: no I/O, no clock (`now` comes in).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .entry import Entry

WRITE_RETRY = 2.0  # seconds between tries to write outcomes the spool refused (as PENDING_RETRY)


@dataclass(frozen=True)
class Remove:
    """Delivered to every recipient still wanted: the entry goes."""


@dataclass(frozen=True)
class Defer:
    """A failed attempt: counted, retried at `next_attempt`, for `rcpts` (None: all of them)."""

    now: float
    next_attempt: float
    error: str | None
    rcpts: tuple[str, ...] | None = None


@dataclass(frozen=True)
class DeadLetter:
    """Refused for good (or too old): the entry moves to `failed/` with `reason`."""

    now: float
    reason: str
    rcpt_errors: dict[str, str] | None = None


@dataclass(frozen=True)
class SplitOff:
    """Recipients refused for good while others were not: a dead letter of their own."""

    now: float
    rcpt_errors: dict[str, str]


Step = Remove | Defer | DeadLetter | SplitOff

# what the log says each kind of unwritten step means, and what happens next
ACTIONS: dict[type, str] = {
    Remove: f"delivered; this process will not send it again (kept in memory) and retries the "
            f"removal every {WRITE_RETRY:g} s; a restart before the removal succeeds sends it again",
    Defer: f"the next attempt is kept in memory and written within {WRITE_RETRY:g} s of the spool "
           f"taking it; a restart before then tries it at once",
    DeadLetter: f"refused for good; not tried again (kept in memory), moved to failed/ within "
                f"{WRITE_RETRY:g} s of the spool taking it; a restart before then tries it again",
    SplitOff: f"the refused recipients' dead letter is written within {WRITE_RETRY:g} s of the "
              f"spool taking it; the accepted recipients are not sent it again by this process",
}


def step_name(step: Step) -> str:
    return {Remove: "remove", Defer: "defer", DeadLetter: "dead_letter",
            SplitOff: "split_off"}[type(step)]


def index_after(entry: Entry, steps: list[Step]) -> Entry | None:
    """The entry as the index holds it once `steps` are carried out; None when it is gone."""
    for step in steps:
        if isinstance(step, Remove | DeadLetter):
            return None
        if isinstance(step, Defer):
            entry = replace(entry, attempts=entry.attempts + 1, next_attempt=step.next_attempt,
                            last_error=step.error,
                            rcpts=entry.rcpts if step.rcpts is None else step.rcpts)
    return entry


@dataclass
class Pending:
    """One entry's steps not written yet, in order, and the index view they lead to."""

    entry: Entry  # as it was dispatched: the steps' subject (ids, notices)
    view: Entry | None
    steps: list[Step]
    reported: set[str] = field(default_factory=set)  # step kinds already logged as unwritten

    def report(self, step: Step) -> bool:
        """True the first time this kind of step is refused for this entry (log it then)."""
        name = step_name(step)
        first = name not in self.reported
        self.reported.add(name)
        return first


@dataclass
class Unwritten:
    """Every entry's unwritten steps; the next time to try them again."""

    pending: dict[str, Pending] = field(default_factory=dict)
    next_try: float = float("inf")

    def __bool__(self) -> bool:
        return bool(self.pending)

    def add(self, entry: Entry, steps: list[Step]) -> Pending:
        """Queue `steps` behind the entry's older unwritten ones (they go first)."""
        held = self.pending.get(entry.id)
        if held is None:
            held = self.pending[entry.id] = Pending(entry, entry, [])
        held.entry = entry
        held.steps += steps
        held.view = index_after(held.view, steps) if held.view is not None else None
        return held

    def refused(self, now: float) -> None:
        """A step was refused: try again WRITE_RETRY from now (or sooner if already due)."""
        self.next_try = min(self.next_try, now + WRITE_RETRY)

    def tried(self, now: float) -> None:
        """A round of retries is over; the next one comes WRITE_RETRY later, if anything is left."""
        self.next_try = now + WRITE_RETRY if self.pending else float("inf")

    def wait(self, now: float) -> float:
        return max(0.0, self.next_try - now)

    def overlay(self, index: dict[str, Entry]) -> None:
        """Put the outcomes not on disk yet over a fresh scan of the directory."""
        for entry_id, held in list(self.pending.items()):
            if held.view is None:
                index.pop(entry_id, None)
            elif entry_id in index:
                index[entry_id] = held.view
            else:  # gone from queue/ (an operator): nothing left to record about it
                del self.pending[entry_id]
