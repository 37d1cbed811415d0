"""A small JSON-over-HTTPS server on loopback, the plumbing under `FakeIdP`.

A stdlib `ThreadingHTTPServer` serves in one daemon thread and handles each connection in its own
thread, so it works from synchronous tests and next to a running asyncio loop alike. TLS is wrapped
per connection in that connection's thread, so a slow or failed handshake blocks nobody else.
Requests (form-encoded bodies, as OAuth token endpoints take) go to one `app` callable, which
usually calls `route()` over a table of `Route`s. Nothing is logged: request lines can carry tokens.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from urllib.parse import parse_qs, urlsplit

MAX_BODY = 64 * 1024  # an OAuth token request is ~2 kB; anything far bigger is not our client
SOCKET_TIMEOUT = 10.0
POLL_INTERVAL = 0.05  # how fast stop() is noticed by serve_forever (stdlib default: 0.5 s)


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query string
    form: dict[str, str]  # the form body; for a GET, the query string
    headers: dict[str, str]  # lower-cased names
    params: dict[str, str] = field(default_factory=dict)  # the matched route's regex groups


JSONObject = dict[str, object]  # a reply body: anything json.dumps takes, under string keys


@dataclass(frozen=True)
class Reply:
    status: int
    body: JSONObject | None  # None: no body (a redirect)
    headers: dict[str, str] = field(default_factory=dict)


DROP = None  # an app returning this closes the connection without an answer

App = Callable[[Request], "Reply | None"]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]  # matched against the whole path
    handler: App


def route(routes: Sequence[Route], req: Request) -> Reply | None:
    """Call the handler whose route matches `req`, with the regex groups in `req.params`."""
    path_known = False
    for r in routes:
        m = r.pattern.fullmatch(req.path)
        if m:
            path_known = True
            if r.method == req.method:
                return r.handler(Request(req.method, req.path, req.form, req.headers,
                                         m.groupdict()))
    return Reply(405 if path_known else 404, {"error": "invalid_request"})


class JSONHTTPSServer:
    def __init__(self, tls: ssl.SSLContext, app: App, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        if not ip_address(host).is_loopback:
            raise ValueError("test servers bind only loopback addresses")
        self._tls, self._app, self._addr = tls, app, (host, port)
        self.errors: list[BaseException] = []  # exceptions the app raised (answered with a 500)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._server = _Server(self._addr, self._tls, self._app, self.errors)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(POLL_INTERVAL,),
                                        daemon=True, name=f"jsonhttps:{self.port}")
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join()
            self._server = self._thread = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], tls: ssl.SSLContext, app: App,
                 errors: list[BaseException]) -> None:
        self.tls, self.app, self.errors = tls, app, errors
        super().__init__(addr, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # failed handshakes and client resets are the client's business, not a traceback


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = SOCKET_TIMEOUT

    def setup(self) -> None:
        # wrap_socket detaches the plain socket the server would close, so finish() closes ours
        self.request = self.server.tls.wrap_socket(self.request, server_side=True)
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.request.close()

    def log_message(self, format: str, *args: object) -> None:
        pass  # request lines may carry tokens in a query string

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            return self._send(Reply(413, {"error": "invalid_request"}))
        raw = self.rfile.read(length).decode("utf-8", "replace")
        form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        if method == "GET":  # a GET's parameters are its query (the authorize endpoint's)
            query = urlsplit(self.path).query
            form = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            reply = self.server.app(Request(method, urlsplit(self.path).path, form, headers))
        except Exception as e:  # a bug in a fake: keep it for the test to see, tell the client
            self.server.errors.append(e)
            reply = Reply(500, {"error": "server_error"})
        if reply is DROP:
            self.close_connection = True
        else:
            self._send(reply)

    def _send(self, reply: Reply) -> None:
        data = json.dumps(reply.body).encode() if reply.body is not None else b""
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store, no-cache")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
