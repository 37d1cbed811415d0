"""When to try a spooled message again, how fast a mailbox may send, and what an error means.

Theory of operation. Everything here is a pure function of its arguments: time is `now`, randomness
is a number in [0, 1) the caller drew. The worker asks three questions:

- *What does this failure mean?* `verdict(exc)` sorts an error into a `Verdict`:
  `DEFER` (this message got a 4xx: retry it later, others go on), `DEFER_MAILBOX` (the connection,
  the login or the token failed: nothing for this mailbox can go now), `THROTTLED` (Exchange said
  slow down: pause the mailbox, longer each time), `HOLD` (the account needs re-authorisation: stop
  trying, burn no attempts, resume when the token state changes) or `PERMANENT` (5xx: dead letter).
- *When next?* `retry_delay(attempts, ...)`: exponential from `base`, capped, with "equal jitter" -
  uniformly in the upper half of the step, so the first retry after a 30 s base comes within 15-30 s
  and no delay ever exceeds the cap. `next_attempt` never schedules past the message's deadline,
  so the last try happens right at the end of its lifetime.
- *May this mailbox send now?* A `TokenBucket` per mailbox (immutable: `take` returns a new one).

Lifetime is checked only after a failed attempt (`expired`), as RFC 5321 s.4.5.4.1 describes: a
queue held for re-authorisation does not die of age while nobody could have delivered it.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, replace

from ..errors import RelayError, TokenError, UpstreamAuthError, UpstreamError

HOLD_RECHECK = 10.0  # seconds between looks at a held account's token state
RATE_BURST = 1.0  # messages that may go back to back; 1 paces them evenly (Exchange counts per minute)

# Exchange Online's throttling replies: "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit
# exceeded", "421 4.7.66 ...", "4.4.2 Message submission rate for this client has exceeded the
# configured limit", "554 5.2.0 ... SubmissionQuotaExceededException" (the daily recipient limit:
# permanent in form, but retrying the next day is exactly right).
_THROTTLE_TEXT = re.compile(
    r"throttl|rate limit|limit exceeded|exceeded the configured limit|too many (messages|connections"
    r"|concurrent)|submissionquotaexceeded|\b4\.3\.2\b|\b4\.7\.66\b|\b4\.4\.2\b", re.IGNORECASE)
_THROTTLE_CODES = (432,)


class Verdict(enum.Enum):
    DEFER = "defer"  # retry this message later
    DEFER_MAILBOX = "defer_mailbox"  # retry later; the whole mailbox waits
    THROTTLED = "throttled"  # the upstream asked us to slow down
    HOLD = "hold"  # account needs re-authorisation; no attempt counted
    PERMANENT = "permanent"  # dead letter


def throttled(code: int | None, text: str) -> bool:
    """Is this upstream reply Exchange asking us to slow down?"""
    if code in _THROTTLE_CODES:
        return True
    return bool(text) and bool(_THROTTLE_TEXT.search(text)) and (code is None or code >= 400)


def verdict(exc: BaseException) -> Verdict:
    """What a delivery failure means for the message and its mailbox."""
    if isinstance(exc, TokenError):
        return Verdict.HOLD if exc.needs_auth else Verdict.DEFER_MAILBOX
    if isinstance(exc, UpstreamError):
        if throttled(exc.code, exc.text):
            return Verdict.THROTTLED
        if isinstance(exc, UpstreamAuthError) or exc.code is None or exc.code == 421:
            return Verdict.DEFER_MAILBOX  # the session, not this message
        return Verdict.DEFER if exc.transient else Verdict.PERMANENT
    if isinstance(exc, RelayError):
        return Verdict.DEFER_MAILBOX
    return Verdict.DEFER  # a bug must not lose mail: keep the message, retry it like a 4xx


def wait_hint(exc: BaseException) -> float | None:
    """The seconds the upstream asked us to wait (Graph's Retry-After on a 429/503), if any."""
    value = getattr(exc, "retry_after", None)
    return float(value) if isinstance(value, (int, float)) and value >= 0 else None


def retry_delay(attempts: int, base: float, cap: float, rand: float) -> float:
    """Seconds to wait after the `attempts`-th failure (1 = the first). `rand` is in [0, 1)."""
    step = min(cap, base * 2.0 ** min(max(attempts, 1) - 1, 64))
    return step / 2 + step / 2 * rand


def deadline(lifetime_start: float, max_lifetime: float) -> float:
    return lifetime_start + max_lifetime


def expired(lifetime_start: float, now: float, max_lifetime: float) -> bool:
    return now >= deadline(lifetime_start, max_lifetime)


def next_attempt(now: float, delay: float, lifetime_start: float, max_lifetime: float) -> float:
    """`now + delay`, but never past the deadline: the last try comes when the lifetime ends."""
    return max(now, min(now + delay, deadline(lifetime_start, max_lifetime)))


def age_text(seconds: float) -> str:
    """`3d4h`, `2h5m`, `40s` - for log lines and the dead-letter reason."""
    seconds = max(0, int(seconds))
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    if d:
        return f"{d}d{h}h"
    if h:
        return f"{h}h{m}m"
    return f"{m}m{s}s" if m else f"{s}s"


@dataclass(frozen=True)
class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up. Immutable: methods return new buckets."""

    rate: float
    burst: float = RATE_BURST
    tokens: float = RATE_BURST
    updated: float = 0.0

    @classmethod
    def per_minute(cls, messages: float, now: float, burst: float = RATE_BURST) -> TokenBucket:
        return cls(rate=messages / 60.0, burst=burst, tokens=burst, updated=now)

    def refill(self, now: float) -> TokenBucket:
        if now <= self.updated:
            return self
        return replace(self, tokens=min(self.burst, self.tokens + (now - self.updated) * self.rate),
                       updated=now)

    def wait(self, now: float) -> float:
        """Seconds until one token is there (0 when it is now)."""
        tokens = self.refill(now).tokens
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def take(self, now: float) -> TokenBucket:
        bucket = self.refill(now)
        if bucket.tokens < 1.0:
            raise ValueError("no token: check wait() first")
        return replace(bucket, tokens=bucket.tokens - 1.0)

    def with_rate(self, messages_per_minute: float) -> TokenBucket:
        return replace(self, rate=messages_per_minute / 60.0)


@dataclass
class MailboxState:
    """What the worker knows of one mailbox between attempts."""
    bucket: TokenBucket
    inflight: int = 0
    paused_until: float = 0.0
    failures: int = 0  # session failures in a row
    throttles: int = 0  # throttling replies in a row
    held: bool = False
