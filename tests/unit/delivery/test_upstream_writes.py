"""What `UpstreamSMTP` writes on its connection, counted at the transport: each write is a TLS
record, a segment and a wakeup of the server, so the count is part of the cost per message."""

from __future__ import annotations

import asyncio
import ssl

import aiosmtplib

from relay365.config.model import Endpoint
from relay365.delivery.message import Body
from relay365.delivery.smtp import UpstreamSMTP
from tests.unit.delivery.scripted import LOOPS, run_session

MESSAGE = b"From: a@contoso.test\r\nSubject: count the writes\r\n\r\n" + (b"z" * 998 + b"\r\n") * 10


async def nothing(w: asyncio.StreamWriter) -> None:
    pass


def upstream_on(smtp: aiosmtplib.SMTP) -> tuple[UpstreamSMTP, list[bytes]]:
    """An UpstreamSMTP over an open aiosmtplib session, and the list its writes go to (each
    through aiosmtplib's protocol.write, the one way to the transport)."""
    up = UpstreamSMTP(Endpoint("127.0.0.1", 0, "implicit"), ssl.create_default_context(),
                      local_hostname="test", connect_timeout=2, timeout=2)
    up._smtp, up.esmtp, up.mailbox = smtp, set(smtp.esmtp_extensions), "a@contoso.test"
    protocol = smtp.protocol
    assert protocol is not None
    writes: list[bytes] = []
    real = protocol.write

    def record(data: bytes) -> None:
        writes.append(bytes(data))
        real(data)

    protocol.write = record  # type: ignore[method-assign]
    return up, writes


@LOOPS
def test_a_small_message_and_its_end_leave_in_one_write(certs, loop_factory, tmp_path):
    async def body(smtp: aiosmtplib.SMTP) -> object:
        up, writes = upstream_on(smtp)
        stream = await up.begin_data()
        writes.clear()  # from here on: the content and its end
        for i in range(0, len(MESSAGE), 4096):  # as the client's DATA arrives, in pieces
            await stream.write(MESSAGE[i:i + 4096])
        reply = await stream.finish()
        return reply, writes, up.interrupted

    reply, writes, interrupted = run_session(nothing, certs, loop_factory, body)
    assert reply == "250 2.0.0 Ok: queued" and not interrupted
    assert b"".join(writes) == MESSAGE + b".\r\n"
    assert len(writes) == 3  # three pieces, the last one with ".\r\n": no write of its own
    assert writes[-1].endswith(b"\r\n.\r\n")


@LOOPS
def test_send_of_a_stored_message_ends_in_the_same_write(certs, loop_factory, tmp_path):
    async def body(smtp: aiosmtplib.SMTP) -> object:
        up, writes = upstream_on(smtp)
        message = Body(tmp_path)
        message.write(MESSAGE)
        try:
            writes_before = len(writes)
            reply = await up.send(message)
        finally:
            message.close()
        return reply, writes[writes_before:]

    reply, writes = run_session(nothing, certs, loop_factory, body)
    assert reply.startswith("250")
    assert writes == [b"DATA\r\n", MESSAGE + b".\r\n"]


@LOOPS
def test_the_envelope_is_one_write_when_the_server_pipelines(certs, loop_factory):
    async def answer(w: asyncio.StreamWriter) -> None:
        w.write(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 no such user\r\n")

    async def body(smtp: aiosmtplib.SMTP) -> object:
        up, writes = upstream_on(smtp)
        env = await up.envelope("a@contoso.test", ["SIZE=99", "SMTPUTF8"],
                                ["b@example.test", "c@example.test"])
        return env, writes

    env, writes = run_session(answer, certs, loop_factory, body)
    assert writes == [b"MAIL FROM:<a@contoso.test> SIZE=99\r\n"  # SMTPUTF8: not offered
                      b"RCPT TO:<b@example.test>\r\nRCPT TO:<c@example.test>\r\n"]
    assert env.accepted == (0,) and env.rcpts[1].code == 550


def test_mail_parameters_go_on_by_the_extension_they_belong_to():
    """BODY= belongs to 8BITMIME (BODY=BINARYMIME to BINARYMIME): it used to be kept only for
    a server announcing an extension called BODY, which none does."""
    up = UpstreamSMTP(Endpoint("127.0.0.1", 0, "implicit"), ssl.create_default_context(),
                      local_hostname="test", connect_timeout=2, timeout=2)
    given = ["SIZE=10", "BODY=8BITMIME", "body=7bit", "BODY=BINARYMIME", "SMTPUTF8"]
    up.esmtp = {"size", "8bitmime", "smtputf8", "pipelining"}
    assert up._options(given) == ["SIZE=10", "BODY=8BITMIME", "body=7bit", "SMTPUTF8"]
    up.esmtp = {"pipelining"}
    assert up._options(given) == []
    up.esmtp = {"8bitmime", "binarymime"}
    assert up._options(given) == ["BODY=8BITMIME", "body=7bit", "BODY=BINARYMIME"]
