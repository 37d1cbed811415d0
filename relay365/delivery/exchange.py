"""One RFC 2920 command group on an aiosmtplib connection: one write, then every reply in order.

aiosmtplib (5.1) cannot pipeline: its protocol object parses one reply per command it sent itself,
and drops bytes that arrive while none of its own commands waits ("response data will be lost",
says `SMTPProtocol.read_response`), so a second reply in the same read, or one that lands before
the first is picked up, would be lost or left unparsed. Rather than reach into its buffer, the
group borrows the connection: asyncio's public `transport.set_protocol` hands the transport to a
`_Collector` for the group, which feeds every byte to the pure `pipeline.ReplyReader` until all
replies are in, and then gives the transport back. aiosmtplib's protocol is between two commands
the whole time (nothing pending, nothing buffered), exactly as it was left. The collector passes
on what aiosmtplib must still hear - the connection lost, the EOF, the write flow control - so a
session that dies mid-group is dead for aiosmtplib too.

What this relies on beyond aiosmtplib's documented API, and so why pyproject pins its minor
version: that `SMTP.protocol.transport` is the live (TLS) transport, and that its protocol keeps no
state between commands other than its buffer. A group whose replies did not all come (timeout,
cancellation, garbage) leaves the session out of step: the connection is closed.
"""

from __future__ import annotations

import asyncio
from typing import cast

import aiosmtplib
from aiosmtplib.protocol import SMTPProtocol

from .pipeline import CLOSING, Reply, ReplyError, ReplyReader


class _Collector(asyncio.Protocol):
    def __init__(self, inner: SMTPProtocol, want: int, done: asyncio.Future[list[Reply]]) -> None:
        self.inner, self.want, self.done = inner, want, done
        self.reader = ReplyReader()
        self.replies: list[Reply] = []

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return  # more than the group asked for: unsolicited, as aiosmtplib would drop it
        try:
            for reply in self.reader.feed(data):
                self.replies.append(reply)
                if len(self.replies) == self.want or reply.code == CLOSING:
                    self.done.set_result(self.replies)
                    return
        except ReplyError as exc:
            self._fail(aiosmtplib.SMTPResponseException(-1, str(exc)))

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return bool(self.inner.eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(aiosmtplib.SMTPServerDisconnected("Connection lost"))
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def timed_out(self) -> None:
        self._fail(aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response"))

    def _fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


async def exchange(smtp: aiosmtplib.SMTP, data: bytes, want: int, timeout: float | None) -> list[Reply]:
    """Write `data` (a command group) and return the `want` replies to it, in order - fewer only
    when the server said 421 (it closes; the connection is closed here too, as aiosmtplib does).
    Raises aiosmtplib's exceptions: SMTPServerDisconnected, SMTPReadTimeoutError, and
    SMTPResponseException for bytes that are no reply."""
    protocol = smtp.protocol
    transport = cast("asyncio.WriteTransport | None", protocol.transport if protocol else None)
    if protocol is None or transport is None or transport.is_closing():
        raise aiosmtplib.SMTPServerDisconnected("Server not connected")
    loop = asyncio.get_running_loop()
    done: asyncio.Future[list[Reply]] = loop.create_future()
    collector = _Collector(protocol, want, done)
    transport.set_protocol(collector)
    # one timer, not asyncio.wait_for (a waiter future and three callbacks per command group)
    timer = loop.call_later(timeout, collector.timed_out) if timeout is not None else None
    complete = False
    try:
        protocol.write(data)  # aiosmtplib's own write: its checks, the same transport
        replies = await done
        complete = replies[-1].code != CLOSING
        return replies
    finally:
        if timer is not None:
            timer.cancel()
        if transport.get_protocol() is collector:
            transport.set_protocol(protocol)
        if not complete:
            smtp.close()  # out of step with the server, or told 421: never another command
