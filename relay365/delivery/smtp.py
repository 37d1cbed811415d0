"""One SMTP connection to Office 365: verified TLS, AUTH XOAUTH2 as the account's mailbox.

aiosmtplib speaks the protocol (it has XOAUTH2 built in, including the empty reply to the base64
JSON error challenge). This module only decides the policy - TLS is never optional, a 535 on a cached
token gets one fresh token and one more try - and turns aiosmtplib's exceptions into ours. Two
things aiosmtplib cannot do are done over its connection: the envelope as one RFC 2920 group when
the server offers PIPELINING (`exchange`, `pipeline`), and DATA streamed chunk by chunk
(`DataStream`), whose last chunk leaves in one write with the end-of-data dot.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import aiosmtplib
import structlog
from aiosmtplib.email import quote_address

from ..config import Endpoint, UpstreamConfig
from ..errors import UpstreamAuthError, UpstreamError
from ..tlsutil import nodelay
from ..tokens.manager import TokenManager
from . import pipeline
from .exchange import exchange
from .message import Message
from .pipeline import Envelope, Reply
from .wire import WireEncoder

log = structlog.get_logger("relay365.delivery.smtp")

_NETWORK = (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError,
            aiosmtplib.SMTPTimeoutError, OSError, ssl.SSLError, TimeoutError)


def refused(reply: Reply, what: str) -> UpstreamError:
    """The server's refusal of `what` as the relay's error (only a 5xx is final)."""
    return UpstreamError(f"upstream refused {what}", code=reply.code, text=reply.text,
                         transient=reply.transient)


def _reply_error(exc: aiosmtplib.SMTPResponseException, what: str) -> UpstreamError:
    return refused(Reply(exc.code, exc.message), what)


def _extension(option: str) -> str:
    """The EHLO keyword (lower case) a MAIL parameter needs the server to have announced."""
    key, _, value = option.partition("=")
    key = key.lower()
    if key == "body":
        return "binarymime" if value.lower() == "binarymime" else "8bitmime"
    return key


class DataStream:
    """One DATA in progress upstream: `write` content as it arrives, then `finish` for the reply.

    aiosmtplib's `data()` wants the whole message as one bytes object (and copies it three times);
    this sends the same bytes (`WireEncoder`) as they come, with aiosmtplib's flow control, so a
    slow upstream slows the reading, not the memory. The newest chunk is held back until the next
    one comes, so the last leaves with the end-of-data line in one write (a 10 KB message is one
    write, not two). Until `finish` has the final reply the session is `interrupted` (never
    reused); `abort` closes it without ending DATA, so a message the client did not finish is
    never delivered in part.
    """

    def __init__(self, up: UpstreamSMTP, smtp: aiosmtplib.SMTP) -> None:
        self._up, self._smtp = up, smtp
        self._encoder = WireEncoder()
        self._held = b""  # encoded, not yet written

    async def write(self, content: bytes) -> None:
        out = self._encoder.feed(content)
        if not out:
            return
        held, self._held = self._held, out
        if not held:
            return
        async with self._up.guard("the message"):
            protocol = self._smtp.protocol
            if protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("Connection lost")
            protocol.write(held)
            await protocol._drain_helper()  # waits while the transport is over its high-water mark

    async def finish(self) -> str:
        async with self._up.guard("the message"):
            last, self._held = self._held + self._encoder.end(), b""
            done = (await exchange(self._smtp, last, 1, self._up.timeout))[0]  # the message's reply
            self._up.interrupted = False
            if done.code != 250:
                raise aiosmtplib.SMTPDataError(done.code, done.text)
        return str(done)

    def abort(self) -> None:
        self._up.abort()


class UpstreamSMTP:
    def __init__(self, endpoint: Endpoint, tls: ssl.SSLContext, *, local_hostname: str,
                 connect_timeout: float, timeout: float) -> None:
        self.endpoint = endpoint
        self._tls = tls
        self._local_hostname = local_hostname
        self._connect_timeout = connect_timeout
        self.timeout = timeout
        self._smtp: aiosmtplib.SMTP | None = None
        self.mailbox: str | None = None
        self.esmtp: set[str] = set()
        self.connect_seconds: float | None = None
        self.opened_at: float | None = None  # monotonic, once logged in (for the pool's max age)
        self.interrupted = False  # a command was cancelled half way: never reuse this session

    @property
    def connected(self) -> bool:
        return self._smtp is not None and self._smtp.is_connected

    @property
    def pipelining(self) -> bool:
        """The server's EHLO offered PIPELINING (RFC 2920): the envelope goes as one group."""
        return "pipelining" in self.esmtp

    async def open(self, mailbox: str, tokens: TokenManager) -> None:
        """Connect, TLS, EHLO, AUTH XOAUTH2. Raises TokenError or UpstreamError."""
        started = time.monotonic()
        implicit = self.endpoint.tls == "implicit"
        smtp = aiosmtplib.SMTP(hostname=self.endpoint.host, port=self.endpoint.port,
                               use_tls=implicit, start_tls=False, tls_context=self._tls,
                               local_hostname=self._local_hostname, timeout=self.timeout)
        token = await tokens.get(mailbox)
        try:
            await smtp.connect(timeout=self._connect_timeout)
            nodelay(smtp.transport)
            if not implicit:
                await smtp.starttls(tls_context=self._tls)  # raises when the server lacks STARTTLS
            try:
                await smtp.auth_xoauth2(mailbox, token.token.reveal())
            except aiosmtplib.SMTPAuthenticationError as exc:
                if not token.from_cache:
                    raise
                log.info("upstream_auth_retry", account=mailbox, code=exc.code)
                token = await tokens.get(mailbox, rejected=token.token)
                await smtp.auth_xoauth2(mailbox, token.token.reveal())
        except aiosmtplib.SMTPAuthenticationError as exc:
            await _close(smtp)
            raise UpstreamAuthError("upstream refused XOAUTH2", code=exc.code, text=exc.message,
                                    transient=True) from None
        except _NETWORK as exc:  # before SMTPException: a refused connect is one of those too
            await _close(smtp)
            raise UpstreamError(f"cannot reach upstream {self.endpoint.host}:{self.endpoint.port}: "
                                f"{type(exc).__name__}: {exc}") from None
        except aiosmtplib.SMTPException as exc:
            await _close(smtp)
            code = getattr(exc, "code", None)
            raise UpstreamError(f"upstream session setup failed: {type(exc).__name__}",
                                code=code if isinstance(code, int) and code >= 400 else None,
                                text=getattr(exc, "message", ""), transient=True) from None
        self._smtp, self.mailbox = smtp, mailbox
        self.esmtp = set(smtp.esmtp_extensions)
        self.connect_seconds = time.monotonic() - started
        self.opened_at = time.monotonic()

    def _options(self, options: Sequence[str]) -> list[str]:
        """The client's MAIL parameters whose extension this server announced (SIZE=, BODY=,
        SMTPUTF8). A parameter is not always named as its extension: BODY= is 8BITMIME's
        (RFC 6152), or BINARYMIME's for BODY=BINARYMIME (RFC 3030)."""
        return [o for o in options if _extension(o) in self.esmtp]

    async def mail(self, sender: str, options: list[str]) -> str:
        opts = self._options(options)
        return await self._call(lambda s: s.mail(sender, options=opts), "the sender")

    async def envelope(self, sender: str, options: Sequence[str], rcpts: Sequence[str], *,
                       reset: bool = True) -> Envelope:
        """MAIL and the RCPTs: one write and the replies in order when the server offers
        PIPELINING, else one command at a time (and no RCPT after a refused MAIL). Refusals are in
        the Envelope; a lost session or a 421 raises UpstreamError. `reset`: when no recipient
        was accepted, RSET, so the session can carry the next message."""
        assert self._smtp is not None
        smtp, opts = self._smtp, self._options(options)
        async with self.guard("the envelope"):
            if self.pipelining:
                env = await self._pipelined(smtp, sender, opts, rcpts)
            else:
                env = await _one_by_one(smtp, sender, opts, rcpts)
        if (closing := env.closing) is not None:  # aiosmtplib and `exchange` have closed it
            raise refused(closing, "the envelope")
        if reset and env.needs_rset:
            await self.rset()
        return env

    async def _pipelined(self, smtp: aiosmtplib.SMTP, sender: str, opts: list[str],
                         rcpts: Sequence[str]) -> Envelope:
        data = pipeline.group(_quote(sender), opts, [_quote(r) for r in rcpts])
        self.interrupted = True  # until every reply is in: a session cut off here is out of step
        replies = await exchange(smtp, data, pipeline.expected(len(rcpts)), self.timeout)
        self.interrupted = False
        return pipeline.settle(replies, len(rcpts))

    async def rcpt(self, recipient: str) -> str:
        return await self._call(lambda s: s.rcpt(recipient), "the recipient")

    async def data(self, message: bytes) -> str:
        return await self._call(lambda s: s.data(message), "the message")

    async def begin_data(self) -> DataStream:
        """Send DATA; once the server said 354, the content goes through the returned stream."""
        assert self._smtp is not None
        smtp = self._smtp
        async with self.guard("the message"):
            start = (await exchange(smtp, b"DATA\r\n", 1, self.timeout))[0]
            if start.code != 354:
                raise aiosmtplib.SMTPDataError(start.code, start.text)
        self.interrupted = True  # mid-DATA until the stream has its final reply
        return DataStream(self, smtp)

    async def send(self, message: Message) -> str:
        """DATA, with the content read and encoded chunk by chunk: one chunk in memory at a time."""
        stream = await self.begin_data()
        for chunk in message.chunks():
            await stream.write(chunk)
        return await stream.finish()

    def abort(self) -> None:
        """Close at once, mid-command (the client went away during DATA): nothing is delivered."""
        smtp, self._smtp = self._smtp, None
        self.interrupted = True
        if smtp is not None:
            smtp.close()

    async def rset(self) -> bool:
        """End any transaction; False (and the session closed) if that failed."""
        if self._smtp is None:
            return False
        try:
            await self._smtp.rset()
        except (aiosmtplib.SMTPException, *_NETWORK):
            await self.close()
            return False
        return True

    async def _call(self, op: Callable[[aiosmtplib.SMTP], Awaitable[aiosmtplib.SMTPResponse]],
                    what: str) -> str:
        assert self._smtp is not None
        async with self.guard(what):
            response = await op(self._smtp)
        return f"{response.code} {response.message}"

    @contextlib.asynccontextmanager
    async def guard(self, what: str) -> AsyncIterator[None]:
        """aiosmtplib's exceptions as the relay's: a reply is UpstreamError with its code, a lost
        session one without (and the session closed)."""
        try:
            yield
        except asyncio.CancelledError:
            self.interrupted = True  # cut off mid-command: the protocol state is unknown
            raise
        except aiosmtplib.SMTPResponseException as exc:
            raise _reply_error(exc, what) from None
        except (aiosmtplib.SMTPException, *_NETWORK) as exc:
            if self.interrupted:  # mid-DATA: a QUIT now would be read as content
                self.abort()
            else:
                await self.close()
            raise UpstreamError(f"upstream connection lost: {type(exc).__name__}") from None

    async def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            await _close(smtp)


