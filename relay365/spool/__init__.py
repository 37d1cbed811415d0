"""The durable spool: accept a message to disk, answer 250, deliver it to Office 365 later.

Architecture, one page.

    SMTP handler --submit()--> SpoolWorker --enqueue (thread)--> SpoolQueue: state_dir/spool/
                                   |                                tmp/    being written
                                   | per mailbox: FIFO, token        queue/  waiting (one dir per message)
                                   | bucket, concurrency, holds      failed/ dead letters, with reason
                                   v
                         deliver(entry) -> refusals     (make_upstream_deliverer: UpstreamSMTP)

- `queue` (`SpoolQueue`) is the on-disk format and nothing else: every change is a write to a
  private place, fsync, one rename, fsync of the directory - maildir's recipe. A message is the
  directory `queue/<id>/` holding `message.eml` and `envelope.json`; it appears in `queue/` by one
  rename, so a crash leaves no entry or a whole one. Ids start with the arrival time in nanoseconds,
  so a sorted listing is arrival order. Operator tools use the same queue with a lock file.
- `schedule` is pure: backoff with jitter, lifetime, the token bucket, and the verdict on an error
  (retry this message, pause the mailbox, throttled, hold for re-authorisation, give up). Time is
  always a `now` argument.
- `worker` (`SpoolWorker`) is the only asyncio code: it keeps an index of `queue/`, rescans it every
  `rescan_interval` (so `relay365 queue retry` is noticed), wakes on every submit, starts deliveries
  by the rules of `schedule`, and records their outcome in the queue. Stopping lets deliveries in
  progress finish up to a timeout; whatever is cut off is still in `queue/` and is retried later.
- `cli` implements `relay365 queue list|show|retry|delete|failed`.

Delivery guarantee: at least once. A message is delivered twice only if the process dies between
the upstream's 250 and the removal of its queue entry.

This module holds only the configuration, so `relay365.config` can import it without pulling in
asyncio or the token manager.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..confload import field_parser

_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """`30s`, `15m`, `1h`, `5d` or plain seconds -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", str(text).lower())
    if not m or m.group(2) not in _DURATION_UNITS:
        raise ValueError(f"not a duration: {text!r} (examples: 30s, 15m, 1h, 5d, 120)")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def _parse_size(text: str) -> int:
    from ..config import parse_size  # imported late: relay.config imports this module

    return parse_size(text)


def _duration(default: float):
    return field(default=default, metadata=field_parser(parse_duration))


@dataclass(frozen=True)
class SpoolConfig:
    """The `spool:` section. Durations take `30s`, `15m`, `1h`, `5d` or seconds."""

    # RFC 5321 s.4.5.4.1: give up after "at least 4-5 days"; a held account does not age its queue
    max_lifetime: float = _duration(5 * 86400.0)
    retry_base: float = _duration(30.0)  # first retry after 15-30 s, doubling with each attempt
    retry_cap: float = _duration(3600.0)  # never wait longer than this between attempts
    throttle_pause: float = _duration(60.0)  # mailbox pause on a throttling reply, doubling to retry_cap
    # Exchange Online: 30 messages per minute per mailbox (sending limits); over that it throttles
    rate_per_minute: float = 30.0
    concurrency_per_mailbox: int = 1  # 1 keeps strict arrival order; Exchange allows 3 sessions
    admin_bounce_to: str | None = None  # notice of each dead letter; never sent to the original sender
    rescan_interval: float = _duration(5.0)  # how soon `relay365 queue retry` is noticed
    # refuse new messages (452 4.3.1) before the disk is full: the token store must still be writable
    min_free_space: int = field(default=64 * 1024**2, metadata=field_parser(_parse_size))

    def __post_init__(self) -> None:
        for name in ("max_lifetime", "retry_base", "retry_cap", "throttle_pause", "rate_per_minute",
                     "rescan_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be more than 0")
        if self.retry_cap < self.retry_base:
            raise ValueError("retry_cap: must be at least retry_base")
        if not 1 <= self.concurrency_per_mailbox <= 3:
            raise ValueError("concurrency_per_mailbox: 1 to 3 (Exchange allows 3 sessions per mailbox)")
        if self.min_free_space < 0:
            raise ValueError("min_free_space: must not be negative")
        if self.admin_bounce_to is not None and "@" not in self.admin_bounce_to:
            raise ValueError(f"admin_bounce_to: not an email address: {self.admin_bounce_to!r}")


__all__ = ["SpoolConfig", "parse_duration"]
