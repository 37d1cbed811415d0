"""A scripted SMTP server over TLS on 127.0.0.1:0 and an aiosmtplib session to it, on asyncio's
loop or uvloop's: for the tests of what the relay writes over aiosmtplib's connection."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

import aiosmtplib
import pytest
import uvloop

Script = Callable[[asyncio.StreamWriter], Awaitable[None]]
LOOPS = pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop],
                                ids=["asyncio", "uvloop"])


def run_session(script: Script, certs, loop_factory, body) -> object:
    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"220 test ESMTP\r\n")
        while line := await r.readline():
            if line.startswith(b"EHLO"):
                w.write(b"250-test\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n")
            elif line.startswith(b"NOOP"):
                w.write(b"250 2.0.0 still in step\r\n")
            elif line.startswith(b"QUIT"):
                w.write(b"221 bye\r\n")
                break
            elif line.startswith(b"RCPT TO:<c@"):  # the group's last line: answer it all now
                await script(w)
            elif line.startswith(b"DATA"):
                w.write(b"354 go ahead\r\n")
            elif line == b".\r\n":
                w.write(b"250 2.0.0 Ok: queued\r\n")
            await w.drain()
        w.close()

    async def main() -> object:
        server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_tls.load_cert_chain(certs.cert_file, certs.key_file)
        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_tls)
        port = server.sockets[0].getsockname()[1]
        client_tls = ssl.create_default_context(cafile=str(certs.ca_file))
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, use_tls=True, tls_context=client_tls,
                               timeout=2)
        try:
            await smtp.connect()
            await smtp.ehlo()
            return await body(smtp)
        finally:
            smtp.close()
            server.close()
            await server.wait_closed()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())
