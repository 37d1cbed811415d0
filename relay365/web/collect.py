"""The status page's data, read from the running relay, and its three actions: the adapter side.

`Sources` is what the daemon hands over (the token manager, the token store, the spool worker, the
auth throttle, the session recorder, and callables for what is bound). `collect()` reads the
in-memory parts on the event loop and the on-disk parts (queue envelopes, refresh-token ages,
Subjects) in a thread; the result is a `model.Status` the pure renderer turns into HTML or JSON.
The actions go through the same public APIs as `relay365 queue retry|delete`.
"""

from __future__ import annotations

import asyncio
import email.policy
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from email.parser import BytesHeaderParser

from .. import __version__
from ..config import Config
from ..sessions import RECENT, Recorder
from ..spool.entry import Entry, NotFound, SpoolError, valid_id
from ..spool.notice import read_head
from ..spool.worker import SpoolWorker
from ..states import AccountState
from ..throttle import AuthThrottle
from ..tokens.manager import AccountView, TokenManager
from ..tokens.store import StoreError, TokenStore
from .model import AccountRow, ListenerRow, Queue, QueueRow, Status

MAX_ROWS = 1000  # queue rows per table on the page; /api/queue has them all
SUBJECT_LIMIT = 200


@dataclass
class Sources:
    config: Callable[[], Config]
    tokens: TokenManager
    store: TokenStore
    spool: SpoolWorker | None
    throttle: AuthThrottle
    listeners: Callable[[], list[ListenerRow]]
    phase: Callable[[], str]
    recorder: Recorder = field(default=RECENT)
    subjects: dict[str, str | None] = field(default_factory=dict)  # by entry id: read once
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic  # the throttle counts in monotonic time


def fix_command(view: AccountView, config: Config) -> str | None:
    """The command that fixes a needs-auth account, when re-authorising is the fix."""
    if view.state is not AccountState.NEEDS_AUTH or view.flow != "refresh_token":
        return None
    if view.action and "relay365 auth" not in view.action:
        return None  # e.g. an app registration problem: the action text says what to change
    return f"relay365 auth {shlex.quote(view.mailbox)} -c {shlex.quote(config.source)}"


def _rt_ages(store: TokenStore, mailboxes: list[str]) -> dict[str, float]:
    out = {}
    for mailbox in mailboxes:
        try:
            stored = store.get(mailbox)
        except (StoreError, OSError):
            continue
        if stored is not None:
            out[mailbox] = stored.updated_at
    return out


def _subject(entry: Entry) -> str | None:
    try:
        head = read_head(entry.path)
    except OSError:
        return None
    value = BytesHeaderParser(policy=email.policy.default).parsebytes(head).get("Subject")
    return None if value is None else " ".join(str(value).split())[:SUBJECT_LIMIT]


def _row(entry: Entry, subject: str | None) -> QueueRow:
    return QueueRow(entry.id, entry.mailbox, entry.mail_from, entry.rcpts, entry.received_at,
                    entry.size, entry.attempts, entry.next_attempt, entry.last_error,
                    entry.failed_at, subject)


def _rows(entries: list[Entry], src: Sources, subjects: bool) -> tuple[QueueRow, ...]:
    if not subjects:
        return tuple(_row(e, None) for e in entries)
    cache = src.subjects
    for e in entries:
        if e.id not in cache:  # a message's Subject never changes: read its head once
            cache[e.id] = _subject(e)
    return tuple(_row(e, cache[e.id]) for e in entries)


