"""An embedded stand-in for smtp.office365.com: STARTTLS, then AUTH XOAUTH2, then mail.

Theory of operation
-------------------
`FakeO365SMTP` runs aiosmtpd's protocol engine (`aiosmtpd.smtp.SMTP`) directly under
`loop.create_server` on 127.0.0.1, in the caller's event loop (no `Controller` thread). The
subclass `_O365SMTP` adds the one mechanism Exchange Online offers, XOAUTH2, and raises the line
limits so a real-sized bearer token fits; `_Handler` holds the Exchange-like policy:

* nothing but EHLO/STARTTLS/QUIT before TLS; AUTH is only offered after STARTTLS;
* a token is good if `check_token(token, mailbox)` says so (`FakeIdP.valid_token`); a bad one gets
  Exchange's answer: a 334 challenge carrying the JSON error, then, after the client's (empty)
  reply, `535 5.7.3 Authentication unsuccessful`;
* MAIL before AUTH: `530 5.7.57`; a MAIL FROM other than the authenticated mailbox is accepted
  until the end of DATA and then refused with `554 5.2.252 SendAsDenied`, as Exchange does;
* accepted messages are appended to `messages` as `ReceivedMessage`s (never with the token).

Exceptions in hooks are recorded in `errors` and answered with a fixed 451 line: exception text
never reaches the wire.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

# "AUTH XOAUTH2 " + base64 of "user=<mailbox>\x01auth=Bearer <token>\x01\x01": Entra access tokens
# for Exchange run 1.5-3 kB and grow with claims; 16 KiB leaves room for a ~12 kB token.
MAX_AUTH_LINE = 16 * 1024
# RFC 5321 s4.5.3.1.6: 998 octets + CRLF, + 1 for dot-stuffing (aiosmtpd's own default).
MAX_DATA_LINE = 1001
DATA_SIZE_LIMIT = 35 * 1024 * 1024  # Exchange Online's default message size limit
IDLE_TIMEOUT = 60.0
CLOSE_GRACE = 2.0  # seconds stop() waits for sessions to close before aborting them

XOAUTH2_ERROR = {"status": "401", "schemes": "bearer",
                 "scope": "https://outlook.office.com/SMTP.Send"}
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_FAILED = "535 5.7.3 Authentication unsuccessful"
NOT_AUTHENTICATED = "530 5.7.57 Client not authenticated to send mail"
INTERNAL_ERROR = "451 4.3.0 Temporary server error. Please try again later"


@dataclass(frozen=True)
class ReceivedMessage:
    mechanism: str
    mailbox: str  # the authenticated mailbox
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    tls: bool = True


@dataclass(frozen=True)
class _XOAuth2Login:
    """What a session keeps after AUTH: the mailbox, not the token."""

    mailbox: str


class _Session(Session):
    # smtp_AUTH sets the legacy `login_data` on every success, and its property logs a deprecation
    # warning each time; a plain attribute keeps the fake's logs quiet.
    login_data = None


def parse_xoauth2(blob: bytes) -> tuple[str, str] | None:
    """`user=<mailbox>^Aauth=Bearer <token>^A^A` -> (mailbox, token), or None if malformed."""
    if not blob.endswith(b"\x01\x01"):
        return None
    fields = dict(f.partition(b"=")[::2] for f in blob[:-2].split(b"\x01"))
    user, auth = fields.get(b"user"), fields.get(b"auth", b"")
    scheme, _, token = auth.partition(b" ")
    if not user or scheme.lower() != b"bearer" or not token:
        return None
    try:
        return user.decode("utf-8"), token.decode("ascii")
    except UnicodeDecodeError:
        return None


class _Limits(dict[str, int]):
    """Per-command line limits; commands not listed get RFC 5321's 512 (s4.5.3.1.4)."""

    def __missing__(self, command: str) -> int:
        return SMTP.command_size_limit