def _quote(address: str) -> str:
    """The path as aiosmtplib's mail()/rcpt() would write it."""
    return pipeline.plain_path(address) or quote_address(address)


async def _one_by_one(smtp: aiosmtplib.SMTP, sender: str, opts: list[str],
                      rcpts: Sequence[str]) -> Envelope:
    mail = await _reply(smtp.mail(sender, options=opts))
    if mail.code not in pipeline.MAIL_OK:
        return Envelope(mail, ())
    replies = [mail]
    for rcpt in rcpts:
        replies.append(await _reply(smtp.rcpt(rcpt)))
        if replies[-1].code == pipeline.CLOSING:
            break
    return pipeline.settle(replies, len(rcpts))


async def _reply(command: Awaitable[aiosmtplib.SMTPResponse]) -> Reply:
    """The server's reply to one command, a refusal included (aiosmtplib raises those)."""
    try:
        response = await command
    except aiosmtplib.SMTPResponseException as exc:
        if exc.code < 0:  # no reply at all, but garbage: the guard's business
            raise
        return Reply(exc.code, exc.message)
    return Reply(response.code, response.message)


async def _close(smtp: aiosmtplib.SMTP) -> None:
    if not smtp.is_connected:
        return
    try:
        await smtp.quit(timeout=5)
    except (aiosmtplib.SMTPException, *_NETWORK):
        smtp.close()


async def open_session(upstream: UpstreamConfig, tls: ssl.SSLContext, tokens: TokenManager,
                       mailbox: str, *, local_hostname: str) -> UpstreamSMTP:
    """A new logged-in session as `mailbox`. Raises TokenError or UpstreamError."""
    up = UpstreamSMTP(upstream.smtp, tls, local_hostname=local_hostname,
                      connect_timeout=upstream.connect_timeout, timeout=upstream.timeout)
    await up.open(mailbox, tokens)
    return up
