"""One SMTP connection to Office 365: verified TLS, AUTH XOAUTH2 as the account's mailbox.

aiosmtplib speaks the protocol (it has XOAUTH2 built in, including the empty reply to the base64
JSON error challenge). This module only decides the policy - TLS is never optional, a 535 on a cached
token gets one fresh token and one more try - and turns aiosmtplib's exceptions into ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiosmtplib
import structlog

from ..config import Endpoint, UpstreamConfig
from ..errors import UpstreamAuthError, UpstreamError
from ..tlsutil import nodelay
from ..tokens.manager import TokenManager
from .message import Message
from .wire import WireEncoder

log = structlog.get_logger("relay365.delivery.smtp")

_NETWORK = (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError,
            aiosmtplib.SMTPTimeoutError, OSError, ssl.SSLError, TimeoutError)


def _reply_error(exc: aiosmtplib.SMTPResponseException, what: str) -> UpstreamError:
    return UpstreamError(f"upstream refused {what}", code=exc.code, text=exc.message,
                         transient=not 500 <= exc.code < 600)  # only a 5xx is final


class DataStream:
    """One DATA in progress upstream: `write` content as it arrives, then `finish` for the reply.

    aiosmtplib's `data()` wants the whole message as one bytes object (and copies it three times);
    this sends the same bytes (`WireEncoder`) as they come, with aiosmtplib's flow control, so a
    slow upstream slows the reading, not the memory. Until `finish` has the final reply the
    session is `interrupted` (never reused); `abort` closes it without ending DATA, so a message
    the client did not finish is never delivered in part.
    """

    def __init__(self, up: UpstreamSMTP, smtp: aiosmtplib.SMTP) -> None:
        self._up, self._smtp = up, smtp
        self._encoder = WireEncoder()

    async def write(self, content: bytes) -> None:
        out = self._encoder.feed(content)
        if not out:
            return
        async with self._up.guard("the message"):
            protocol = self._smtp.protocol
            if protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("Connection lost")
            protocol.write(out)
            await protocol._drain_helper()  # waits while the transport is over its high-water mark

    async def finish(self) -> str:
        async with self._up.guard("the message"):
            end = self._encoder.end()
            protocol = self._smtp.protocol
            if protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("Connection lost")
            if end != b".\r\n":
                protocol.write(end[:-3])
            done = await self._smtp.execute_command(b".")  # its reply is the message's
            self._up.interrupted = False
            if done.code != 250:
                raise aiosmtplib.SMTPDataError(done.code, done.message)
        return f"{done.code} {done.message}"

    def abort(self) -> None:
        self._up.abort()


class UpstreamSMTP:
    def __init__(self, endpoint: Endpoint, tls: ssl.SSLContext, *, local_hostname: str,
                 connect_timeout: float, timeout: float) -> None:
        self.endpoint = endpoint
        self._tls = tls
        self._local_hostname = local_hostname
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._smtp: aiosmtplib.SMTP | None = None
        self.mailbox: str | None = None
        self.esmtp: set[str] = set()
        self.connect_seconds: float | None = None
        self.opened_at: float | None = None  # monotonic, once logged in (for the pool's max age)
        self.interrupted = False  # a command was cancelled half way: never reuse this session

    @property
    def connected(self) -> bool:
        return self._smtp is not None and self._smtp.is_connected

    async def open(self, mailbox: str, tokens: TokenManager) -> None:
        """Connect, TLS, EHLO, AUTH XOAUTH2. Raises TokenError or UpstreamError."""
        started = time.monotonic()
        implicit = self.endpoint.tls == "implicit"
        smtp = aiosmtplib.SMTP(hostname=self.endpoint.host, port=self.endpoint.port,
                               use_tls=implicit, start_tls=False, tls_context=self._tls,
                               local_hostname=self._local_hostname, timeout=self._timeout)
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

    async def mail(self, sender: str, options: list[str]) -> str:
        opts = [o for o in options if o.split("=")[0].lower() in self.esmtp]
        return await self._call(lambda s: s.mail(sender, options=opts), "the sender")

    async def rcpt(self, recipient: str) -> str:
        return await self._call(lambda s: s.rcpt(recipient), "the recipient")

    async def data(self, message: bytes) -> str:
        return await self._call(lambda s: s.data(message), "the message")

    async def begin_data(self) -> DataStream:
        """Send DATA; once the server said 354, the content goes through the returned stream."""
        assert self._smtp is not None
        smtp = self._smtp
        async with self.guard("the message"):
            start = await smtp.execute_command(b"DATA")
            if start.code != 354:
                raise aiosmtplib.SMTPDataError(start.code, start.message)
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
