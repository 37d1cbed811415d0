"""Recent sessions and per-minute message counts, for the status page: pure bookkeeping.

Theory of operation. The SMTP and IMAP adapters hand over the same fields as their `smtp_session` /
`imap_session` summary log lines when a session ends; the last `MAX_SESSIONS` are kept, newest
first. Messages relayed, spooled and failed are counted per minute (the metrics counters for them
record here too), and only the last `WINDOW_MINUTES` minutes are kept, so memory is bounded
whatever the traffic. Nothing here reads a clock: time comes in as `now` (seconds since the epoch).
No secret ever reaches a summary: the adapters pass addresses, names and counts only.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

MAX_SESSIONS = 200  # what "what did the printer do" needs; bounded, whatever the traffic
WINDOW_MINUTES = 60  # the chart shows the last hour
Kind = Literal["relayed", "spooled", "failed"]
KINDS: tuple[Kind, ...] = ("relayed", "spooled", "failed")


@dataclass(frozen=True)
class Summary:
    at: float
    proto: str
    peer: str
    user: str | None = None
    mailbox: str | None = None
    outcome: str = ""
    messages: int = 0
    size: int = 0
    upstream_reply: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class Minute:
    start: float  # the minute's first second
    relayed: int = 0
    spooled: int = 0
    failed: int = 0


class Recorder:
    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self._sessions: deque[Summary] = deque(maxlen=max_sessions)
        self._minutes: dict[int, dict[Kind, int]] = {}

    def session(self, proto: str, now: float, *, peer: str, user: str | None = None,
                mailbox: str | None = None, outcome: str = "", messages: int = 0, size: int = 0,
                upstream_reply: str | None = None, seconds: float = 0.0) -> None:
        """One ended session, with the fields of its summary log line."""
        self._sessions.appendleft(Summary(now, proto, peer, user, mailbox, outcome, messages,
                                          size, upstream_reply, seconds))

    def count(self, kind: Kind, now: float, n: float = 1) -> None:
        minute = int(now // 60)
        bucket = self._minutes.setdefault(minute, {})
        bucket[kind] = bucket.get(kind, 0) + int(n)
        for old in [m for m in self._minutes if m <= minute - WINDOW_MINUTES]:
            del self._minutes[old]

    def recent(self, peer: str | None = None, user: str | None = None) -> list[Summary]:
        """Newest first; `peer` / `user` keep only sessions whose field contains the text."""
        def keep(s: Summary) -> bool:
            return ((not peer or peer.lower() in s.peer.lower())
                    and (not user or user.lower() in (s.user or "").lower()))
        return [s for s in self._sessions if keep(s)]

    def per_minute(self, now: float, minutes: int = WINDOW_MINUTES) -> list[Minute]:
        """Oldest first, `minutes` entries ending with the current minute; empty minutes are 0."""
        last = int(now // 60)
        out = []
        for m in range(last - minutes + 1, last + 1):
            b = self._minutes.get(m, {})
            out.append(Minute(m * 60.0, b.get("relayed", 0), b.get("spooled", 0), b.get("failed", 0)))
        return out

    def messages_today(self, mailbox: str, now: float) -> int:
        """Messages sent as `mailbox` in sessions that ended since 00:00 UTC and are still kept."""
        day = now - now % 86400
        return sum(s.messages for s in self._sessions
                   if s.at >= day and (s.mailbox or "").lower() == mailbox.lower())


RECENT = Recorder()  # the process's one recorder, as metrics has one registry
