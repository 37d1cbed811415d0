"""The states that cross module boundaries, as closed sets of words.

`StrEnum`s: the values are the words logs, metrics, `accounts.json` and the CLI show (so nothing
visible changes), and the type checker keeps each set closed - a typo is an error, not a new state.
"""

from __future__ import annotations

from enum import StrEnum


class AccountState(StrEnum):
    """An upstream account's token state (`relay365 accounts`, /readyz, relay365_account_state)."""

    UNKNOWN = "unknown"  # nothing tried yet in this process
    OK = "ok"
    REFRESHING = "refreshing"
    NEEDS_AUTH = "needs-auth"  # the operator must run relay365 auth (or fix the app)
    ERROR = "error"  # transient trouble; retried with backoff


class LoginResult(StrEnum):
    """A local login's outcome (`relay365.localauth`)."""

    OK = "ok"
    FAILED = "failed"
    BLOCKED = "blocked"  # throttled: too many failures from this IP or for this user


class SmtpOutcome(StrEnum):
    """How an SMTP session ended, as its summary line and the sessions metric say."""

    NO_MAIL = "no_mail"
    RELAYED = "relayed"  # Office 365 accepted (the last) message
    QUEUED = "queued"  # the spool holds it
    DEFERRED = "deferred"  # a 4xx went back
    REJECTED = "rejected"  # a 5xx went back
    SESSION_TIME = "session_time"
    SHUTDOWN = "shutdown"  # 421 at SIGTERM


class ConnRefused(StrEnum):
    """Why a connection was refused before its session began (every protocol)."""

    LISTENER_FULL = "listener_full"  # limits.max_connections
    TOO_MANY_FROM_IP = "too_many_from_ip"  # limits.max_connections_per_ip
    UNTRUSTED_PROXY = "untrusted_proxy"  # proxy_protocol on, and the peer is not a trusted proxy


class ImapOutcome(StrEnum):
    """How an IMAP session's login phase ended."""

    NO_LOGIN = "no_login"
    LOGIN_TIMEOUT = "login_timeout"
    AUTH_FAILED = "auth_failed"
    AUTH_BLOCKED = "auth_blocked"
    LIMIT = "limit"  # imap.max_sessions_per_mailbox
    UNAVAILABLE = "unavailable"  # token or upstream trouble
    SPLICED = "spliced"
    INTERNAL_ERROR = "internal_error"


class ClosedBy(StrEnum):
    """Which side (or which limit) ended a spliced session."""

    CLIENT = "client"
    UPSTREAM = "upstream"
    IDLE_TIMEOUT = "idle_timeout"
    SESSION_TIME = "session_time"
    CLIENT_ERROR = "client_error"
    UPSTREAM_ERROR = "upstream_error"
    SHUTDOWN = "shutdown"
