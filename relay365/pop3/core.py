"""The client side of the POP3 relay before login: a sans-IO state machine.

Theory of operation
-------------------
`Pop3Preauth` takes the client's bytes (`receive_data`) and the adapter's facts (`tls_started`,
`login_succeeded`, `login_failed`, `timeout`) and returns effects the adapter carries out in order:
`SendToClient`, `StartTLS`, `Authenticate`, `StartSplice`, `Close`. No sockets, clock or logging.

    AUTHORIZATION --USER--> (user remembered) --PASS--> AWAITING_LOGIN
    AUTHORIZATION --AUTH PLAIN <ir>--> AWAITING_LOGIN
    AUTHORIZATION --AUTH PLAIN--> AUTH_RESPONSE --line--> AWAITING_LOGIN
    AUTHORIZATION --STLS--> TLS_HANDSHAKE --tls_started()--> AUTHORIZATION
    AWAITING_LOGIN --login_failed()--> AUTHORIZATION
    AWAITING_LOGIN --login_succeeded()--> SPLICING   (the adapter owns the bytes from here)
    any state but SPLICING --QUIT, timeout(), a limit--> CLOSED

CAPA, USER, PASS, AUTH PLAIN (RFC 5034, with and without an initial response), STLS (RFC 2595),
NOOP and QUIT are answered here; APOP and other SASL mechanisms are refused; anything else is
-ERR, since before login there is no mailbox to ask. Response codes follow RFC 2449 and RFC 3206:
`[AUTH]` for wrong credentials, `[SYS/TEMP]` for trouble on our side or upstream, `[IN-USE]` for
the per-mailbox session cap. While a login is checked input is held: after a failure it is
parsed (a pipelined retry or QUIT), after a success the adapter forwards it with `take_buffered()`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import ClassVar

from ..secret import Secret

# RFC 2449 s.4: command lines up to 255 octets; RFC 5034 s.4 lets AUTH responses be longer and
# leaves the limit to the server. A PLAIN response of a long password fits easily in 8 KiB.
MAX_LINE = 8192
MAX_BAD_COMMANDS = 10  # in a row, then we hang up
MAX_AUTH_FAILURES = 3  # per connection; the adapter's throttle works across connections
MAX_PIPELINED = 64 * 1024  # bytes a client may send after PASS before it has the answer
SERVER_NAME = "relay365"


@dataclass(frozen=True)
class SendToClient:
    data: bytes


@dataclass(frozen=True)
class StartTLS:
    """The +OK went out: run the server-side TLS handshake now, then call `tls_started()`."""


@dataclass(frozen=True)
class Authenticate:
    """Check these credentials, then call `login_succeeded()` or `login_failed()`."""

    username: str
    password: Secret
    mechanism: str  # "USER" or "PLAIN"


@dataclass(frozen=True)
class StartSplice:
    """The client has its +OK: forward `take_buffered()` upstream, then splice."""


@dataclass(frozen=True)
class Close:
    """Close the client connection (after sending everything before it)."""


Effect = SendToClient | StartTLS | Authenticate | StartSplice | Close


class State(Enum):
    AUTHORIZATION = "authorization"
    AUTH_RESPONSE = "auth_response"  # AUTH PLAIN sent "+ "; the next line is the client's answer
    AWAITING_LOGIN = "awaiting_login"
    TLS_HANDSHAKE = "tls_handshake"
    SPLICING = "splicing"
    CLOSED = "closed"


class LoginFailure(StrEnum):
    AUTH_FAILED = "auth_failed"
    UNAVAILABLE = "unavailable"
    LIMIT = "limit"


_FAILURE_REPLIES = {
    LoginFailure.AUTH_FAILED: b"-ERR [AUTH] Invalid credentials\r\n",
    LoginFailure.UNAVAILABLE: b"-ERR [SYS/TEMP] Service temporarily unavailable, try again later\r\n",
    LoginFailure.LIMIT: b"-ERR [IN-USE] Too many sessions for this mailbox, try again later\r\n",
}


class Pop3UsageError(RuntimeError):
    """The adapter called the core at a wrong moment: a bug in the adapter, never the client's."""


class _Refused(Exception):
    def __init__(self, reply: bytes, fatal: bool = False) -> None:
        self.reply, self.fatal = reply, fatal


def _err(text: str, code: str | None = None) -> bytes:
    return (f"-ERR [{code}] {text}\r\n" if code else f"-ERR {text}\r\n").encode("ascii")


