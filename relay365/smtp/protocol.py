"""aiosmtpd's SMTP protocol, with the parts that are wrong for a relay replaced.

aiosmtpd stays the SMTP engine (command parsing, ESMTP, AUTH dispatch, STARTTLS, PROXY); this
subclass changes only what a LAN full of printers showed to be wrong, each in one place:
- bookkeeping: a connection is counted once (the limits, the drain) and released once, however it
  ends. A client that connects and closes before the greeting (load-balancer probes, `nc -z`,
  port scanners) used to stay counted forever under uvloop: aiosmtpd cancels its session on EOF
  but leaves the half-closed transport open, so `connection_lost` never came. Now the session
  reads what the client sent before its EOF, answers it, and closes (a half-closed `nc -q0`
  client used to lose its pipelined commands, its message included).
- replies: every reply is one line that encodes (aiosmtpd echoes client bytes in some).
- AUTH after HELO: many scanners say HELO, never EHLO, then AUTH LOGIN/PLAIN; Postfix and Exchange
  accept it, aiosmtpd answered 500. The capability list is still only shown after EHLO.
- DATA is read by `relay365.smtp.data.DataReader` (bare LF as a line end, end of DATA only at
  CRLF.CRLF) instead of aiosmtpd's CRLF-only reader, and handed to the handler's `handle_DATA`.
  This reads `self._reader`, aiosmtpd's stream, for lack of a public hook for the DATA bytes,
  and puts bytes read past the end of DATA back into its buffer (StreamReader has no unread).
- shutdown: a session between transactions hears `421 4.3.2` at once; one inside a transaction
  finishes it first, then hears it.
- logs: `conn`, `proto` and `peer` are bound once per connection (structlog contextvars) in a
  context of its own, which aiosmtpd's session task inherits.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import re
from typing import TYPE_CHECKING, Any, Protocol, cast

import structlog
from aiosmtpd.smtp import SMTP, Envelope

from .. import addrspec, replies
from ..delivery.message import Body
from ..states import ConnRefused, SmtpOutcome
from ..tlsutil import nodelay
from .data import DataError, DataReader
from .policy import SmtpPolicy
from .session import Session

if TYPE_CHECKING:
    from ..config import SmtpConfig
    from .transfer import Transfer


class Host(Protocol):
    """What the protocol needs from the handler that serves it (`server.RelayHandler`)."""

    @property
    def smtp(self) -> SmtpConfig: ...
    def admit(self, peer: str) -> ConnRefused | None: ...
    def new_policy(self, peer: str) -> SmtpPolicy: ...
    def opened(self, server: RelaySMTP) -> None: ...
    def closed(self, server: RelaySMTP, state: Session) -> None: ...
    def new_body(self) -> Body: ...
    async def begin_data(self, server: RelaySMTP, body: Body) -> Transfer: ...

log = structlog.get_logger("relay365.smtp")
_conn_ids = itertools.count(1)
READ_SIZE = 64 * 1024  # DATA is read in chunks this size
_ONE_LINE = re.compile(r"[\r\n]")
# `<local@domain>`, an everyday address, and the blanks after it (aiosmtpd's parser takes them)
_PLAIN_PATH = re.compile(
    rf"<(?P<address>(?P<local>{addrspec.LOCAL})@{addrspec.DOMAIN})>[ \t]*(?![(\s])")
EOF_LINGER = 30.0  # seconds a half-closed client has to read its last replies


class RelaySMTP(SMTP):
    def __init__(self, handler: Host, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.relay = handler
        self.state: Session | None = None
        self.refused: ConnRefused | None = None
        self.closing = False  # shutting down: 421 once the transaction in progress is done
        self._started = False  # connection_made runs again for STARTTLS
        self._ctx = contextvars.copy_context()
        self._expiry: asyncio.TimerHandle | None = None

    # -- a connection's life ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._started:  # the TLS transport after STARTTLS: aiosmtpd's business
            super().connection_made(transport)
            return
        self._started = True
        self._ctx.run(self._first_made, transport)

    def _first_made(self, transport: asyncio.BaseTransport) -> None:
        peer = str((transport.get_extra_info("peername") or ("?", 0))[0])
        conn_id = next(_conn_ids)
        structlog.contextvars.bind_contextvars(conn=conn_id, proto="smtp", peer=peer)
        self.refused = self.relay.admit(peer)
        if self.refused is not None:
            if self.refused is not ConnRefused.UNTRUSTED_PROXY:  # that one speaks PROXY, not SMTP
                cast("asyncio.WriteTransport", transport).write(
                    replies.TOO_MANY_CONNECTIONS.encode() + b"\r\n")
            transport.close()
            return
        self.state = Session(conn_id, peer, self.relay.new_policy(peer))
        super().connection_made(transport)  # starts aiosmtpd's session task in this context
        nodelay(transport)
        self.relay.opened(self)
        self._expiry = self.loop.call_later(self.relay.smtp.max_session_time, self._expired)

    def connection_lost(self, error: Exception | None) -> None:
        if self.state is None:  # refused before it began
            return
        if self._expiry is not None:
            self._expiry.cancel()
        super().connection_lost(error)
        state, self.state = self.state, None
        self._ctx.run(self.relay.closed, self, state)

    def eof_received(self) -> bool | None:
        """The client is done sending. A plain-text client that half-closed (`nc -q0`, a script's
        `shutdown(SHUT_WR)`) still has its commands answered, in order: the session reads to the
        end of its input, then `handle_exception` closes the connection. aiosmtpd cancels its
        session task here instead, which dropped every command still unread. Over TLS a
        transport cannot stay half-open: the session ends at once, as before."""
        task, transport = self._handler_coroutine, self.transport
        tls = transport is not None and transport.get_extra_info("sslcontext") is not None
        if self.session is None or self.session.ssl is not None or tls or task is None or task.done():
            SMTP.eof_received(self)  # cancels aiosmtpd's session task
            if self.transport is not None:
                self.transport.close()  # nobody reads or writes any more: let connection_lost come
            return False
        asyncio.StreamReaderProtocol.eof_received(self)  # the reader sees the end after the rest
        return True  # keep our side open for the replies

    async def handle_exception(self, error: Exception) -> str:
        if not isinstance(error, asyncio.IncompleteReadError):
            return await super().handle_exception(error)  # the handler's: logged, 451
        # the end of a half-closed client's input: every command before it has been answered
        if self.transport is not None:
            self.transport.close()
        await asyncio.sleep(EOF_LINGER)  # connection_lost cancels this once the replies are out
        if self.transport is not None:  # a peer that reads nothing: do not wait for it for ever
            cast("asyncio.WriteTransport", self.transport).abort()
        return ""  # not sent: push() writes nothing to a closing transport

    def _expired(self) -> None:
        """Older than smtp.max_session_time: RFC 5321 allows a 421 at any time."""
        if self.state is not None:
            self.state.policy.outcome = SmtpOutcome.SESSION_TIME
            self._ctx.run(log.warning, "smtp_session_time_limit",
                          seconds=self.relay.smtp.max_session_time)
        self.say_goodbye(replies.SESSION_TIME_LIMIT)

    def say_goodbye(self, reply: str) -> None:
        # uvloop's transports do not subclass asyncio's, hence a cast and not isinstance
        transport = cast("asyncio.WriteTransport | None", self.transport)
        if transport is not None and not transport.is_closing():
            transport.write(reply.encode() + b"\r\n")
            transport.close()

    def shutdown(self) -> None:
        """SIGTERM: 421 now when idle, or after the transaction in progress."""
        self.closing = True
        if self.state is not None and not self.state.policy.in_transaction:
            self.state.policy.outcome = SmtpOutcome.SHUTDOWN
            self.say_goodbye(replies.SHUTTING_DOWN)

    async def _finish(self, transfer: Transfer) -> str:
        try:
            return await transfer.finish()
        except Exception as exc:  # never a traceback to the client; one event for us
            log.error("smtp_internal_error", error=type(exc).__name__, exc_info=exc)
            if self.state is not None:
                self.state.policy.reset()
            return replies.INTERNAL_ERROR

    # -- commands aiosmtpd gets wrong for us -----------------------------------------------------

    async def push(self, status: str | bytes) -> None:
        """Every reply leaves as one line that encodes. aiosmtpd echoes client text in some replies
        (VRFY's argument, an unknown command's name), decoded with surrogateescape: bytes that are
        not UTF-8 made the encode raise, so the client heard `451 4.3.0 Internal error` and an
        error was logged (found by fuzzing); a CR or LF in it would have split the reply."""
        if self.transport is None or self.transport.is_closing():
            await asyncio.sleep(0)  # let connection_lost end the session task
            return
        if isinstance(status, str):
            status = _ONE_LINE.sub(" ", status).encode(
                "utf-8" if self.enable_SMTPUTF8 else "ascii", errors="replace")
        await super().push(status)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The address of MAIL FROM / RCPT TO and what follows it. The everyday `<local@domain>`
        (dot-atoms, an LDH domain) is read by one regular expression, with the same result as
        aiosmtpd's parser (a property test compares them): that parser - the stdlib's email
        header parser, and a Protocol class defined on every call - was ~15% of the relay's CPU
        per relayed message. Anything else still goes to it. It raises on some malformed
        addresses - IndexError on a lone `<`, AttributeError on an unclosed domain literal
        `<a@[b>` (both found by fuzzing): whatever it raises on a client's text, that is a syntax
        error (501 from aiosmtpd), not an internal error and a logged traceback."""
        plain = _PLAIN_PATH.match(arg)
        if plain is not None and not (self.local_part_limit
                                      and len(plain["local"]) > self.local_part_limit):
            return plain["address"], arg[plain.end():]
        try:
            return super()._getaddr(arg)
        except Exception:  # the parser's own failure on client input; nothing of ours runs here
            return None, None

    async def smtp_AUTH(self, arg: str) -> None:
        """AUTH after HELO too: old devices never say EHLO (the capability is not advertised).

        An argument of only characters that `str.split` counts as space and `bytes.strip` does
        not (U+001C-U+001F, say) is no argument: aiosmtpd took the mechanism from the empty list
        it split into, and the client heard `451 4.3.0 Internal error` (found by fuzzing). A bare
        `AUTH` comes as None, whatever the annotation says, and goes on as it is."""
        if arg and not arg.split():
            arg = ""  # aiosmtpd answers 501 after its own checks (HELO, TLS, already logged in)
        if self.session is not None and self.session.host_name and not self.session.extended_smtp:
            self.session.extended_smtp = True
            try:
                await super().smtp_AUTH(arg)
            finally:
                self.session.extended_smtp = False
            return
        await super().smtp_AUTH(arg)

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if self.envelope is None or not self.envelope.rcpt_tos:
            await self.push(replies.NEED_RCPT)
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        reader = DataReader(self.data_size_limit)
        body = self.relay.new_body()
        transfer = await self.relay.begin_data(self, body)
        try:
            await self._read_data(reader, transfer)
            if reader.done:
                await self._end_of_data(reader, transfer)
        finally:
            transfer.abort()  # a no-op once finished; else the upstream never sees the end
            body.close()

    async def _read_data(self, reader: DataReader, transfer: Transfer) -> None:
        """Decode DATA and pass it on as it comes, until its end or the client's."""
        while not reader.done:
            chunk = await self._reader.read(READ_SIZE)
            if not chunk:
                return  # the client went away; connection_lost follows
            content = reader.feed(chunk)
            if content:
                await transfer.feed(content)

    async def _end_of_data(self, reader: DataReader, transfer: Transfer) -> None:
        body = transfer.body
        if reader.rest:  # commands pipelined after the end of DATA go back in front of the
            # stream's buffer for aiosmtpd to read next; StreamReader has no public unread
            self._reader._buffer[:0] = reader.rest  # type: ignore[attr-defined]
        refusal = None
        if reader.error is not None:
            refusal = (replies.TOO_MUCH_DATA if reader.error is DataError.TOO_BIG
                       else replies.LINE_TOO_LONG)
        elif body.error is not None:  # no room for the message while it arrived
            log.error("smtp_body_unstored", error=str(body.error))
            refusal = replies.SPOOL_FULL
        if refusal is not None:
            transfer.abort()
            self.envelope = Envelope()
            if self.state is not None:
                self.state.policy.reset()
            await self.push(refusal)
            return
        status = await self._finish(transfer)
        self.envelope = Envelope()
        await self.push(status)
        if self.closing:
            self.shutdown()
