"""The client side of the IMAP relay before login: a sans-IO state machine.

Theory of operation
-------------------
`ImapPreauth` takes the client's bytes (`receive_data`) and the adapter's facts (`tls_started`,
`login_succeeded`, `login_failed`, `timeout`) and returns effects, small frozen dataclasses the
adapter carries out in order: `SendToClient`, `StartTLS`, `Authenticate`, `StartSplice`, `Close`.
It has no sockets, clock or logging; the adapter (`relay365.imap.server`) owns those.

    NOT_AUTHENTICATED --STARTTLS--> TLS_HANDSHAKE --tls_started()--> NOT_AUTHENTICATED
    NOT_AUTHENTICATED --AUTHENTICATE PLAIN (no initial response)--> AUTH_RESPONSE --line--+
    NOT_AUTHENTICATED --LOGIN, AUTHENTICATE PLAIN <response>--> AWAITING_LOGIN <-----------+
    AWAITING_LOGIN --login_failed()--> NOT_AUTHENTICATED
    AWAITING_LOGIN --login_succeeded()--> SPLICING     (the adapter owns the bytes from here)
    any state but SPLICING --LOGOUT, timeout(), a limit, a fatal error--> CLOSED

CAPABILITY, NOOP, ID, LOGOUT and STARTTLS are answered here; every other command is BAD, since
before login there is nothing upstream to ask. LOGIN and AUTHENTICATE PLAIN end in one
`Authenticate(tag, username, password, mechanism)`; the adapter checks it and reports back, and the
core answers with the client's own tag. While a login is checked, input is held unparsed: after a
failure it is parsed then (the client may have pipelined a retry or LOGOUT), after a success the
adapter forwards it upstream with `take_buffered()`.

Malformed input raises a `CommandError` or `FatalError` that carries its reply; `receive_data`
turns them into effects, so client bytes never escape as an exception. Calling an entry point in
a state where it makes no sense is the adapter's bug and raises `ImapUsageError`. After `Close`
every entry point is a harmless no-op, so racing a close is safe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

from ..secret import Secret
from .effects import (
    Authenticate,
    Close,
    Effect,
    LoginFailure,
    SendToClient,
    StartSplice,
    StartTLS,
    State,
)
from .parse import (
    MAX_COMMAND_SIZE,
    Args,
    CommandError,
    FatalError,
    Frame,
    Framer,
    LiteralAnnounced,
    Reply,
    bad,
    decode_plain,
    no,
    read_id_params,
)

# A client that keeps sending what we can't parse is broken or probing. RFC 9051 sets no limit;
# ten in a row is plenty for a client that is merely feeling its way.
MAX_BAD_COMMANDS = 10
# Wrong passwords on one connection before we hang up; the adapter's throttle works across them.
MAX_AUTH_FAILURES = 3
# Bytes a client may send after LOGIN before it has the answer. A well-behaved one sends a few
# commands; the adapter reads 16 KiB at a time and not at all while a login is checked.
MAX_PIPELINED = 64 * 1024
# What the core ever holds between calls.
MAX_BUFFERED = max(MAX_COMMAND_SIZE, MAX_PIPELINED)

SERVER_NAME = "relay365"

__all__ = [
    "Authenticate", "Close", "Effect", "ImapPreauth", "ImapUsageError", "LoginFailure",
    "SendToClient", "StartSplice", "StartTLS", "State",
]


_FAILURE_REPLIES = {
    LoginFailure.AUTH_FAILED: Reply("NO", "Invalid credentials", "AUTHENTICATIONFAILED"),
    LoginFailure.UNAVAILABLE: Reply("NO", "Service temporarily unavailable, try again later",
                                    "UNAVAILABLE"),
    LoginFailure.LIMIT: Reply("NO", "Too many sessions, try again later", "LIMIT"),
}
_CONTINUE_LITERAL = SendToClient(b"+ Ready for literal data\r\n")
_UNKNOWN = "Command unknown or not valid before login"


class ImapUsageError(RuntimeError):
    """The adapter called the core at a wrong moment: a bug in the adapter, never the client's."""