def _read_disk(src: Sources, config: Config, limit: int | None,
               waiting: list[Entry] | None) -> tuple[dict[str, float], Queue]:
    """In a thread: refresh-token ages, dead letters and Subjects (the waiting messages come from
    the spool worker's index: a page load never reads thousands of envelopes)."""
    ages = _rt_ages(src.store, [a.mailbox for a in config.accounts if a.flow == "refresh_token"])
    if src.spool is None or waiting is None:
        return ages, Queue(src.spool is not None)
    subjects = config.http is not None and config.http.show_subjects
    failed = src.spool.queue.entries("failed")
    failed.sort(key=lambda e: -(e.failed_at or 0))  # the newest dead letter first
    shown = waiting[:limit] + failed[:limit]
    for gone in set(src.subjects) - {e.id for e in shown}:
        src.subjects.pop(gone, None)
    return ages, Queue(True, waiting=_rows(waiting[:limit], src, subjects),
                       failed=_rows(failed[:limit], src, subjects))


def _account(view: AccountView, config: Config, ages: dict[str, float], rec: Recorder,
             now: float) -> AccountRow:
    via = "Graph" if view.sending_via == "graph" else "SMTP"
    if view.send_via == "auto":
        via += " (auto)"
    return AccountRow(view.mailbox, view.flow, via, str(view.state), view.code, view.error,
                      view.action, fix_command(view, config), view.expires_at, view.last_refresh,
                      ages.get(view.mailbox), view.last_use, rec.messages_today(view.mailbox, now))


async def collect(src: Sources, *, peer: str = "", user: str = "",
                  limit: int | None = MAX_ROWS, queue_rows: bool = True) -> Status:
    """Everything the page shows; `queue_rows=False` leaves out the queue's tables (an API call
    that does not return them)."""
    config, now = src.config(), src.clock()
    views = src.tokens.views()
    depth, oldest = src.spool.stats() if src.spool is not None else (0, 0.0)
    waiting = src.spool.waiting() if src.spool is not None and queue_rows else None
    ages, queue = await asyncio.to_thread(_read_disk, src, config, limit, waiting)
    if queue.enabled:
        queue = replace(queue, depth=depth, oldest_age=oldest)
    return Status(
        now=now, phase=src.phase(), version=__version__,
        accounts=tuple(_account(v, config, ages, src.recorder, now) for v in views),
        queue=queue, sessions=tuple(src.recorder.recent(peer=peer or None, user=user or None)),
        peer_filter=peer, user_filter=user, listeners=tuple(src.listeners()),
        blocks=tuple(src.throttle.blocks(src.monotonic())),
        minutes=tuple(src.recorder.per_minute(now)),
        show_subjects=config.http is not None and config.http.show_subjects)


# -- actions -------------------------------------------------------------------------------------

class ActionError(Exception):
    """An action could not be done: `code` names a fixed text for the page, str() the details."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


def _spool(src: Sources, entry_id: str) -> SpoolWorker:
    if src.spool is None:
        raise ActionError("nospool", "no spool: the smtp: section is not configured")
    if not valid_id(entry_id):
        raise ActionError("bad", "not a message id")
    return src.spool


async def retry(src: Sources, entry_id: str) -> str:
    """Make a waiting message due now, or put a dead letter back in the queue."""
    spool = _spool(src, entry_id)
    try:
        entry = await asyncio.to_thread(spool.queue.retry, entry_id, src.clock())
    except NotFound as exc:
        raise ActionError("notfound", str(exc)) from None
    except (SpoolError, OSError) as exc:
        raise ActionError("bad", str(exc)) from None
    spool.note(entry.id, entry)
    spool.rescan()
    return entry.id


async def delete(src: Sources, entry_id: str) -> str:
    """Remove a message from the queue or from failed/; says which."""
    spool = _spool(src, entry_id)
    try:
        where: str = await asyncio.to_thread(spool.queue.delete, entry_id)
    except NotFound as exc:
        raise ActionError("notfound", str(exc)) from None
    except (SpoolError, OSError) as exc:
        raise ActionError("bad", str(exc)) from None
    if where == "queue":
        spool.note(entry_id, None)
    spool.rescan()
    return where


async def unblock(src: Sources, kind: str, value: str) -> str:
    if kind not in ("ip", "user"):
        raise ActionError("bad", "kind is ip or user")
    if not src.throttle.unblock(kind, value):
        raise ActionError("notblocked", f"{kind} {value} is not blocked")
    return value
