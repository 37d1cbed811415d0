"""An async client for the few Graph calls relay365 makes, on httpx.

httpx (over aiohttp): one well-kept library with the same model for sync and async, connection
pooling and HTTP keep-alive by default, an `ssl.SSLContext` taken as is (so Graph gets the same
trust as the mail servers: `tlsutil.https_context(upstream.ca_file)`), and HTTPS_PROXY/NO_PROXY
from the environment like requests (the token client) honours them. Every answer's request-id is
kept for the log. At most MAILBOX_CONCURRENCY requests per mailbox are in flight (Exchange's
MailboxConcurrency limit); a 401 gets one new token and one retry; everything else is raised as a
`GraphError` for the caller (the spool waits Retry-After - nothing here loops on a 429).

httpx is imported when a client is first needed (`relay365.features`: a config with Graph accounts
makes the client at start-up and on reload, so a missing httpx is found then).

`my_addresses` is the one synchronous call, for `relay365 auth`: the signed-in user's addresses
(`GET /me`), with a token the caller got for User.Read, on the same TLS, proxy and timeouts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import metrics
from ..config import Config
from ..features import uses_graph
from ..secret import Secret
from ..tlsutil import https_context
from ..tokens.manager import GRAPH, TokenManager
from .errors import from_response, graph_code, nonsense, timeout, unreachable

if TYPE_CHECKING:
    import httpx

MAILBOX_CONCURRENCY = 4
ME = "/me?$select=userPrincipalName,mail,proxyAddresses"


@dataclass(frozen=True)
class Answer:
    status: int
    request_id: str
    body: bytes


class GraphClient:
    def __init__(self, config: Config, tokens: TokenManager, *,
                 tls: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.tokens = tokens
        self._tls = tls
        self._http: httpx.AsyncClient | None = None
        self._slots: dict[str, asyncio.Semaphore] = {}
        self.configure(config)

    def configure(self, config: Config) -> None:
        """A (re)loaded config: base_url and accounts are read from it per request. A config
        with Graph accounts gets its HTTP client now rather than at the first send."""
        self.config = config
        if uses_graph(config):
            self._client()

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            import httpx

            self._http = httpx.AsyncClient(**_options(self.config, self._tls))
        return self._http

    @property
    def base_url(self) -> str:
        return self.config.upstream.graph.base_url.rstrip("/")

    async def send_mime(self, mailbox: str, mime: bytes) -> Answer:
        """`POST /users/{mailbox}/sendMail` with the base64 MIME message; 202 = accepted."""
        return await self.request(mailbox, "POST", f"/users/{mailbox}/sendMail",
                                  base64.b64encode(mime),
                                  content_type="text/plain", what="sendMail")

    async def call(self, mailbox: str, method: str, path: str, payload: dict[str, Any] | None,
                   *, what: str) -> dict[str, Any]:
        """A JSON request; the JSON answer (an empty dict for an empty one, as 202 and 204)."""
        body = json.dumps(payload).encode() if payload is not None else b""
        answer = await self.request(mailbox, method, path, body, content_type="application/json",
                                    what=what)
        try:
            found = json.loads(answer.body) if answer.body else {}
        except ValueError:
            found = None
        if not isinstance(found, dict):
            raise nonsense(what, answer.status, answer.request_id)
        return found

    async def upload(self, mailbox: str, url: str, piece: bytes, content_range: str) -> Answer:
        """One PUT of an upload session (its URL carries its own authorisation: no bearer)."""
        headers = {"Content-Range": content_range, "Content-Type": "application/octet-stream"}
        async with self._slot(mailbox):
            answer = await self._send("PUT", url, piece, headers, "upload")
        if 200 <= answer.status < 300:
            return answer
        raise from_response(answer.status, answer.headers, answer.body)

    async def request(self, mailbox: str, method: str, path: str, body: bytes, *,
                      content_type: str, what: str) -> Answer:
        rejected: Secret | None = None
        for attempt in (1, 2):
            token = await self.tokens.get(mailbox, resource=GRAPH, rejected=rejected)
            headers = {"Authorization": f"Bearer {token.token.reveal()}",
                       "Content-Type": content_type}
            async with self._slot(mailbox):
                answer = await self._send(method, self.base_url + path, body, headers, what)
            if 200 <= answer.status < 300:
                return answer
            error = from_response(answer.status, answer.headers, answer.body)
            if error.needs_new_token and attempt == 1:
                rejected = token.token
                continue
            raise error
        raise AssertionError("unreachable")

    def _slot(self, mailbox: str) -> asyncio.Semaphore:
        return self._slots.setdefault(mailbox.lower(), asyncio.Semaphore(MAILBOX_CONCURRENCY))

    async def _send(self, method: str, url: str, body: bytes, headers: dict[str, str],
                    what: str) -> _Raw:
        import httpx

        client = self._client()
        started = time.monotonic()
        try:
            r = await client.request(method, url, content=body, headers=headers)
        except httpx.TimeoutException:
            metrics.GRAPH_ERRORS.labels("0", "timeout").inc()
            raise timeout(what) from None
        except httpx.TransportError as exc:
            metrics.GRAPH_ERRORS.labels("0", "unreachable").inc()
            raise unreachable(what, exc) from None
        metrics.GRAPH_LATENCY.labels(what).observe(time.monotonic() - started)
        if r.status_code >= 400:
            metrics.GRAPH_ERRORS.labels(str(r.status_code), graph_code(r.content)[0] or "-").inc()
        lowered = {k.lower(): v for k, v in r.headers.items()}
        return _Raw(r.status_code, lowered.get("request-id", ""), r.content, lowered)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()


@dataclass(frozen=True)
class _Raw(Answer):
    headers: dict[str, str]


def _options(config: Config, tls: ssl.SSLContext | None = None) -> dict[str, Any]:
    """httpx's client options: the mail servers' trust, HTTPS_PROXY/NO_PROXY, upstream timeouts."""
    import httpx

    up = config.upstream
    return {"verify": tls or https_context(up.ca_file), "trust_env": True,
            "timeout": httpx.Timeout(up.timeout, connect=up.connect_timeout)}


def my_addresses(config: Config, token: Secret) -> frozenset[str]:
    """`GET /me` with a delegated User.Read token: the signed-in user's addresses. Raises GraphError."""
    import httpx

    try:
        with httpx.Client(**_options(config)) as http:
            r = http.get(config.upstream.graph.base_url.rstrip("/") + ME,
                         headers={"Authorization": f"Bearer {token.reveal()}"})
    except httpx.HTTPError as exc:
        raise unreachable("GET /me", exc) from None
    if r.status_code != 200:
        raise from_response(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)
    try:
        return addresses(r.json())
    except ValueError:
        raise nonsense("GET /me", r.status_code) from None


def addresses(me: object) -> frozenset[str]:
    """The userPrincipalName, mail and SMTP proxyAddresses of a `GET /me` answer, lower case.

    proxyAddresses are Exchange's `SMTP:primary@x` and `smtp:alias@x` (other kinds, `X500:`,
    `SIP:`, are no mail addresses)."""
    if not isinstance(me, dict):
        return frozenset()
    found = [me.get("userPrincipalName"), me.get("mail")]
    proxies = me.get("proxyAddresses")
    if isinstance(proxies, list):
        found += [p[5:] for p in proxies if isinstance(p, str) and p[:5].lower() == "smtp:"]
    return frozenset(a.strip().lower() for a in found if isinstance(a, str) and a.strip())
