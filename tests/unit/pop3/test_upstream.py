"""What the relay sends upstream on POP3: `AUTH XOAUTH2`, then the base64 on its own line.

A scripted POP3 server on 127.0.0.1 records the exact bytes (Dovecot also takes the one-line form,
so only a byte-level check shows we send the form Exchange needs)."""

from __future__ import annotations

import asyncio
import base64
import json

from relay365.pop3.upstream import authenticate
from relay365.secret import Secret


async def _exchange(replies: list[bytes]) -> tuple[tuple[bool, bytes], list[bytes]]:
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for reply in replies:
            received.append(await reader.readuntil(b"\r\n"))
            writer.write(reply)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    result = await authenticate(reader, writer, "bob@example.test", Secret("tok"), 5.0)
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return result, received


def test_token_goes_on_its_own_line_after_the_continuation():
    (ok, last), received = asyncio.run(_exchange([b"+ \r\n", b"+OK Logged in.\r\n"]))
    expected = base64.b64encode(b"user=bob@example.test\x01auth=Bearer tok\x01\x01")
    assert ok and last == b"+OK Logged in.\r\n"
    assert received == [b"AUTH XOAUTH2\r\n", expected + b"\r\n"]


def test_failure_challenge_is_answered_with_an_empty_line():
    challenge = base64.b64encode(json.dumps({"status": "401", "schemes": "bearer"}).encode())
    (ok, last), received = asyncio.run(_exchange(
        [b"+ \r\n", b"+ " + challenge + b"\r\n", b"-ERR Authentication failure\r\n"]))
    assert not ok and last.startswith(b"-ERR")
    assert received[0] == b"AUTH XOAUTH2\r\n" and received[2] == b"\r\n"


def test_auth_refused_outright():
    (ok, _), received = asyncio.run(_exchange([b"-ERR Unsupported\r\n"]))
    assert not ok and received == [b"AUTH XOAUTH2\r\n"]
