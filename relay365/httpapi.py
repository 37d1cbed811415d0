"""The optional HTTP listener: `/metrics`, `/healthz`, `/readyz`, and the status page (`/`, `/api/*`).

A few dozen lines of HTTP/1.1 on asyncio streams keep a web framework out of the dependencies.
Every request gets one response and the connection is closed. `/readyz` answers 200
`{"status": "ready"}` only when every listener is bound and nothing needs the operator; otherwise
503 with `starting`, `stopping` or `degraded` and the reasons. The status page and its actions
live in `relay365.web`; this module only reads requests and writes responses.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import structlog

from . import metrics
from .web.routes import StatusApp
from .web.wire import MAX_HEAD, BadRequest, Request, Response, body_length, parse_head, text

log = structlog.get_logger("relay365.http")
READ_TIMEOUT = 10.0
Readiness = Callable[[], dict[str, Any]]


def route(method: str, path: str, readiness: Readiness) -> Response | None:
    """Pure: the response for the health and metrics endpoints, None for any other path."""
    path = path.split("?", 1)[0]
    if path not in ("/metrics", "/healthz", "/readyz"):
        return None
    if method != "GET":
        return text(405, "GET only")
    if path == "/metrics":
        return Response(200, metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
    if path == "/healthz":
        return Response(200, b'{"status": "alive"}\n', "application/json")
    state = readiness()
    return Response(200 if state["status"] == "ready" else 503,
                    json.dumps(state).encode() + b"\n", "application/json")


async def _read(reader: asyncio.StreamReader, peer: str) -> Request:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
    method, target, headers = parse_head(head)
    n = body_length(headers)
    body = await asyncio.wait_for(reader.readexactly(n), READ_TIMEOUT) if n else b""
    return Request(method, target, headers, body, peer)


async def respond(req: Request, readiness: Readiness, status: StatusApp | None) -> Response:
    found = route(req.method, req.target, readiness)
    if found is None and status is not None:
        try:
            found = await status.handle(req)
        except Exception:  # a bug here must not take the listener down, nor leak a traceback
            log.exception("status_page_error", path=req.path)
            return text(500, "internal error; see the relay's log")
    return found if found is not None else text(404, "not found")


async def serve_http(host: str, port: int, readiness: Readiness,
                     status: StatusApp | None = None) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = (writer.get_extra_info("peername") or ("",))[0]
        try:
            try:
                response = await respond(await _read(reader, str(peer)), readiness, status)
            except BadRequest as exc:
                response = text(exc.status, str(exc))
            except asyncio.LimitOverrunError:
                response = text(400, f"request head over {MAX_HEAD} bytes")
            writer.write(response.encode())
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=MAX_HEAD, reuse_address=True)
