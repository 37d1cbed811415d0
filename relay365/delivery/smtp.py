"""One SMTP connection to Office 365: verified TLS, AUTH XOAUTH2 as the account's mailbox.

aiosmtplib speaks the protocol (it has XOAUTH2 built in, including the empty reply to the base64
JSON error challenge). This module only decides the policy - TLS is never optional, a 535 on a cached
token gets one fresh token and one more try - and turns aiosmtplib's exceptions into ours.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable

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


async def _send_data(smtp: aiosmtplib.SMTP, message: Message) -> aiosmtplib.SMTPResponse:
    """aiosmtplib's `data()` wants the whole message as one bytes object (and copies it three
    times); this sends the same bytes (`WireEncoder`) as they are read, with back-pressure."""
    start = await smtp.execute_command(b"DATA")
    if start.code != 354:
        raise aiosmtplib.SMTPDataError(start.code, start.message)
    protocol = smtp.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    encoder = WireEncoder()
    for chunk in message.chunks():
        out = encoder.feed(chunk)
        if out:
            protocol.write(out)
            # aiosmtplib's flow control (its StreamWriter-style drain): waits while the transport's
            # buffer is over its high-water mark, so a slow upstream slows the reads, not memory
            await protocol._drain_helper()
    end = encoder.end()
    if end != b".\r\n":
        protocol.write(end[:-3])
    done = await smtp.execute_command(b".")  # the end of DATA; its reply is the message's
    if done.code != 250:
        raise aiosmtplib.SMTPDataError(done.code, done.message)
    return done


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

    async def send(self, message: Message) -> str:
        """DATA, with the content read and encoded chunk by chunk: one chunk in memory at a time."""
        return await self._call(lambda s: _send_data(s, message), "the message")

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
        try:
            response = await op(self._smtp)
        except asyncio.CancelledError:
            self.interrupted = True  # cut off mid-command: the protocol state is unknown
            raise
        except aiosmtplib.SMTPResponseException as exc:
            raise _reply_error(exc, what) from None
        except (aiosmtplib.SMTPException, *_NETWORK) as exc:
            await self.close()
            raise UpstreamError(f"upstream connection lost: {type(exc).__name__}") from None
        return f"{response.code} {response.message}"

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
