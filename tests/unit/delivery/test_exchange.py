"""`delivery.exchange`: a command group over aiosmtplib's real connection, against a scripted
server that cuts its replies the awkward ways a network can (Postfix always answers a group in one
write, so the integration tests never see these). Over TLS, as to Office 365, on asyncio's loop
and on uvloop's (the daemon's): after a group, aiosmtplib's own next command must still work."""

from __future__ import annotations

import asyncio

import aiosmtplib
import pytest

from relay365.delivery.exchange import exchange
from relay365.delivery.pipeline import Reply
from tests.unit.delivery.scripted import LOOPS, run_session

GROUP = b"MAIL FROM:<a@contoso.test>\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<c@example.test>\r\n"
REPLIES = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 <c@example.test>: User unknown\r\n"
WANT = [Reply(250, "2.1.0 Ok"), Reply(250, "2.1.5 Ok"),
        Reply(550, "5.1.1 <c@example.test>: User unknown")]

async def at_once(w: asyncio.StreamWriter) -> None:
    w.write(REPLIES)


async def byte_by_byte(w: asyncio.StreamWriter) -> None:
    for i in range(len(REPLIES)):
        w.write(REPLIES[i:i + 1])
        await w.drain()
        await asyncio.sleep(0)


async def first_then_rest(w: asyncio.StreamWriter) -> None:
    cut = REPLIES.index(b"\r\n") + 5  # the first reply and the start of the second
    w.write(REPLIES[:cut])
    await w.drain()
    await asyncio.sleep(0.05)
    w.write(REPLIES[cut:])


async def with_extra(w: asyncio.StreamWriter) -> None:
    w.write(REPLIES + b"250 unsolicited\r\n")


@LOOPS
@pytest.mark.parametrize("script", [at_once, byte_by_byte, first_then_rest, with_extra])
def test_every_reply_in_order_however_it_is_cut_and_aiosmtplib_carries_on(certs, loop_factory,
                                                                            script):
    async def body(smtp: aiosmtplib.SMTP) -> object:
        replies = await exchange(smtp, GROUP, 3, timeout=2)
        noop = await smtp.noop()  # aiosmtplib's own next command and its own reply
        return replies, (noop.code, noop.message), smtp.is_connected

    replies, noop, connected = run_session(script, certs, loop_factory, body)
    assert replies == WANT
    assert noop == (250, "2.0.0 still in step") and connected


async def closing(w: asyncio.StreamWriter) -> None:
    w.write(b"250 2.1.0 Ok\r\n421 4.3.2 shutting down\r\n")
    await w.drain()
    w.close()


async def hangs_up(w: asyncio.StreamWriter) -> None:
    w.write(b"250 2.1.0 Ok\r\n")
    await w.drain()
    w.close()


async def garbage(w: asyncio.StreamWriter) -> None:
    w.write(b"250 2.1.0 Ok\r\nHTTP/1.1 400 Bad Request\r\n")


async def silent(w: asyncio.StreamWriter) -> None:
    await asyncio.sleep(5)


@LOOPS
def test_a_421_ends_the_group_and_the_session(certs, loop_factory):
    async def body(smtp: aiosmtplib.SMTP) -> object:
        return await exchange(smtp, GROUP, 3, timeout=2), smtp.is_connected

    replies, connected = run_session(closing, certs, loop_factory, body)
    assert replies == [Reply(250, "2.1.0 Ok"), Reply(421, "4.3.2 shutting down")]
    assert not connected


@LOOPS
@pytest.mark.parametrize("script, error", [
    (hangs_up, aiosmtplib.SMTPServerDisconnected),
    (garbage, aiosmtplib.SMTPResponseException),
    (silent, aiosmtplib.SMTPReadTimeoutError),
])
def test_a_group_without_all_its_replies_closes_the_session(certs, loop_factory, script, error):
    async def body(smtp: aiosmtplib.SMTP) -> object:
        with pytest.raises(error):
            await exchange(smtp, GROUP, 3, timeout=0.5)
        return smtp.is_connected

    assert run_session(script, certs, loop_factory, body) is False


@LOOPS
def test_a_cancelled_group_closes_the_session(certs, loop_factory):
    async def body(smtp: aiosmtplib.SMTP) -> object:
        task = asyncio.ensure_future(exchange(smtp, GROUP, 3, timeout=5))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return smtp.is_connected

    assert run_session(silent, certs, loop_factory, body) is False


def test_no_connection_is_disconnected():
    async def main() -> None:
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await exchange(aiosmtplib.SMTP(), GROUP, 3, timeout=1)

    asyncio.run(main())
