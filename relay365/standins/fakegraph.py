"""A local stand-in for Microsoft Graph's mail-sending endpoints, for tests and the demo.

Theory of operation
-------------------
`FakeGraph` is an HTTPS server on 127.0.0.1 (stdlib `ThreadingHTTPServer`, one thread per
connection, so it runs beside an asyncio loop or a subprocess relay alike). It answers
`POST /v1.0/users/{mailbox}/sendMail` the way Graph does for a MIME send:

* the bearer token must be live and for this mailbox (`check_token(token, mailbox)`, e.g.
  `FakeIdP.valid_token`), and carry this server's resource with `Mail.Send` (delegated) or
  `/.default` (app-only) (`token_scopes(token)`); else 401 `InvalidAuthenticationToken` or 403
  `ErrorAccessDenied`;
* the body is the base64 MIME message (`Content-Type: text/plain`); a request over `MAX_REQUEST`
  (4 MB, Graph's cap) is 413 `ErrorMessageSizeExceeded`; a recipient whose local part is
  `reject-me` gives 400 `ErrorInvalidRecipients`;
* accepted: 202, empty body. The recipients are read from To, Cc and Bcc, the Bcc header is
  removed from the copy, and `deliver(mailbox, recipients, mime)` hands it on (the tests give it
  the real Dovecot's LMTP socket, so what a recipient gets is in a real mailbox); a copy is kept
  in `sent_items[mailbox]`, as Exchange saves every MIME send to Sent Items.

`GET /v1.0/me` (what `relay365 auth` asks when the sign-in name is not the mailbox) needs a live
delegated token for this resource with `User.Read` (else 401, or 403 `Authorization_RequestDenied`;
an app-only token gets 400, as /me has no user); the user is the token's `upn` claim, checked with
`check_token(token, upn)`, and `profile(upn)` (e.g. `FakeIdP.user_profile`) says what to answer
(default: the UPN is the only address), reduced to the `$select`ed properties.

Large messages: drafts (`POST .../messages`), attachments, upload sessions (`PUT /upload/{token}`
with its Content-Range rules) and `.../send` are `graphdrafts.Drafts` (`self.drafts`, with its
`session_ttl` and the `pieces` it accepted); drafts need `Mail.ReadWrite` (or app-only
`/.default`). A sent draft is delivered like a MIME send, and kept in `sent_items` unless it asked
to be deleted after submission.

Every answer has a `request-id` header; errors have Graph's JSON shape (`error.code`,
`error.message`, `error.innerError`). Faults: `fail_next(n, status, code, retry_after)` answers
the next `n` sends with that error (429/503 with `Retry-After`), `delay` slows every answer.
Counters: `requests` (one `GraphRequest` per request: path, mailbox, status, scopes, arrival
time), `concurrent_max` (most requests in flight at once per mailbox). Nothing is logged.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import ssl
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email import message_from_bytes
from email.utils import getaddresses
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from pathlib import Path
from urllib.parse import parse_qs, unquote

from .graphdrafts import Drafts, Sent

MAX_REQUEST = 4 * 1024 * 1024  # Graph's request size cap
SOCKET_TIMEOUT = 30.0
Deliver = Callable[[str, list[str], bytes], None]
# the draft calls relay365 makes: DELETE messages/{id}, POST .../attachments,
# .../attachments/createUploadSession, .../send
_DRAFT = re.compile(r"^messages/[A-Za-z0-9_-]+(/attachments(/createUploadSession)?|/send)?$")


@dataclass(frozen=True)
class GraphRequest:
    method: str
    path: str
    mailbox: str
    status: int
    scopes: frozenset[str]
    at: float  # time.time() when the request arrived
    size: int  # request body bytes


@dataclass(frozen=True)
class Fault:
    status: int
    code: str
    retry_after: float | None


class FakeGraph:
    def __init__(self, cert_file: str | Path, key_file: str | Path, *,
                 check_token: Callable[[str, str], bool],
                 token_scopes: Callable[[str], Iterable[str]],
                 deliver: Deliver | None = None, host: str = "127.0.0.1", port: int = 0,
                 profile: Callable[[str], dict[str, object]] | None = None) -> None:
        if not ip_address(host).is_loopback:
            raise ValueError("test servers bind only loopback addresses")
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(str(cert_file), str(key_file))
        self._addr = (host, port)
        self.check_token, self.token_scopes, self.deliver = check_token, token_scopes, deliver
        self.profile = profile or _only_upn
        self.delay = 0.0
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._in_flight: dict[str, int] = defaultdict(int)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeGraph:
        self._server = _Server(self._addr, self)
        self.drafts.upload_url = f"{self.url}/upload"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True, name="fakegraph")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join()
            self._server = self._thread = None

    def __enter__(self) -> FakeGraph:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The resource (token audience) of this Graph; `base_url` is `{url}/v1.0`."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1.0"

    # -- test controls ---------------------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            self.requests: list[GraphRequest] = []
            self.sent_items: dict[str, list[bytes]] = defaultdict(list)
            self.concurrent_max: dict[str, int] = defaultdict(int)
            self.drafts = Drafts(f"{self.url}/upload" if self._server else "")
            self._faults.clear()
        self.delay = 0.0

    def fail_next(self, n: int = 1, status: int = 429, code: str = "ApplicationThrottled",
                  retry_after: float | None = 2) -> None:
        with self._lock:
            self._faults.extend([Fault(status, code, retry_after)] * n)

    def sends(self, status: int | None = None) -> list[GraphRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/sendMail")
                    and (status is None or r.status == status)]

    # -- one request (in the connection's thread) -------------------------------------------

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes | None,
               query: str = "") -> tuple[int, dict[str, object] | None, dict[str, str]]:
        mailbox = unquote(path.split("/users/", 1)[1].split("/", 1)[0]) if "/users/" in path else ""
        token = headers.get("authorization", "").removeprefix("Bearer ").strip()
        scopes = frozenset(self.token_scopes(token)) if token else frozenset()
        with self._lock:
            self._in_flight[mailbox.lower()] += 1
            now_in = self._in_flight[mailbox.lower()]
            self.concurrent_max[mailbox.lower()] = max(self.concurrent_max[mailbox.lower()], now_in)
        try:
            if self.delay:
                time.sleep(self.delay)
            if path == "/v1.0/me":
                status, error, extra = self._me(method, token, scopes, query)
            else:
                status, error, extra = self._answer(method, path, mailbox, token, scopes, body,
                                                    headers.get("content-range", ""))
        finally:
            with self._lock:
                self._in_flight[mailbox.lower()] -= 1
        with self._lock:
            self.requests.append(GraphRequest(method, path, mailbox, status, scopes, time.time(),
                                              len(body or b"")))
        return status, error, extra

    def _answer(self, method: str, path: str, mailbox: str, token: str, scopes: frozenset[str],
                body: bytes | None, content_range: str
                ) -> tuple[int, dict[str, object] | None, dict[str, str]]:
        if path.startswith("/upload/"):  # an upload session's URL: its token is its authority
            if method != "PUT" or body is None:
                return _error(413 if body is None else 405, "InvalidRequest", "PUT a piece.")
            with self._lock:
                return self.drafts.put(path.rsplit("/", 1)[1], content_range, body, time.time())
        rest = path.split("/users/", 1)[1].split("/", 1)[1] if path.startswith("/v1.0/users/") else ""
        if (method, rest) not in (("POST", "sendMail"), ("POST", "messages")) and not _DRAFT.match(rest):
            return _error(404, "ResourceNotFound", "Resource not found for the segment.")
        if not token or not self.check_token(token, mailbox):
            return _error(401, "InvalidAuthenticationToken", "Access token validation failure.")
        need = ("Mail.Send",) if rest == "sendMail" else ("Mail.ReadWrite",)
        if not any(s in [f"{self.url}/{n}" for n in (*need, ".default")] for s in scopes):
            return _error(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
        if body is None:
            return _error(413, "ErrorMessageSizeExceeded", "The request is larger than 4 MB.")
        with self._lock:
            fault = self._faults.pop(0) if self._faults else None
        if fault is not None:
            extra = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            return _error(fault.status, fault.code, "Injected fault.", extra)
        if rest == "sendMail":
            return self._send_mime(mailbox, body)
        return self._draft_call(method, rest, mailbox, body)

    def _me(self, method: str, token: str, scopes: frozenset[str], query: str
            ) -> tuple[int, dict[str, object] | None, dict[str, str]]:
        if method != "GET":
            return _error(405, "Request_BadRequest", "Specified HTTP method is not allowed.")
        if not any(s.startswith(f"{self.url}/") for s in scopes):  # dead, or not Graph's audience
            return _error(401, "InvalidAuthenticationToken", "Access token validation failure.")
        upn = _claims(token).get("upn")
        if not isinstance(upn, str):
            return _error(400, "BadRequest", "/me request is only valid with delegated "
                          "authentication flow.")
        if not self.check_token(token, upn):
            return _error(401, "InvalidAuthenticationToken", "Access token validation failure.")
        if f"{self.url}/User.Read" not in scopes:
            return _error(403, "Authorization_RequestDenied",
                          "Insufficient privileges to complete the operation.")
        found = self.profile(upn)
        select = parse_qs(query).get("$select", [""])[0].split(",")
        if select != [""]:
            found = {k: v for k, v in found.items() if k in select}
        return 200, {"@odata.context": f"{self.base_url}/$metadata#users/$entity", **found}, {}

    def _send_mime(self, mailbox: str, body: bytes
                   ) -> tuple[int, dict[str, object] | None, dict[str, str]]:
        try:
            mime = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return _error(400, "ErrorMimeContentInvalidBase64String",
                          "Invalid base64 string for MIME content.")
        rcpts, copy = _recipients(mime)
        return self._deliver(mailbox, rcpts, copy, keep=True)

    def _deliver(self, mailbox: str, rcpts: list[str], mime: bytes, *, keep: bool
                 ) -> tuple[int, dict[str, object] | None, dict[str, str]]:
        if not rcpts:
            return _error(400, "ErrorInvalidRecipients", "At least one recipient is not valid.")
        if any(r.split("@")[0].lower() == "reject-me" for r in rcpts):
            return _error(400, "ErrorInvalidRecipients", "At least one recipient is not valid., "
                          "Recipient is not a valid SMTP address.")
        if self.deliver is not None:
            self.deliver(mailbox, rcpts, mime)
        if keep:
            with self._lock:
                self.sent_items[mailbox.lower()].append(mime)
        return 202, None, {}

    def _draft_call(self, method: str, rest: str, mailbox: str, body: bytes
                    ) -> tuple[int, dict[str, object] | None, dict[str, str]]:
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            return _error(400, "BadRequest", "Unable to read JSON request payload.")
        parts = rest.split("/")
        with self._lock:
            if parts == ["messages"]:
                return self.drafts.create(mailbox, payload)
            if method == "DELETE" and len(parts) == 2:
                return self.drafts.delete(mailbox, parts[1])
            if parts[2:] == ["attachments"]:
                return self.drafts.attach(mailbox, parts[1], payload)
            if parts[2:] == ["attachments", "createUploadSession"]:
                return self.drafts.open_session(mailbox, parts[1], payload, time.time())
            sent = self.drafts.send(mailbox, parts[1])
        if not isinstance(sent, Sent):
            return sent
        return self._deliver(mailbox, sent.rcpts, sent.mime, keep=sent.keep)


def _only_upn(upn: str) -> dict[str, object]:
    return {"userPrincipalName": upn, "mail": upn, "proxyAddresses": [f"SMTP:{upn}"]}


def _claims(token: str) -> dict[str, object]:
    """The payload of the fake identity platform's (unsigned) JWT; {} for any other token."""
    try:
        payload = token.split(".")[1]
        found = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _recipients(mime: bytes) -> tuple[list[str], bytes]:
    """To/Cc/Bcc addresses (Graph's recipients), and the message without its Bcc header."""
    msg = message_from_bytes(mime)
    values = [str(v) for h in ("to", "cc", "bcc") for v in msg.get_all(h, [])]
    rcpts = list(dict.fromkeys(a for _, a in getaddresses(values) if "@" in a))
    head_end = mime.find(b"\r\n\r\n")
    head, rest = (mime[:head_end + 2], mime[head_end + 2:]) if head_end >= 0 else (mime, b"")
    lines, out, skipping = head.split(b"\r\n"), [], False
    for line in lines:
        if line[:1] in (b" ", b"\t") and skipping:
            continue
        skipping = line.lower().startswith(b"bcc:")
        if not skipping:
            out.append(line)
    return rcpts, b"\r\n".join(out) + rest


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None
           ) -> tuple[int, dict[str, object] | None, dict[str, str]]:
    inner = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "request-id": str(uuid.uuid4()),
             "client-request-id": str(uuid.uuid4())}
    return status, {"error": {"code": code, "message": message, "innerError": inner}}, headers or {}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], graph: FakeGraph) -> None:
        self.graph = graph
        super().__init__(addr, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # client resets and failed handshakes are the client's business


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = SOCKET_TIMEOUT
    protocol_version = "HTTP/1.1"  # keep-alive, as Graph (the relay reuses connections)

    def setup(self) -> None:
        self.request = self.server.graph._tls.wrap_socket(self.request, server_side=True)
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.request.close()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self._handle("POST")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body: bytes | None = None
        if length > MAX_REQUEST:  # read and dropped, so the client sees the 413, not a reset
            while length > 0:
                length -= len(self.rfile.read(min(length, 1 << 20)) or b"x" * length)
        else:
            body = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        graph = self.server.graph
        try:
            path, _, query = self.path.partition("?")
            status, payload, extra = graph.handle(method, path, headers, body, query)
        except Exception as exc:  # a bug in the fake: kept for the test, answered as Graph would
            graph.errors.append(exc)
            status, payload, extra = _error(500, "InternalServerError", "fake graph failed")
        data = json.dumps(payload).encode() if payload is not None else b""
        self.send_response(status)
        self.send_header("request-id", str(uuid.uuid4()))
        self.send_header("Content-Length", str(len(data)))
        if payload is not None:
            self.send_header("Content-Type", "application/json")
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