class Pop3Preauth:
    """One client connection from its greeting until login succeeds or it closes."""

    def __init__(self, *, tls_active: bool, starttls_available: bool,
                 allow_plaintext_auth: bool) -> None:
        self._tls = tls_active
        self._starttls = starttls_available
        self._plaintext = allow_plaintext_auth
        self._state = State.AUTHORIZATION
        self._buffer = bytearray()
        self._user: str | None = None
        self._bad = 0
        self._auth_failures = 0

    @property
    def state(self) -> State:
        return self._state

    @property
    def tls_active(self) -> bool:
        return self._tls

    @property
    def buffered_size(self) -> int:
        return len(self._buffer)

    @property
    def _auth_allowed(self) -> bool:
        return self._tls or self._plaintext

    def capabilities(self) -> list[str]:
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self._auth_allowed:
            caps += ["USER", "SASL PLAIN"]
        if self._starttls and not self._tls:
            caps.append("STLS")
        caps.append(f"IMPLEMENTATION {SERVER_NAME}")
        return caps

    # -- entry points ---------------------------------------------------------------------------

    def greeting(self) -> list[Effect]:
        return [SendToClient(f"+OK {SERVER_NAME} POP3 ready\r\n".encode("ascii"))]

    def receive_data(self, data: bytes) -> list[Effect]:
        if self._state is State.SPLICING:
            raise Pop3UsageError("receive_data() after login: splice the bytes instead")
        if self._state is State.CLOSED or not data:
            return []
        if self._state is State.TLS_HANDSHAKE:
            # plaintext behind STLS could be an attacker's injection (CVE-2011-0411 style)
            return self._close(b"-ERR Data received before the TLS handshake\r\n")
        self._buffer += data
        if self._state is State.AWAITING_LOGIN:
            if len(self._buffer) > MAX_PIPELINED:
                return self._close(b"-ERR Too much data before the login completed\r\n")
            return []
        return self._pump()

    def tls_started(self) -> list[Effect]:
        if self._state is State.CLOSED:
            return []
        self._expect(State.TLS_HANDSHAKE, "tls_started")
        self._tls = True
        self._buffer.clear()
        self._user = None  # RFC 2595 s.4: start over after the handshake
        self._state = State.AUTHORIZATION
        return []

    def login_succeeded(self) -> list[Effect]:
        if self._state is State.CLOSED:
            return []
        self._expect(State.AWAITING_LOGIN, "login_succeeded")
        self._state = State.SPLICING
        return [SendToClient(b"+OK Logged in\r\n"), StartSplice()]

    def login_failed(self, kind: LoginFailure | str) -> list[Effect]:
        if self._state is State.CLOSED:
            return []
        self._expect(State.AWAITING_LOGIN, "login_failed")
        kind = LoginFailure(kind)
        self._state = State.AUTHORIZATION
        self._user = None
        effects: list[Effect] = [SendToClient(_FAILURE_REPLIES[kind])]
        if kind is LoginFailure.AUTH_FAILED:
            self._auth_failures += 1
            if self._auth_failures >= MAX_AUTH_FAILURES:
                return effects + self._close(b"-ERR Too many failed login attempts\r\n")
        return effects + self._pump()

    def take_buffered(self) -> bytes:
        if self._state is State.CLOSED:
            return b""
        self._expect(State.SPLICING, "take_buffered")
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def timeout(self) -> list[Effect]:
        if self._state is State.CLOSED:
            return []
        if self._state is State.SPLICING:
            raise Pop3UsageError("timeout() after login: the splice has its own")
        return self._close(b"-ERR Autologout; idle for too long\r\n")

    # -- the machine ------------------------------------------------------------------------------

    def _expect(self, state: State, call: str) -> None:
        if self._state is not state:
            raise Pop3UsageError(f"{call}() in state {self._state.name}")

    def _close(self, reply: bytes) -> list[Effect]:
        self._state = State.CLOSED
        self._buffer.clear()
        return [SendToClient(reply), Close()]

    def _next_line(self) -> bytes | None:
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > MAX_LINE:
                raise _Refused(b"-ERR Line too long\r\n", fatal=True)
            return None
        if end > MAX_LINE:
            raise _Refused(b"-ERR Line too long\r\n", fatal=True)
        line = bytes(self._buffer[:end]).rstrip(b"\r")
        del self._buffer[:end + 1]
        return line

    def _pump(self) -> list[Effect]:
        effects: list[Effect] = []
        while self._state in (State.AUTHORIZATION, State.AUTH_RESPONSE):
            try:
                line = self._next_line()
                if line is None:
                    break
                if self._state is State.AUTH_RESPONSE:
                    self._state = State.AUTHORIZATION
                    effects += self._plain(line)
                else:
                    effects += self._command(line)
                self._bad = 0
            except _Refused as exc:
                if exc.fatal:
                    return effects + self._close(exc.reply)
                effects.append(SendToClient(exc.reply))
                self._bad += 1
                if self._bad >= MAX_BAD_COMMANDS:
                    return effects + self._close(b"-ERR Too many invalid commands\r\n")
        return effects

    def _command(self, line: bytes) -> list[Effect]:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise _Refused(_err("Command must be UTF-8")) from None
        name, _, arg = text.partition(" ")
        handler = self._COMMANDS.get(name.upper())
        if handler is None:
            raise _Refused(_err("Command unknown or not valid before login"))
        return handler(self, arg)

    def _require_auth_allowed(self) -> None:
        if not self._auth_allowed:
            raise _Refused(_err("Authentication requires TLS (use STLS)", "AUTH"))

    # -- commands -----------------------------------------------------------------------------

    def _capa(self, arg: str) -> list[Effect]:
        lines = "".join(f"{c}\r\n" for c in self.capabilities())
        return [SendToClient(f"+OK Capability list follows\r\n{lines}.\r\n".encode("ascii"))]

    def _noop(self, arg: str) -> list[Effect]:
        return [SendToClient(b"+OK\r\n")]

    def _quit(self, arg: str) -> list[Effect]:
        self._state = State.CLOSED
        self._buffer.clear()
        return [SendToClient(f"+OK {SERVER_NAME} signing off\r\n".encode("ascii")), Close()]

    def _stls(self, arg: str) -> list[Effect]:
        if self._tls:
            raise _Refused(_err("TLS is already active"))
        if not self._starttls:
            raise _Refused(_err("STLS is not available"))
        if self._buffer:
            # RFC 2595 s.4: bytes pipelined behind STLS were sent in the clear; refuse them
            raise _Refused(_err("STLS must not be pipelined"), fatal=True)
        self._state = State.TLS_HANDSHAKE
        return [SendToClient(b"+OK Begin TLS negotiation\r\n"), StartTLS()]

    def _user_command(self, arg: str) -> list[Effect]:
        self._require_auth_allowed()
        if not arg or len(arg) > 255:
            raise _Refused(_err("USER needs a user name"))
        self._user = arg
        return [SendToClient(b"+OK Send PASS\r\n")]

    def _pass(self, arg: str) -> list[Effect]:
        self._require_auth_allowed()
        if self._user is None:
            raise _Refused(_err("USER first"))
        user, self._user = self._user, None
        return self._authenticate(user, arg, "USER")

    def _apop(self, arg: str) -> list[Effect]:
        raise _Refused(_err("APOP is not supported; use USER/PASS or AUTH PLAIN"))

    def _auth(self, arg: str) -> list[Effect]:
        mechanism, _, initial = arg.partition(" ")
        if not mechanism:  # RFC 1734 clients list mechanisms with a bare AUTH
            return [SendToClient(b"+OK\r\nPLAIN\r\n.\r\n")]
        if mechanism.upper() != "PLAIN":
            raise _Refused(_err("Unsupported authentication mechanism; use PLAIN"))
        self._require_auth_allowed()
        if not initial:
            self._state = State.AUTH_RESPONSE
            return [SendToClient(b"+ \r\n")]
        return self._plain(initial.encode("ascii", "replace"))

    def _plain(self, line: bytes) -> list[Effect]:
        if line.strip() == b"*":
            raise _Refused(_err("AUTH cancelled"))
        raw = line.strip()
        try:
            message = b"" if raw == b"=" else base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise _Refused(_err("Invalid base64")) from None
        parts = message.split(b"\0")
        if len(parts) != 3 or not parts[1]:
            raise _Refused(_err("Malformed PLAIN response", "AUTH"))
        try:
            authzid, user, password = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError:
            raise _Refused(_err("User name and password must be UTF-8")) from None
        if authzid and authzid != user:
            raise _Refused(_err("Proxy login (authzid) is not supported", "AUTH"))
        return self._authenticate(user, password, "PLAIN")

    def _authenticate(self, user: str, password: str, mechanism: str) -> list[Effect]:
        self._state = State.AWAITING_LOGIN
        return [Authenticate(user, Secret(password), mechanism)]

    _COMMANDS: ClassVar[dict[str, Callable[[Pop3Preauth, str], list[Effect]]]] = {
        "CAPA": _capa,
        "NOOP": _noop,
        "QUIT": _quit,
        "STLS": _stls,
        "USER": _user_command,
        "PASS": _pass,
        "APOP": _apop,
        "AUTH": _auth,
    }
