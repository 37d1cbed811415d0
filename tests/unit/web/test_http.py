"""The HTTP layer in-process over real sockets: malformed requests get a clean 4xx, routes answer."""

from __future__ import annotations

import asyncio

from relay365.httpapi import serve_http
from relay365.web.wire import BadRequest, body_length, parse_head


async def _exchange(raw: bytes) -> bytes:
    server = await serve_http("127.0.0.1", 0, lambda: {"status": "ready"})
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return data
    finally:
        server.close()
        await server.wait_closed()


def test_health_and_unknown_paths_and_bad_requests():
    ok = asyncio.run(_exchange(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert ok.startswith(b"HTTP/1.1 200 OK") and b'"ready"' in ok
    assert asyncio.run(_exchange(b"GET /nope HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
    assert asyncio.run(_exchange(b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")
    big = asyncio.run(_exchange(b"POST /login HTTP/1.1\r\nContent-Length: 99999\r\n\r\n"))
    assert big.startswith(b"HTTP/1.1 413")
    chunked = asyncio.run(_exchange(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"))
    assert chunked.startswith(b"HTTP/1.1 400")
    assert b"Traceback" not in big + chunked


def test_parse_head():
    method, target, headers = parse_head(b"GET /?peer=a HTTP/1.1\r\nCookie: a=b\r\nX: 1\r\n\r\n")
    assert (method, target, headers["cookie"]) == ("GET", "/?peer=a", "a=b")
    for bad in (b"GET /\r\n\r\n", b"GET / HTTP/1.1\r\nno colon\r\n\r\n"):
        try:
            parse_head(bad)
        except BadRequest as exc:
            assert exc.status == 400
        else:
            raise AssertionError(bad)
    assert body_length({"content-length": "12"}) == 12
