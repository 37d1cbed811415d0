"""What the IMAP pre-auth core asks its adapter to do (effects), and the states it can be in.

`relay365.imap.core.ImapPreauth` returns these; `relay365.imap.server` carries them out in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum

from ..secret import Secret


@dataclass(frozen=True)
class SendToClient:
    data: bytes


@dataclass(frozen=True)
class StartTLS:
    """The OK went out: run the server-side TLS handshake now, then call `tls_started()`."""


@dataclass(frozen=True)
class Authenticate:
    """Check these credentials, then call `login_succeeded()` or `login_failed()`."""

    tag: str
    username: str
    password: Secret
    mechanism: str  # "LOGIN" or "PLAIN"


@dataclass(frozen=True)
class StartSplice:
    """The client has its OK: forward `take_buffered()` upstream, then splice both connections."""


@dataclass(frozen=True)
class Close:
    """Close the client connection (after sending everything before it)."""


Effect = SendToClient | StartTLS | Authenticate | StartSplice | Close


class State(Enum):
    NOT_AUTHENTICATED = "not_authenticated"
    AUTH_RESPONSE = "auth_response"  # AUTHENTICATE sent "+ "; the next line is the client's answer
    AWAITING_LOGIN = "awaiting_login"  # Authenticate is out; input is held, not parsed
    TLS_HANDSHAKE = "tls_handshake"  # StartTLS is out; no input is allowed until tls_started()
    SPLICING = "splicing"
    CLOSED = "closed"


class LoginFailure(StrEnum):
    AUTH_FAILED = "auth_failed"
    UNAVAILABLE = "unavailable"
    LIMIT = "limit"
