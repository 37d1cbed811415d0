"""Authentication-failure throttling and connection limits: pure bookkeeping, time passed in.

Failures are counted per client IP and per username within `window` seconds. Each failure makes the
next answer wait longer (`base_delay * 2**(n-1)`, capped at `max_delay`), which makes guessing slow
without hurting a user who mistyped once; `block_after` failures block that IP or username for
`block_seconds`, during which even a correct password is refused. A success clears the IP's and the
user's record. Only the `unauthenticated` networks get around AUTH; nothing here changes that.

An IPv6 client is counted by its /64 (`client_key`): one host is handed a whole /64 (RFC 6177,
SLAAC's privacy addresses rotate within it), so counting single addresses would give a guesser
2**64 budgets. An IPv4-mapped address counts as the IPv4 address it is.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .states import ConnRefused


@dataclass(frozen=True)
class ThrottlePolicy:
    base_delay: float = 1.0
    max_delay: float = 10.0
    block_after: int = 10
    block_seconds: float = 900.0
    window: float = 900.0


@dataclass
class _Record:
    failures: list[float] = field(default_factory=list)
    blocked_until: float = 0.0


@dataclass(frozen=True)
class Verdict:
    blocked: bool
    delay: float = 0.0
    reason: str = ""  # "ip" or "user" when blocked


@dataclass(frozen=True)
class Block:
    kind: str  # "ip" or "user"
    value: str  # the IP address or the username
    seconds_left: float


IPV6_PREFIX = 64  # one site's LAN / one SLAAC host: the unit a guessing budget belongs to


def client_key(ip: str) -> str:
    """What a client address is counted as: itself (IPv4), its /64 (IPv6)."""
    try:
        addr = ipaddress.ip_address(ip.split("%")[0])
    except ValueError:
        return ip  # not an address (a test's peer name): counted as given
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{addr}/{IPV6_PREFIX}", strict=False))
    return str(addr)


MAX_TRACKED = 100_000  # keys kept at most, so a scan of many IPs cannot grow memory without bound


class AuthThrottle:
    def __init__(self, policy: ThrottlePolicy = ThrottlePolicy()) -> None:
        self.policy = policy
        self._records: dict[str, _Record] = {}

    def _get(self, key: str, now: float) -> _Record:
        rec = self._records.get(key)
        if rec is None:
            if len(self._records) >= MAX_TRACKED:
                self._records.pop(next(iter(self._records)))
            rec = self._records[key] = _Record()
        rec.failures = [t for t in rec.failures if now - t < self.policy.window]
        return rec

    def check(self, ip: str, user: str, now: float) -> Verdict:
        """Before checking a password: is this IP or user blocked right now?"""
        for kind, key in (("ip", f"ip:{client_key(ip)}"), ("user", f"user:{user}")):
            rec = self._records.get(key)
            if rec is not None and rec.blocked_until > now:
                return Verdict(True, 0.0, kind)
        return Verdict(False)

    def failed(self, ip: str, user: str, now: float) -> Verdict:
        """Record a failure; says how long to wait before answering and whether a block began."""
        worst, blocked, reason = 0, False, ""
        for kind, key in (("ip", f"ip:{client_key(ip)}"), ("user", f"user:{user}")):
            rec = self._get(key, now)
            rec.failures.append(now)
            n = len(rec.failures)
            worst = max(worst, n)
            if n >= self.policy.block_after and rec.blocked_until <= now:
                rec.blocked_until = now + self.policy.block_seconds
                blocked, reason = True, reason or kind
        # 2**(n-1) as a float overflows past n = 1024 (a loose block_after); 64 doublings is plenty
        delay = min(self.policy.base_delay * 2 ** min(worst - 1, 64), self.policy.max_delay)
        return Verdict(blocked, delay, reason)

    def succeeded(self, ip: str, user: str) -> None:
        self._records.pop(f"ip:{client_key(ip)}", None)
        self._records.pop(f"user:{user}", None)

    def blocks(self, now: float) -> list[Block]:
        """The blocks in force at `now` (read-only), longest-lasting first."""
        out = []
        for key, rec in self._records.items():
            if rec.blocked_until > now:
                kind, _, value = key.partition(":")
                out.append(Block(kind, value, rec.blocked_until - now))
        return sorted(out, key=lambda b: -b.seconds_left)

    def unblock(self, kind: str, value: str) -> bool:
        """An operator lifts a block (and forgets its failures); False if there was none."""
        key = client_key(value) if kind == "ip" else value  # an address inside a blocked /64 too
        return self._records.pop(f"{kind}:{key}", None) is not None


class ConnectionLimits:
    """Counts open connections per listener and per client IP."""

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self.max_total, self.max_per_ip = max_total, max_per_ip
        self.total = 0
        self.per_ip: dict[str, int] = {}

    def admit(self, ip: str) -> ConnRefused | None:
        """None when admitted (and counted), else the reason for refusing."""
        if self.total >= self.max_total:
            return ConnRefused.LISTENER_FULL
        if self.per_ip.get(ip, 0) >= self.max_per_ip:
            return ConnRefused.TOO_MANY_FROM_IP
        self.total += 1
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        left = self.per_ip.get(ip, 1) - 1
        if left > 0:
            self.per_ip[ip] = left
        else:
            self.per_ip.pop(ip, None)