class _O365SMTP(SMTP):
    # The stream reader is built from this class value in SMTP.__init__, so AUTH lines may be long;
    # __init__ then puts the per-line DATA limit back to the RFC value.
    line_length_limit = MAX_AUTH_LINE

    def __init__(self, handler: _Handler, tls: ssl.SSLContext) -> None:
        super().__init__(handler, hostname="fake.outlook.office365.com",
                         ident="Microsoft ESMTP MAIL Service (relay365 fake)",
                         tls_context=tls, require_starttls=True, auth_require_tls=True,
                         auth_exclude_mechanism=["PLAIN", "LOGIN"],
                         data_size_limit=DATA_SIZE_LIMIT, timeout=IDLE_TIMEOUT,
                         loop=asyncio.get_running_loop())
        self.line_length_limit = MAX_DATA_LINE
        # aiosmtpd's default is a dict shared by every instance; give each session its own.
        self.command_size_limits = _Limits(AUTH=MAX_AUTH_LINE)

    def _create_session(self) -> Session:
        return _Session(self.loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.event_handler.sessions.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.event_handler.sessions.discard(self)
        super().connection_lost(error)

    async def auth_XOAUTH2(self, _server: SMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await self.challenge_auth("")
            if not isinstance(blob, bytes):
                return AuthResult(success=False, handled=True)  # "*" or bad base64: answered
        else:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await self.push("501 5.5.2 Cannot decode base64")
                return AuthResult(success=False, handled=True)
        parsed = parse_xoauth2(blob)
        if parsed is not None and self.event_handler.check_token(parsed[1], parsed[0]):
            return AuthResult(success=True, auth_data=_XOAuth2Login(parsed[0]), message=AUTH_OK)
        # Exchange first sends the error as a challenge; the client answers (empty line or ^A).
        reply = await self.challenge_auth(json.dumps(XOAUTH2_ERROR, separators=(",", ":")))
        if not isinstance(reply, bytes):
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=AUTH_FAILED)


class _Handler:
    def __init__(self, owner: FakeO365SMTP) -> None:
        self.owner = owner
        self.check_token = owner.check_token
        self.sessions: set[_O365SMTP] = set()

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        if not session.authenticated:
            return NOT_AUTHENTICATED
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # aiosmtpd types auth_data as None; it holds whatever the AUTH hook returned
        login = cast(object, session.auth_data)
        if (not isinstance(login, _XOAuth2Login) or envelope.mail_from is None
                or envelope.original_content is None):
            # handle_MAIL refuses senders without a login, so DATA cannot get here without one
            raise RuntimeError("DATA without an XOAUTH2 login, a sender or content")
        mailbox = login.mailbox
        if envelope.mail_from.lower() != mailbox.lower():
            return (f"554 5.2.252 SendAsDenied; {mailbox} not allowed to send as "
                    f"{envelope.mail_from}")
        message = ReceivedMessage("XOAUTH2", mailbox, envelope.mail_from,
                                  tuple(envelope.rcpt_tos), bytes(envelope.original_content),
                                  tls=session.ssl is not None)
        self.owner._received(message)
        return "250 2.6.0 Queued mail for delivery"

    async def handle_exception(self, error: Exception) -> str:
        self.owner.errors.append(error)
        return INTERNAL_ERROR


class FakeO365SMTP:
    """smtp.office365.com on 127.0.0.1, in the running event loop.

    `on_message`, if set, is called with each accepted `ReceivedMessage`;
    `await wait_for_messages(n)` returns once `n` messages have arrived."""

    def __init__(self, cert_file: str | Path, key_file: str | Path,
                 check_token: Callable[[str, str], bool]) -> None:
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(str(cert_file), str(key_file))
        self.check_token = check_token
        self.messages: list[ReceivedMessage] = []
        self.errors: list[Exception] = []
        self.on_message: Callable[[ReceivedMessage], None] | None = None
        self._arrived = asyncio.Event()
        self._handler = _Handler(self)
        self._server: asyncio.Server | None = None
        self.port: int | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, host="127.0.0.1", port=0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def _protocol(self) -> _O365SMTP:
        return _O365SMTP(self._handler, self._tls)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for session in list(self._handler.sessions):
            if session.transport is not None:
                session.transport.close()
        try:
            async with asyncio.timeout(CLOSE_GRACE):
                while self._handler.sessions:
                    await asyncio.sleep(0.01)
        except TimeoutError:
            for session in list(self._handler.sessions):
                if isinstance(session.transport, asyncio.WriteTransport):
                    session.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> FakeO365SMTP:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_for_messages(self, count: int = 1, timeout: float = 10.0
                                ) -> list[ReceivedMessage]:
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.messages[:count]

    def _received(self, message: ReceivedMessage) -> None:
        self.messages.append(message)
        self._arrived.set()
        if self.on_message is not None:
            self.on_message(message)
