"""Alert edges and the rate limit: conditions in, notices out. No I/O, no clock, no logging.

Theory of operation. Every `interval` the adapter looks at the relay (token views, the spool, the
config) and hands this core an `Observation`: the conditions active now, and the keys whose state is
not known yet (`undecided`: an account nothing has been tried for since the start). The core keeps,
per channel (`mail`, `webhook`), which conditions it has announced, and plans the difference:

    observed, not announced            -> START
    announced at another stage         -> UPDATE  (a secret 30 days out, then 7, then 1, then expired)
    announced, not observed, decided   -> CLEAR

Level, not edge, is what is remembered: a notice is marked announced only when the adapter reports
it sent (`sent`). A failed send (`failed`) backs the channel off (1 min, doubling to 1 h) and the same
difference is planned again later, so an alert is never lost to a webhook outage, and never doubled.
The announced sets are saved to the state directory (`to_json` / `restore`), so a restart neither
repeats a START nor misses a CLEAR. Each channel's book belongs to its destination (a fingerprint of
the webhook URL, the mail recipients): pointed elsewhere, a channel starts over and the new
destination hears every condition active now.

Rate limit: at most `max_per_hour` notices per channel in any hour; the rest wait (`Plan.held`) and
go out as the hour frees up. A condition that starts and clears while it waits is never sent: the
operator is told what is true, not every flap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

HOUR = 3600.0
RETRY_FIRST = 60.0  # a failed channel is tried again after this, doubling
RETRY_MAX = HOUR
STATE_VERSION = 1


class Kind(StrEnum):
    NEEDS_AUTH = "needs_auth"  # the account needs the operator: re-auth, or a fixed app
    REFRESH_TOKEN_STALE = "refresh_token_stale"  # not redeemed successfully for N days
    SECRET_EXPIRY = "secret_expiry"  # apps.X.client_secret_expires is near, or past
    SPOOL_STUCK = "spool_stuck"  # the oldest queued message is older than spool_oldest_after
    SPOOL_FAILED = "spool_failed"  # a message was moved to failed/


class Phase(StrEnum):
    START = "started"
    UPDATE = "changed"
    CLEAR = "cleared"


@dataclass(frozen=True)
class Condition:
    """One thing that is wrong now. Plain words only: never a secret."""

    kind: Kind
    subject: str  # the mailbox, the app, the spool id
    title: str  # one line
    detail: str = ""
    action: str = ""  # what to do about it
    command: str = ""  # the exact command, when there is one
    stage: str = ""  # for conditions that escalate; a new stage is an UPDATE
    severity: str = "warning"  # warning | critical

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.subject}"


@dataclass(frozen=True)
class Observation:
    active: tuple[Condition, ...]
    undecided: frozenset[str] = frozenset()  # keys neither started nor cleared this time


@dataclass(frozen=True)
class Announced:
    kind: Kind
    subject: str
    title: str
    stage: str
    since: float


@dataclass(frozen=True)
class Notice:
    """Effect: send this notice on `channel`, then report `sent` or `failed`."""

    channel: str
    phase: Phase
    condition: Condition
    at: float
    since: float  # when the condition started (for CLEAR: how long it lasted)

    @property
    def key(self) -> str:
        return self.condition.key


@dataclass(frozen=True)
class Plan:
    notices: tuple[Notice, ...]
    held: dict[str, int]  # channel -> notices waiting for the rate limit


Channels = Mapping[str, str] | tuple[str, ...]
"""Channel name -> its destination (a fingerprint of the URL, the recipients); a bare tuple of
names has no destination to compare."""


@dataclass
class _Channel:
    dest: str = ""
    announced: dict[str, Announced] = field(default_factory=dict)
    sent: list[float] = field(default_factory=list)  # send times within the last hour
    retry_at: float = 0.0
    failures: int = 0


class AlertBook:
    """What has been announced where; plans notices. Time comes in as `now`."""

    def __init__(self, channels: Channels, max_per_hour: int) -> None:
        self.max_per_hour = max_per_hour
        self._channels: dict[str, _Channel] = {c: _Channel(d) for c, d in _dests(channels).items()}

    def configure(self, channels: Channels, max_per_hour: int) -> None:
        """A reload: a channel kept with the same destination keeps its book; a new one, or one
        that now goes elsewhere, starts empty (it hears every condition active now); a removed
        one is forgotten."""
        self.max_per_hour = max_per_hour
        old = self._channels
        self._channels = {c: old[c] if c in old and old[c].dest == d else _Channel(d)
                          for c, d in _dests(channels).items()}

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self._channels)

    def announced(self, channel: str) -> dict[str, Announced]:
        return dict(self._channels[channel].announced)

    def plan(self, obs: Observation, now: float) -> Plan:
        notices: list[Notice] = []
        held: dict[str, int] = {}
        for name, ch in self._channels.items():
            ch.sent = [t for t in ch.sent if now - t < HOUR]
            due = _difference(name, ch.announced, obs, now)
            if not due or now < ch.retry_at:
                continue
            budget = max(0, self.max_per_hour - len(ch.sent))
            notices += due[:budget]
            if len(due) > budget:
                held[name] = len(due) - budget
        return Plan(tuple(notices), held)

    def sent(self, notice: Notice, now: float) -> None:
        ch = self._channels.get(notice.channel)
        if ch is None:  # the channel went away in a reload while this was being sent
            return
        ch.sent.append(now)
        ch.failures, ch.retry_at = 0, 0.0
        c = notice.condition
        if notice.phase is Phase.CLEAR:
            ch.announced.pop(c.key, None)
        else:
            ch.announced[c.key] = Announced(c.kind, c.subject, c.title, c.stage, notice.since)

    def failed(self, channel: str, now: float) -> float:
        """The channel could not send: back it off. Returns the seconds until the next try."""
        ch = self._channels.get(channel)
        if ch is None:
            return 0.0
        ch.failures += 1
        delay = min(RETRY_FIRST * 2.0 ** (ch.failures - 1), RETRY_MAX)
        ch.retry_at = now + delay
        return delay

    # -- the file in the state directory ---------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        def row(a: Announced) -> dict[str, Any]:
            return {"kind": a.kind.value, "subject": a.subject, "title": a.title, "stage": a.stage,
                    "since": a.since}

        return {"version": STATE_VERSION, "channels": {
            name: {"dest": ch.dest, "announced": {k: row(a) for k, a in ch.announced.items()},
                   "sent": list(ch.sent)}
            for name, ch in self._channels.items()}}

    def restore(self, data: object) -> bool:
        """Take the saved book (a file of another shape is no book at all: False)."""
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            return False
        channels = data.get("channels")
        if not isinstance(channels, dict):
            return False
        for name, ch in self._channels.items():
            saved = channels.get(name)
            if isinstance(saved, dict) and saved.get("dest", "") == ch.dest:
                ch.announced = _announced(saved.get("announced"))
                ch.sent = [float(t) for t in saved.get("sent", []) if isinstance(t, int | float)]
        return True


def _dests(channels: Channels) -> dict[str, str]:
    return dict(channels) if isinstance(channels, Mapping) else {c: "" for c in channels}


def _difference(channel: str, announced: dict[str, Announced], obs: Observation,
                now: float) -> list[Notice]:
    out: list[Notice] = []
    active = {c.key: c for c in obs.active}
    for key, c in active.items():
        before = announced.get(key)
        if before is None:
            out.append(Notice(channel, Phase.START, c, now, now))
        elif before.stage != c.stage:
            out.append(Notice(channel, Phase.UPDATE, c, now, before.since))
    for key, a in sorted(announced.items()):
        if key not in active and key not in obs.undecided:
            gone = Condition(a.kind, a.subject, a.title, stage=a.stage)
            out.append(Notice(channel, Phase.CLEAR, gone, now, a.since))
    return out


def _announced(raw: object) -> dict[str, Announced]:
    out: dict[str, Announced] = {}
    if not isinstance(raw, dict):
        return out
    for key, row in raw.items():
        try:
            out[key] = Announced(Kind(row["kind"]), str(row["subject"]), str(row["title"]),
                                 str(row.get("stage", "")), float(row["since"]))
        except (KeyError, TypeError, ValueError):
            continue  # one damaged row costs that condition a repeated START, not the book
    return out
