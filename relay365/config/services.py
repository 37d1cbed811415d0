"""The listener sections of the config model: who may connect, and how (`smtp`, `imap`, `pop3`, `http`),
the local users and unauthenticated networks behind them, limits, and the spool.

Durations take `30s`, `15m`, `1h`, `5d` or seconds; sizes `35MB`, `512KB` or bytes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..secret import Secret
from .loader import field_parser
from .units import ListenAddr, check_ranges, duration, parse_listen, parse_network, size


def parse_send_as(value: str) -> str:
    """One `send_as` entry: an address, or `*@domain` for every address of the domain."""
    local, at, domain = value.strip().rpartition("@")
    if not at or not local or not domain or "." not in domain or " " in value.strip():
        raise ValueError(f"not an address or *@domain: {value!r}")
    if "*" in local and local != "*":
        raise ValueError(f"only *@domain may hold a wildcard, not {value!r}")
    return value.strip().lower()


@dataclass(frozen=True)
class UserConfig:
    username: str
    password_hash: Secret
    mailbox: str  # the mailbox the user reads and sends as (a shared mailbox too)
    # direct: the client hears Office 365's own answer; spool: 250 once on disk, delivered later
    delivery: Literal["direct", "spool"] = "direct"
    fallback: Literal["none", "spool"] = "none"  # direct only: spool instead of answering 4xx
    # whose token opens `mailbox` (an accounts[] mailbox with FullAccess / SendAs on it)
    account: str | None = None
    # more addresses this login may send as (SendAs needed on each); `*@domain` for a whole domain
    send_as: list[str] = field(default_factory=list,
                               metadata=field_parser(parse_send_as, "address"))
    # a sender outside mailbox and send_as: rewrite | keep | refuse; default: smtp.sender
    sender: Literal["rewrite", "keep", "refuse"] | None = None

    @property
    def token_account(self) -> str:
        """The accounts[] mailbox whose token logs in upstream: `account`, else the mailbox."""
        return self.account or self.mailbox


@dataclass(frozen=True)
class UnauthenticatedNet:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network = field(metadata=field_parser(parse_network))
    mailbox: str
    # devices that cannot authenticate rarely handle a 4xx well (a printer drops the scan): spool
    delivery: Literal["direct", "spool"] = "spool"
    fallback: Literal["none", "spool"] = "none"
    account: str | None = None  # whose token sends as `mailbox` (SendAs); default: the mailbox

    @property
    def token_account(self) -> str:
        return self.account or self.mailbox


@dataclass(frozen=True)
class SmtpConfig:
    listen: list[ListenAddr] = field(default_factory=lambda: [ListenAddr("127.0.0.1", 2525)],
                                     metadata=field_parser(parse_listen))
    tls: Literal["none", "starttls", "implicit"] = "none"
    cert_file: Path | None = None
    key_file: Path | None = None
    proxy_protocol: bool = False  # expect a PROXY v1/v2 header (HAProxy send-proxy[-v2])
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(
        default_factory=list, metadata=field_parser(parse_network))
    allow_plaintext_auth: bool = True
    max_message_size: int = size(35 * 1024**2)
    unauthenticated: list[UnauthenticatedNet] = field(default_factory=list)
    # a sender that is neither the mailbox nor in send_as: rewrite it to the mailbox, keep it as
    # the client gave it, or refuse it (550 naming the allowed addresses)
    sender: Literal["rewrite", "keep", "refuse"] = "rewrite"
    hostname: str = "relay365"
    timeout: float = duration(300.0)  # RFC 5321 s.4.5.3.2.7: a server SHOULD wait at least 5 minutes
    max_session_time: float = duration(3600.0)  # a whole session, however busy; then 421 and close
    backlog: int = 1024  # the listen queue; the kernel caps it at net.core.somaxconn

    def __post_init__(self) -> None:
        check_ranges(self, positive=("max_message_size", "timeout", "max_session_time"),
                     at_least_one=("backlog",))


@dataclass(frozen=True)
class ImapConfig:
    listen: list[ListenAddr] = field(default_factory=lambda: [ListenAddr("127.0.0.1", 1143)],
                                     metadata=field_parser(parse_listen))
    tls: Literal["none", "starttls", "implicit"] = "none"
    cert_file: Path | None = None
    key_file: Path | None = None
    proxy_protocol: bool = False  # expect a PROXY v1/v2 header (HAProxy send-proxy[-v2])
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(
        default_factory=list, metadata=field_parser(parse_network))
    allow_plaintext_auth: bool = True
    max_sessions_per_mailbox: int | None = None
    login_timeout: float = duration(60.0)
    idle_timeout: float = duration(1900.0)  # RFC 9051 s.5.4: at least 30 minutes; IDLE clients re-issue at 29
    max_session_time: float | None = duration(None)  # None: IDLE clients may stay for days
    backlog: int = 1024  # the listen queue; the kernel caps it at net.core.somaxconn

    def __post_init__(self) -> None:
        check_ranges(self, positive=("login_timeout", "idle_timeout", "max_session_time"),
                     at_least_one=("backlog",) if self.max_sessions_per_mailbox is None
                     else ("backlog", "max_sessions_per_mailbox"))


@dataclass(frozen=True)
class Pop3Config:
    listen: list[ListenAddr] = field(default_factory=lambda: [ListenAddr("127.0.0.1", 1110)],
                                     metadata=field_parser(parse_listen))
    tls: Literal["none", "starttls", "implicit"] = "none"  # starttls is POP3's STLS
    cert_file: Path | None = None
    key_file: Path | None = None
    proxy_protocol: bool = False  # expect a PROXY v1/v2 header (HAProxy send-proxy[-v2])
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(
        default_factory=list, metadata=field_parser(parse_network))
    allow_plaintext_auth: bool = True
    max_sessions_per_mailbox: int | None = None
    login_timeout: float = duration(60.0)
    idle_timeout: float = duration(600.0)  # RFC 1939 s.3: an autologout timer of at least 10 minutes
    max_session_time: float | None = duration(None)
    backlog: int = 1024  # the listen queue; the kernel caps it at net.core.somaxconn

    def __post_init__(self) -> None:
        check_ranges(self, positive=("login_timeout", "idle_timeout", "max_session_time"),
                     at_least_one=("backlog",) if self.max_sessions_per_mailbox is None
                     else ("backlog", "max_sessions_per_mailbox"))


@dataclass(frozen=True)
class LimitsConfig:
    """Protection from the device that goes haywire and the host that guesses passwords."""

    max_connections: int = 1000  # per protocol
    max_connections_per_ip: int = 100
    auth_failure_delay: float = duration(1.0)  # first failed login waits this long; doubles per failure
    auth_max_delay: float = duration(10.0)
    auth_block_after: int = 10  # failures within auth_window, per client IP and per username
    auth_block_seconds: float = duration(900.0)
    auth_window: float = duration(900.0)

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("max_connections", "max_connections_per_ip",
                                          "auth_block_after"),
                      positive=("auth_block_seconds", "auth_window"),
                      not_negative=("auth_failure_delay", "auth_max_delay"))


@dataclass(frozen=True)
class HttpConfig:
    listen: ListenAddr = field(default=ListenAddr("127.0.0.1", 9465), metadata=field_parser(parse_listen))
    # the status page's actions (retry, delete, unblock) need this token; without it, read-only
    admin_token: Secret | None = None
    show_subjects: bool = False  # Subject is a header of the message: off unless asked for


@dataclass(frozen=True)
class SpoolConfig:
    """The `spool:` section. Durations take `30s`, `15m`, `1h`, `5d` or seconds."""

    # RFC 5321 s.4.5.4.1: give up after "at least 4-5 days"; a held account does not age its queue
    max_lifetime: float = duration(5 * 86400.0)
    retry_base: float = duration(30.0)  # first retry after 15-30 s, doubling with each attempt
    retry_cap: float = duration(3600.0)  # never wait longer than this between attempts
    throttle_pause: float = duration(60.0)  # mailbox pause on a throttling reply, doubling to retry_cap
    # Exchange Online: 30 messages per minute per mailbox (sending limits); over that it throttles
    rate_per_minute: float = 30.0
    concurrency_per_mailbox: int = 1  # 1 keeps strict arrival order; Exchange allows 3 sessions
    admin_bounce_to: str | None = None  # notice of each dead letter; never sent to the original sender
    rescan_interval: float = duration(5.0)  # how soon `relay365 queue retry` is noticed
    # refuse new messages (452 4.3.1) before the disk is full: the token store must still be writable
    min_free_space: int = size(64 * 1024**2)

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