def _ok(text: str) -> Reply:
    return Reply("OK", text)


def _capability_code(capabilities: str | bytes | None) -> str | None:
    """``CAPABILITY <caps>`` for the login OK; None if the upstream's list isn't clean ASCII."""
    if isinstance(capabilities, bytes):
        capabilities = capabilities.decode("ascii", "replace")
    caps = " ".join((capabilities or "").split())
    if not caps or "]" in caps or not all(" " <= c <= "~" for c in caps):
        return None  # the client asks for CAPABILITY itself, and gets the upstream's answer
    return f"CAPABILITY {caps}"


class ImapPreauth:
    """One client connection from its greeting until login succeeds or it closes."""

    def __init__(self, *, tls_active: bool, starttls_available: bool,
                 allow_plaintext_auth: bool) -> None:
        self._tls = tls_active
        self._starttls = starttls_available
        self._plaintext = allow_plaintext_auth
        self._state = State.NOT_AUTHENTICATED
        self._framer = Framer()
        self._bad_commands = 0
        self._auth_failures = 0
        self._tag = ""  # of the AUTHENTICATE or LOGIN in progress
        self._mechanism = ""

    @property
    def state(self) -> State:
        return self._state

    @property
    def tls_active(self) -> bool:
        return self._tls

    @property
    def buffered_size(self) -> int:
        """Client bytes held between calls; never more than MAX_BUFFERED."""
        return self._framer.buffered_size

    @property
    def capabilities(self) -> str:
        caps = ["IMAP4rev1", "SASL-IR", "LITERAL+", "ID"]
        if self._starttls and not self._tls:
            caps.append("STARTTLS")
        caps.append("AUTH=PLAIN" if self._auth_allowed else "LOGINDISABLED")
        return " ".join(caps)

    @property
    def _auth_allowed(self) -> bool:
        return self._tls or self._plaintext

    # -- entry points for the adapter ---------------------------------------------------------

    def greeting(self) -> list[Effect]:
        return [SendToClient(f"* OK [CAPABILITY {self.capabilities}] {SERVER_NAME} ready\r\n"
                             .encode("ascii"))]

    def receive_data(self, data: bytes) -> list[Effect]:
        """Client bytes in, effects out. An empty `data` is a no-op (EOF is the adapter's)."""
        if self._state is State.SPLICING:
            raise ImapUsageError("receive_data() after login: splice the bytes instead")
        if self._state is State.CLOSED or not data:
            return []
        if self._state is State.TLS_HANDSHAKE:
            # plaintext that arrived behind STARTTLS could be injected (CVE-2011-0411 style)
            return self._close(Reply("BYE", "Data received before the TLS handshake", "CLIENTBUG"))
        self._framer.feed(data)
        if self._state is State.AWAITING_LOGIN:
            if self._framer.raw_size > MAX_PIPELINED:
                return self._close(Reply("BYE", "Too much data before the login completed"))
            return []
        return self._pump()

    def tls_started(self) -> list[Effect]:
        """The TLS handshake after STARTTLS completed. The client must ask CAPABILITY again."""
        if self._state is State.CLOSED:
            return []
        self._expect(State.TLS_HANDSHAKE, "tls_started")
        self._tls = True
        self._framer.clear()  # RFC 9051 s.6.2.1: nothing from before the handshake carries over
        self._state = State.NOT_AUTHENTICATED
        return []

    def login_succeeded(self, capabilities: str | bytes | None = None) -> list[Effect]:
        """Answer the login OK, with the upstream's post-login `capabilities` as response code."""
        if self._state is State.CLOSED:
            return []
        self._expect(State.AWAITING_LOGIN, "login_succeeded")
        self._state = State.SPLICING
        verb = "LOGIN" if self._mechanism == "LOGIN" else "AUTHENTICATE"
        reply = Reply("OK", f"{verb} completed", _capability_code(capabilities))
        return [SendToClient(reply.render(self._tag)), StartSplice()]

    def login_failed(self, kind: LoginFailure | str) -> list[Effect]:
        """Answer the login NO; then go on with whatever the client sent meanwhile."""
        if self._state is State.CLOSED:
            return []
        self._expect(State.AWAITING_LOGIN, "login_failed")
        kind = LoginFailure(kind)
        self._state = State.NOT_AUTHENTICATED
        effects = self._complete(self._tag, _FAILURE_REPLIES[kind])
        if kind is LoginFailure.AUTH_FAILED:
            self._auth_failures += 1
            if self._auth_failures >= MAX_AUTH_FAILURES:
                return effects + self._close(Reply("BYE", "Too many failed login attempts"))
        return effects + self._pump()

    def take_buffered(self) -> bytes:
        """After StartSplice: the bytes the client pipelined after its login, for the upstream."""
        if self._state is State.CLOSED:
            return b""
        self._expect(State.SPLICING, "take_buffered")
        return self._framer.take_raw()

    def timeout(self) -> list[Effect]:
        """The adapter's idle or login timer fired."""
        if self._state is State.CLOSED:
            return []
        if self._state is State.SPLICING:
            raise ImapUsageError("timeout() after login: the splice has its own")
        return self._close(Reply("BYE", "Autologout; idle for too long"))

    # -- the machine ------------------------------------------------------------------------

    def _expect(self, state: State, call: str) -> None:
        if self._state is not state:
            raise ImapUsageError(f"{call}() in state {self._state.name}")

    def _pump(self) -> list[Effect]:
        """Act on each complete command, until the input runs out or the state stops it."""
        effects: list[Effect] = []
        try:
            while True:
                if self._state is State.AUTH_RESPONSE:
                    line = self._framer.next_line()
                    if line is None:
                        break
                    effects += self._on_auth_response(line)
                elif self._state is State.NOT_AUTHENTICATED:
                    item = self._framer.next_command()
                    if item is None:
                        break
                    if isinstance(item, LiteralAnnounced):
                        effects += self._on_literal(item)
                    else:
                        effects += self._on_command(item)
                else:
                    break
        except FatalError as exc:
            effects += self._close(exc.reply)
        return effects

    def _complete(self, tag: str | None, reply: Reply) -> list[Effect]:
        """A command's final reply; counts consecutive BADs."""
        effects: list[Effect] = [SendToClient(reply.render(tag))]
        if reply.status != "BAD":
            self._bad_commands = 0
            return effects
        self._bad_commands += 1
        if self._bad_commands >= MAX_BAD_COMMANDS:
            effects += self._close(Reply("BYE", "Too many invalid commands"))
        return effects

    def _close(self, bye: Reply) -> list[Effect]:
        self._state = State.CLOSED
        self._framer.clear()
        return [SendToClient(bye.render()), Close()]

    def _on_literal(self, announced: LiteralAnnounced) -> list[Effect]:
        """A synchronizing literal: invite it, or refuse the command before it is sent."""
        args = Args(Frame((announced.first_line,), ()))
        tag = args.tag()
        try:
            if tag is None:
                raise bad("Missing or invalid tag")
            args.sp()
            name = args.atom("command name").upper()
            if name not in self._COMMANDS:
                raise bad(_UNKNOWN)
            if name == b"LOGIN":
                self._require_auth_allowed()
            elif name != b"ID":
                raise bad("Unexpected literal")
            if announced.too_big:
                raise bad("Literal too large", "TOOBIG")
        except CommandError as exc:
            self._framer.abandon()  # RFC 9051 s.7.5: the client won't send the rest
            return self._complete(tag, exc.reply)
        self._framer.accept_literal()
        return [_CONTINUE_LITERAL]

    def _on_command(self, frame: Frame) -> list[Effect]:
        args = Args(frame)
        tag = args.tag()
        if tag is None:
            return self._complete(None, Reply("BAD", "Missing or invalid tag"))
        try:
            args.sp()
            handler = self._COMMANDS.get(args.atom("command name").upper())
            if handler is None:
                raise bad(_UNKNOWN)
            return handler(self, tag, args)
        except CommandError as exc:
            return self._complete(tag, exc.reply)

    def _on_auth_response(self, line: bytes) -> list[Effect]:
        self._state = State.NOT_AUTHENTICATED
        try:
            if line == b"*":
                raise bad("AUTHENTICATE cancelled")
            return self._plain(self._tag, line)
        except CommandError as exc:
            return self._complete(self._tag, exc.reply)

    def _require_auth_allowed(self) -> None:
        if not self._auth_allowed:
            raise no("Authentication requires TLS", "PRIVACYREQUIRED")

    # -- commands: each gets the tag and the arguments after the command name ----------------

    def _capability(self, tag: str, args: Args) -> list[Effect]:
        args.end()
        untagged = SendToClient(f"* CAPABILITY {self.capabilities}\r\n".encode("ascii"))
        return [untagged, *self._complete(tag, _ok("CAPABILITY completed"))]

    def _noop(self, tag: str, args: Args) -> list[Effect]:
        args.end()
        return self._complete(tag, _ok("NOOP completed"))

    def _logout(self, tag: str, args: Args) -> list[Effect]:
        args.end()
        self._state = State.CLOSED
        self._framer.clear()
        return [SendToClient(Reply("BYE", f"{SERVER_NAME} logging out").render()),
                SendToClient(_ok("LOGOUT completed").render(tag)), Close()]

    def _id(self, tag: str, args: Args) -> list[Effect]:
        args.sp()
        read_id_params(args)  # RFC 2971: we only check them; nothing we do depends on them
        args.end()
        untagged = SendToClient(f'* ID ("name" "{SERVER_NAME}")\r\n'.encode("ascii"))
        return [untagged, *self._complete(tag, _ok("ID completed"))]

    def _starttls_command(self, tag: str, args: Args) -> list[Effect]:
        args.end()
        if self._tls:
            raise bad("TLS is already active")
        if not self._starttls:
            raise bad("STARTTLS is not available")
        if self._framer.raw_size:
            # RFC 9051 s.6.2.1: the client waits for our OK; bytes behind STARTTLS were sent in
            # the clear and may be an attacker's, and a handshake can't start on top of them
            raise FatalError("STARTTLS must not be pipelined", "CLIENTBUG")
        self._state = State.TLS_HANDSHAKE
        return [*self._complete(tag, _ok("Begin TLS negotiation now")), StartTLS()]

    def _login(self, tag: str, args: Args) -> list[Effect]:
        self._require_auth_allowed()
        args.sp()
        user = args.astring()
        args.sp()
        password = args.astring()
        args.end()
        return self._authenticate(tag, "LOGIN", user, password)

    def _authenticate_command(self, tag: str, args: Args) -> list[Effect]:
        args.sp()
        if args.atom("mechanism").upper() != b"PLAIN":
            raise no("Unsupported authentication mechanism", "CANNOT")
        self._require_auth_allowed()
        if args.at_end():
            self._tag = tag
            self._state = State.AUTH_RESPONSE
            return [SendToClient(b"+ \r\n")]
        args.sp()
        response = args.atom("initial response")  # RFC 4959 SASL-IR: base64 or "="
        args.end()
        return self._plain(tag, response)

    def _plain(self, tag: str, response: bytes) -> list[Effect]:
        user, password = decode_plain(response)
        return self._authenticate(tag, "PLAIN", user, password)

    def _authenticate(self, tag: str, mechanism: str, user: bytes,
                      password: bytes) -> list[Effect]:
        try:
            username, secret = user.decode("utf-8"), Secret(password.decode("utf-8"))
        except UnicodeDecodeError:
            raise bad("User name and password must be UTF-8") from None
        if self._framer.raw_size > MAX_PIPELINED:
            raise FatalError("Too much data before the login completed")
        self._tag, self._mechanism = tag, mechanism
        self._state = State.AWAITING_LOGIN
        return [Authenticate(tag, username, secret, mechanism)]

    _COMMANDS: ClassVar[Mapping[bytes, Callable[[ImapPreauth, str, Args], list[Effect]]]] = {
        b"CAPABILITY": _capability,
        b"NOOP": _noop,
        b"LOGOUT": _logout,
        b"ID": _id,
        b"STARTTLS": _starttls_command,
        b"LOGIN": _login,
        b"AUTHENTICATE": _authenticate_command,
    }
