"""The optional HTTP listener: `/metrics` (Prometheus), `/healthz` (alive), `/readyz` (ready).

A few dozen lines of HTTP/1.1 on asyncio streams are enough for three GET endpoints and keep a web
framework out of the dependencies. Every request gets one response and the connection is closed.
`/readyz` answers 200 `{"status": "ready"}` only when every listener is bound and nothing needs the
operator; otherwise 503 with `starting`, `stopping` or `degraded` and the reasons.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from . import metrics

MAX_REQUEST = 8192
READ_TIMEOUT = 10.0


def _response(status: int, body: bytes, content_type: str) -> bytes:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable",
              400: "Bad Request"}[status]
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n")
    return head.encode() + body


def route(method: str, path: str, readiness: Callable[[], dict]) -> bytes:
    """Pure: the full HTTP response for one request line."""
    path = path.split("?", 1)[0]
    if method != "GET":
        return _response(405, b"GET only\n", "text/plain")
    if path == "/metrics":
        return _response(200, metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
    if path == "/healthz":
        return _response(200, b'{"status": "alive"}\n', "application/json")
    if path == "/readyz":
        state = readiness()
        code = 200 if state["status"] == "ready" else 503
        return _response(code, json.dumps(state).encode() + b"\n", "application/json")
    return _response(404, b"not found\n", "text/plain")


async def serve_http(host: str, port: int, readiness: Callable[[], dict]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(parts) != 3:
                writer.write(_response(400, b"bad request\n", "text/plain"))
            else:
                writer.write(route(parts[0], parts[1], readiness))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=MAX_REQUEST, reuse_address=True)
