"""HTTP/1.1 requests and responses, as little of them as the status page needs: pure.

One request per connection (`Connection: close`), a head of at most `MAX_HEAD` bytes and a body
of at most `MAX_BODY` (forms and API calls are a few fields). Query strings and form bodies are
`application/x-www-form-urlencoded`; the first value of a repeated field counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

MAX_HEAD = 8192
MAX_BODY = 8192

REASONS = {200: "OK", 303: "See Other", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 413: "Content Too Large",
           429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


class BadRequest(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case
    body: bytes = b""
    peer: str = ""

    @property
    def path(self) -> str:
        return urlsplit(self.target).path or "/"

    @property
    def query(self) -> dict[str, str]:
        return _fields(urlsplit(self.target).query)

    def form(self) -> dict[str, str]:
        return _fields(self.body.decode("utf-8", "replace"))


def _fields(text: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True, max_num_fields=50).items()}


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """The request line and headers (up to the blank line) -> method, target, headers."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "bad request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, "bad header line")
        headers.setdefault(name.lower(), value.strip())
    return parts[0], parts[1], headers


def body_length(headers: dict[str, str]) -> int:
    if "transfer-encoding" in headers:
        raise BadRequest(400, "chunked bodies are not accepted; send Content-Length")
    raw = headers.get("content-length", "0")
    if not raw.isdigit():
        raise BadRequest(400, "bad Content-Length")
    if int(raw) > MAX_BODY:
        raise BadRequest(413, f"body over {MAX_BODY} bytes")
    return int(raw)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self) -> bytes:
        head = [f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Status')}",
                f"Content-Type: {self.content_type}", f"Content-Length: {len(self.body)}",
                "Connection: close", "Cache-Control: no-store", "X-Content-Type-Options: nosniff",
                "Referrer-Policy: no-referrer"]
        head += [f"{k}: {v}" for k, v in self.headers]
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + self.body


def text(status: int, message: str) -> Response:
    return Response(status, message.encode() + b"\n")


def redirect(location: str, *headers: tuple[str, str]) -> Response:
    return Response(303, b"", headers=(("Location", location), *headers))
