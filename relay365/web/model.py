"""What the status page and `/api/*` show: plain frozen data, built by `collect`, rendered by `page`.

Nothing here can hold a secret: accounts carry states, codes and times, never tokens; queue rows
carry the envelope (and the Subject only when `http.show_subjects` is on), never the body.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..sessions import Minute, Summary
from ..throttle import Block


@dataclass(frozen=True)
class AccountRow:
    mailbox: str
    flow: str
    via: str
    state: str
    code: str | None = None
    error: str | None = None
    action: str | None = None
    fix: str | None = None  # the exact command that fixes a needs-auth account, when there is one
    expires_at: float | None = None
    last_refresh: float | None = None
    refresh_token_at: float | None = None  # when the stored refresh token was last replaced
    last_use: float | None = None
    messages_today: int = 0


@dataclass(frozen=True)
class QueueRow:
    id: str
    mailbox: str
    mail_from: str
    rcpts: tuple[str, ...]
    received_at: float
    size: int
    attempts: int
    next_attempt: float
    last_error: str | None = None
    failed_at: float | None = None
    subject: str | None = None  # only with http.show_subjects: true


@dataclass(frozen=True)
class ListenerRow:
    proto: str
    addresses: tuple[str, ...]
    connections: int


@dataclass(frozen=True)
class Queue:
    enabled: bool  # False when there is no smtp: section (so no spool)
    depth: int = 0
    oldest_age: float = 0.0
    waiting: tuple[QueueRow, ...] = ()
    failed: tuple[QueueRow, ...] = ()


@dataclass(frozen=True)
class Status:
    now: float
    phase: str
    version: str
    accounts: tuple[AccountRow, ...] = ()
    queue: Queue = field(default_factory=lambda: Queue(False))
    sessions: tuple[Summary, ...] = ()
    peer_filter: str = ""
    user_filter: str = ""
    listeners: tuple[ListenerRow, ...] = ()
    blocks: tuple[Block, ...] = ()
    minutes: tuple[Minute, ...] = ()
    show_subjects: bool = False


@dataclass(frozen=True)
class Viewer:
    """Who looks at the page: decides whether actions are offered and carries the CSRF token."""

    admin_enabled: bool = False  # http.admin_token is set
    logged_in: bool = False
    csrf: str | None = None
    notice: str | None = None  # the outcome of the last action (a fixed text, never echoed input)
    error: str | None = None


def as_json(obj: Any) -> Any:
    """A model value as JSON-ready data (tuples become lists)."""
    return asdict(obj)
