"""A local stand-in for the Microsoft identity platform (Entra ID), good enough for real msal.

Theory of operation
-------------------
`FakeIdP` is an HTTPS server on 127.0.0.1 (`jsonhttps.JSONHTTPSServer`: stdlib threads, so it works
from sync tests and beside a running asyncio loop) in front of a small, lock-protected token state:

* clients (`add_client`), each with an optional secret and the mailboxes its app-only tokens may open;
* refresh tokens (`issue_refresh_token`), one use each when `rotate` is on;
* access tokens: random opaque strings (Exchange-sized, ~1.6 kB) remembered with mailbox (None for
  app-only), client, scopes and expiry, so `valid_token` can stand in for Exchange Online's check.

Requests are matched against `routes`, a table of (method, path regex, handler); a handler gets a
`Request` and returns a `Reply`, or `DROP` to close the connection unanswered. msal needs only two
routes (`/{tenant}/v2.0/.well-known/openid-configuration` and `/{tenant}/oauth2/v2.0/token`); Dovecot's
oauth2 passdb uses `/introspect` (RFC 7662) and `/grant` (its password grant). `relay365 auth` uses
the interactive ones: `/{tenant}/oauth2/v2.0/authorize` (the browser's side: it "signs in" as
`sign_in_as`, default the `login_hint`, and redirects back with a code, or with `authorize_error`;
the app's registered `redirect_uris` are checked as Entra ID does) with the `authorization_code`
grant (PKCE S256 checked, codes single-use, bound to app and redirect URI, and dead after
`auth_code_lifetime`), and `/{tenant}/oauth2/v2.0/devicecode` with the device-code grant, which
answers `authorization_pending` until a test calls `approve_device` (or `decline_device`), and
`expired_token` after `device_code_lifetime`. Tokens for a signed-in user come with an unsigned
JWT-shaped `id_token` (msal reads its claims without checking a signature) and, when msal asks,
`client_info`, so msal knows the account.

Error replies have the shape of Entra ID's (`error`, `AADSTSnnnnn: ...` description, `error_codes`,
`timestamp`, `trace_id`, `correlation_id`), because msal passes them through to its caller as a dict.
Faults are injected with `fail_next`, `down` and `delay`. Nothing here logs: the request log keeps
(path, grant_type, status) only, never a token or secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import ssl
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_plus, urlencode, urlsplit

from .jsonhttps import DROP, JSONHTTPSServer, Reply, Request, Route, route

OUTLOOK = "https://outlook.office365.com"
DEFAULT_SCOPE = f"{OUTLOOK}/.default"
OIDC_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})

_DESCRIPTIONS = {
    65001: "The user or administrator has not consented to use the application.",
    70000: "Provided grant is invalid or malformed.",
    70003: "The app requested an unsupported grant type.",
    70008: "The provided authorization code or refresh token has expired due to inactivity.",
    70016: "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
    70019: "Verification code expired.",
    50126: "Error validating credentials due to invalid username or password.",
    9002313: "Invalid request. Request is malformed or invalid.",
    900144: "The request body must contain the following parameter: 'scope'.",
    50058: "A silent sign-in request was sent but no user is signed in.",
    54005: "OAuth2 Authorization code was already redeemed, please retry with a new valid code.",
    501481: "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
    50011: "The redirect URI specified in the request does not match the redirect URIs configured.",
    90033: "A transient error has occurred. Please try again.",
    700016: "Application was not found in the directory.",
    1002012: "The provided value for scope is not valid. Client credential flows must have a "
    "scope value with /.default suffixed to the resource identifier.",
    7000215: "Invalid client secret provided.",
    7000218: "The request body must contain the following parameter: 'client_assertion' or "
    "'client_secret'.",
}


@dataclass(frozen=True)
class LoggedRequest:
    path: str
    grant_type: str | None
    status: int  # 0 when the connection was dropped


@dataclass(frozen=True)
class _Client:
    secret: str | None
    app_mailboxes: frozenset[str]
    redirect_uris: frozenset[str] | None = None  # None: any redirect URI is registered


@dataclass(frozen=True)
class _RefreshToken:
    mailbox: str
    client_id: str | None  # None: any registered client may redeem it
    scopes: frozenset[str] | None  # None: any scope


@dataclass(frozen=True)
class _AuthCode:
    mailbox: str
    client_id: str
    redirect_uri: str
    challenge: str
    scopes: frozenset[str]
    nonce: str | None
    expires_at: float


@dataclass
class _DeviceCode:
    client_id: str
    scopes: frozenset[str]
    user_code: str
    expires_at: float
    mailbox: str | None = None  # set when approved
    declined: bool = False


@dataclass(frozen=True)
class _AccessToken:
    mailbox: str | None  # None for app-only tokens
    client_id: str
    scopes: frozenset[str]
    expires_at: float


class _OAuthError(Exception):
    def __init__(self, error: str, code: int | tuple[int, ...], status: int = 400,
                 description: str | None = None, retry_after: int | None = None):
        super().__init__(error)
        self.retry_after = retry_after
        self.codes = code if isinstance(code, tuple) else (code,)
        self.error, self.code, self.status = error, self.codes[0], status
        self.description = description or _DESCRIPTIONS.get(self.code, "Injected failure.")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _redirect_registered(client: _Client, uri: str) -> bool:
    if not uri:
        return False
    if client.redirect_uris is None or uri in client.redirect_uris:
        return True
    # a loopback redirect URI matches whatever port it comes with (RFC 8252 s.7.3)
    asked = urlsplit(uri)
    if asked.scheme != "http" or asked.hostname not in ("localhost", "127.0.0.1"):
        return False
    return any(u.scheme == "http" and u.hostname == asked.hostname
               and (u.path or "/") == (asked.path or "/") for u in map(urlsplit, client.redirect_uris))


def _oid(mailbox: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "mailbox:" + mailbox.lower()))


class FakeIdP:
    """Entra ID on 127.0.0.1. Attributes `rotate`, `down` (False/True/"reset"), `delay` (seconds)
    and `retry_after` (header on 503s, None for none) may be changed while it runs."""

    def __init__(self, cert_file: str | Path, key_file: str | Path, host: str = "127.0.0.1",
                 port: int = 0, access_token_lifetime: int = 3600, *, token_length: int = 1600,
                 rotate: bool = True, clock: Callable[[], float] = time.time) -> None:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(str(cert_file), str(key_file))
        self._http = JSONHTTPSServer(tls, self._app, host, port)
        self.access_token_lifetime = access_token_lifetime
        self.token_length = token_length
        self.rotate = rotate
        self.clock = clock
        self.down: bool | str = False
        self.delay = 0.0
        self.retry_after: int | None = None
        self.tenant_id = str(uuid.uuid4())
        self._lock = threading.Lock()
        self._clients: dict[str, _Client] = {}
        self._refresh: dict[str, _RefreshToken] = {}
        self._access: dict[str, _AccessToken] = {}
        self._faults: deque[_OAuthError] = deque()
        self._codes: dict[str, _AuthCode] = {}
        self._devices: dict[str, _DeviceCode] = {}  # by device_code
        self.sign_in_as: str | None = None  # who signs in at /authorize (None: the login_hint)
        self.authorize_error: tuple[str, int] | None = None  # (error, AADSTS code) for /authorize
        self.device_code_lifetime = 900
        self.auth_code_lifetime = 600  # Entra ID's codes live about ten minutes
        self.device_interval = 1
        self.routes: list[Route] = [
            Route("GET", re.compile(r"/(?P<tenant>[^/]+)/v2\.0/\.well-known/openid-configuration"),
                  self._openid_configuration),
            Route("POST", re.compile(r"/(?P<tenant>[^/]+)/oauth2/v2\.0/token"), self._token),
            Route("GET", re.compile(r"/(?P<tenant>[^/]+)/oauth2/v2\.0/authorize"), self._authorize),
            Route("POST", re.compile(r"/(?P<tenant>[^/]+)/oauth2/v2\.0/devicecode"), self._devicecode),
            Route("POST", re.compile(r"/introspect"), self._introspect),
            Route("POST", re.compile(r"/grant"), self._password_grant),
        ]
        self.reset_counters()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> FakeIdP:
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()

    def __enter__(self) -> FakeIdP:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._http.port

    @property
    def url(self) -> str:
        return self._http.url

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions raised while handling requests (bugs in the fake); tests may assert none."""
        return self._http.errors

    # -- state and controls -----------------------------------------------------------------

    def add_client(self, client_id: str, secret: str | None = None,
                   app_mailboxes: list[str] | tuple[str, ...] = (),
                   redirect_uris: list[str] | tuple[str, ...] | None = None) -> None:
        """Register an app. `redirect_uris` as in the app registration (None: accept any); like
        Entra ID, a registered `http://localhost` (or 127.0.0.1) URI matches any port."""
        with self._lock:
            self._clients[client_id] = _Client(
                secret, frozenset(m.lower() for m in app_mailboxes),
                None if redirect_uris is None else frozenset(redirect_uris))

    def issue_refresh_token(self, mailbox: str, scopes: list[str] | None = None,
                            client_id: str | None = None) -> str:
        token = "0.A" + secrets.token_urlsafe(96)
        with self._lock:
            self._refresh[token] = _RefreshToken(
                mailbox, client_id, None if scopes is None else frozenset(scopes))
        return token

    def fail_next(self, n: int = 1, error: str = "invalid_grant", codes: Sequence[int] = (70008,),
                  status: int = 400, description: str | None = None,
                  retry_after: int | None = None) -> None:
        """Answer the next `n` token requests with this error, before looking at them.

        msal replays a 400 from its own http cache for 60 s when the same request is repeated,
        and a 5xx or Retry-After answer for Retry-After (default 5) seconds; `retry_after=0`
        adds `Retry-After: 0`, which turns both off."""
        fault = _OAuthError(error, tuple(codes), status, description, retry_after)
        with self._lock:
            self._faults.extend([fault] * n)

    def approve_device(self, user_code: str, as_user: str) -> None:
        """The user entered `user_code` at the verification page and signed in as `as_user`."""
        with self._lock:
            self._device(user_code).mailbox = as_user

    def decline_device(self, user_code: str) -> None:
        """The user entered `user_code` and then refused the sign-in."""
        with self._lock:
            self._device(user_code).declined = True

    def _device(self, user_code: str) -> _DeviceCode:
        for dc in self._devices.values():
            if dc.user_code == user_code:
                return dc
        raise KeyError(f"no pending device code {user_code!r}")

    def valid_token(self, token: str, mailbox: str | None = None) -> bool:
        """Is `token` a live access token, and (if `mailbox` is given) may it open that mailbox?"""
        with self._lock:
            return self._may_open(self._access.get(token), mailbox)

    def revoke_access_tokens(self) -> None:
        with self._lock:
            self._access.clear()

    def expire_access_tokens(self) -> None:
        with self._lock:
            past = self.clock() - 1
            self._access = {t: _AccessToken(a.mailbox, a.client_id, a.scopes, past)
                            for t, a in self._access.items()}

    def reset_counters(self) -> None:
        with self._lock:
            self.token_requests = 0  # every POST to the token endpoint, failed ones included
            self.grants: Counter[str] = Counter()  # by grant_type
            self.introspections = 0
            self.password_grants = 0
            self.request_log: list[LoggedRequest] = []
            self.authorize_requests: list[dict[str, str]] = []  # the query of each /authorize

    def _may_open(self, at: _AccessToken | None, mailbox: str | None) -> bool:
        if at is None or at.expires_at <= self.clock():
            return False
        if mailbox is None:
            return True
        if at.mailbox is not None:
            return at.mailbox.lower() == mailbox.lower()
        client = self._clients.get(at.client_id)
        return client is not None and mailbox.lower() in client.app_mailboxes

    def _new_access_token(self, mailbox: str | None, client_id: str, scopes: frozenset[str]) -> str:
        token = secrets.token_urlsafe(self.token_length)[: self.token_length]
        self._access[token] = _AccessToken(mailbox, client_id, scopes,
                                           self.clock() + self.access_token_lifetime)
        return token

    # -- endpoints --------------------------------------------------------------------------

    def _openid_configuration(self, req: Request) -> Reply:
        base = f"{self.url}/{req.params['tenant']}"
        return Reply(200, {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "issuer": f"{self.url}/{self.tenant_id}/v2.0",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "introspection_endpoint": f"{self.url}/introspect",
            "tenant_region_scope": "EU",
        })

    def _token(self, req: Request) -> Reply | None:
        grant_type = req.form.get("grant_type")
        with self._lock:
            self.token_requests += 1
            self.grants[grant_type or ""] += 1
            fault = self._faults.popleft() if self._faults and not self.down else None
        if self.down == "reset":
            return DROP
        if self.down:
            return self._error(req, _OAuthError("temporarily_unavailable", 90033, 503,
                                                retry_after=self.retry_after))
        try:
            if fault is not None:
                raise fault
            with self._lock:
                if grant_type == "refresh_token":
                    return Reply(200, self._refresh_grant(req))
                if grant_type == "client_credentials":
                    return Reply(200, self._client_credentials_grant(req))
                if grant_type == "authorization_code":
                    return Reply(200, self._auth_code_grant(req))
                if grant_type in ("urn:ietf:params:oauth:grant-type:device_code", "device_code"):
                    return Reply(200, self._device_code_grant(req))
            raise _OAuthError("unsupported_grant_type", 70003)
        except _OAuthError as e:
            return self._error(req, e)

    def _authenticate_client(self, req: Request, require_secret: bool = False) -> str:
        client_id, given = req.form.get("client_id", ""), req.form.get("client_secret")
        basic = req.headers.get("authorization", "")
        if basic[:6].lower() == "basic ":  # client_secret_basic, RFC 6749 s.2.3.1
            try:
                decoded = base64.b64decode(basic[6:], validate=True).decode()
            except ValueError:
                raise _OAuthError("invalid_client", 7000215, 401) from None
            user, _, password = decoded.partition(":")
            client_id, given = unquote_plus(user), unquote_plus(password)
        client = self._clients.get(client_id)
        if client is None:
            raise _OAuthError("invalid_client", 700016, 400, f"Application with identifier "
                              f"'{client_id}' was not found in the directory.")
        if client.secret is None and not require_secret:
            return client_id
        if given is None:
            raise _OAuthError("invalid_client", 7000218, 401)
        if client.secret is None or not hmac.compare_digest(given.encode(), client.secret.encode()):
            raise _OAuthError("invalid_client", 7000215, 401)
        return client_id

    def _refresh_grant(self, req: Request) -> dict:
        client_id = self._authenticate_client(req)
        old = req.form.get("refresh_token", "")
        rt = self._refresh.get(old)
        if rt is None or rt.client_id not in (None, client_id):
            raise _OAuthError("invalid_grant", 70000)
        wanted = frozenset(req.form.get("scope", "").split()) - OIDC_SCOPES
        if rt.scopes is not None and not wanted <= rt.scopes:
            raise _OAuthError("invalid_grant", 65001)
        scopes = wanted or rt.scopes or frozenset()
        new = old
        if self.rotate:
            del self._refresh[old]
            new = "0.A" + secrets.token_urlsafe(96)
            self._refresh[new] = rt
        body = self._token_body(self._new_access_token(rt.mailbox, client_id, scopes), scopes)
        body["refresh_token"] = new
        if "openid" in req.form.get("scope", "").split():
            body["id_token"] = self._id_token(rt.mailbox, client_id)
        if req.form.get("client_info") == "1":
            body["client_info"] = _b64url(json.dumps(
                {"uid": _oid(rt.mailbox), "utid": self.tenant_id}).encode())
        return body

    def _user_tokens(self, req: Request, mailbox: str, client_id: str, scopes: frozenset[str],
                     nonce: str | None = None) -> dict:
        """Access, refresh and id token for a user who just signed in (code or device flow)."""
        rt = "0.A" + secrets.token_urlsafe(96)
        self._refresh[rt] = _RefreshToken(mailbox, client_id, None)
        resource = scopes - OIDC_SCOPES
        body = self._token_body(self._new_access_token(mailbox, client_id, resource), resource)
        body["refresh_token"] = rt
        body["id_token"] = self._id_token(mailbox, client_id, nonce)
        if req.form.get("client_info") == "1":
            body["client_info"] = _b64url(json.dumps(
                {"uid": _oid(mailbox), "utid": self.tenant_id}).encode())
        return body

    def _auth_code_grant(self, req: Request) -> dict:
        client_id = self._authenticate_client(req)
        code = self._codes.pop(req.form.get("code", ""), None)  # single use
        if code is None or code.client_id != client_id:
            raise _OAuthError("invalid_grant", 54005)
        if code.expires_at <= self.clock():
            raise _OAuthError("invalid_grant", 70008)
        if req.form.get("redirect_uri") != code.redirect_uri:
            raise _OAuthError("invalid_grant", 50011)
        verifier = req.form.get("code_verifier", "")
        challenge = _b64url(hashlib.sha256(verifier.encode()).digest())
        if not verifier or not hmac.compare_digest(challenge, code.challenge):
            raise _OAuthError("invalid_grant", 501481)
        return self._user_tokens(req, code.mailbox, client_id, code.scopes, code.nonce)

    def _device_code_grant(self, req: Request) -> dict:
        client_id = self._authenticate_client(req)
        dc = self._devices.get(req.form.get("device_code", ""))
        if dc is None or dc.client_id != client_id:
            raise _OAuthError("invalid_grant", 70000)
        if dc.expires_at <= self.clock():
            del self._devices[req.form["device_code"]]
            raise _OAuthError("expired_token", 70019)
        if dc.declined:
            del self._devices[req.form["device_code"]]
            raise _OAuthError("authorization_declined", 70000,
                              description="The end user denied the authorization request.")
        if dc.mailbox is None:
            raise _OAuthError("authorization_pending", 70016)
        del self._devices[req.form["device_code"]]
        return self._user_tokens(req, dc.mailbox, client_id, dc.scopes)

    def _authorize(self, req: Request) -> Reply:
        """The browser's half of the code flow: sign-in and consent are instant, then a 302.

        Like Entra ID, an unknown app or an unregistered redirect URI gets an error page (400),
        never a redirect; every other problem goes back to the redirect URI as error=...; the
        parameters come back in the query, or in the fragment with response_mode=fragment."""
        q = req.form
        with self._lock:
            self.authorize_requests.append(dict(q))
            client = self._clients.get(q.get("client_id", ""))
        redirect = q.get("redirect_uri", "")
        if client is None:
            return self._error(req, _OAuthError("unauthorized_client", 700016))
        if not _redirect_registered(client, redirect):
            return self._error(req, _OAuthError("invalid_request", 50011))
        fragment = q.get("response_mode") == "fragment"
        state = q.get("state")
        echo = {"state": state} if state is not None else {}

        def back(params: dict) -> Reply:
            query = urlencode({**params, **echo})
            if fragment:
                return Reply(302, None, {"Location": f"{redirect}#{query}"})
            return Reply(302, None, {"Location": redirect + ("&" if "?" in redirect else "?") + query})

        def refuse(error: str, code: int, why: str | None = None) -> Reply:
            return back({"error": error, "error_description":
                         f"AADSTS{code}: {why or _DESCRIPTIONS.get(code, 'Injected failure.')}"})

        if self.authorize_error is not None:
            return refuse(*self.authorize_error)
        if q.get("response_type") != "code":
            return refuse("unsupported_response_type", 9002313, "response_type must be code")
        if not q.get("scope", "").split():
            return refuse("invalid_request", 900144)
        if not q.get("code_challenge") or q.get("code_challenge_method") != "S256":
            # Entra ID also takes plain PKCE or none for a confidential app; relay365 must use S256
            return refuse("invalid_request", 9002313, "PKCE with code_challenge_method=S256 required")
        mailbox = self.sign_in_as or q.get("login_hint")
        if not mailbox:
            return refuse("login_required", 50058)
        code = secrets.token_urlsafe(48)
        with self._lock:
            self._codes[code] = _AuthCode(mailbox, q["client_id"], redirect, q["code_challenge"],
                                          frozenset(q["scope"].split()), q.get("nonce"),
                                          self.clock() + self.auth_code_lifetime)
        return back({"code": code, "session_state": str(uuid.uuid4())})

    def _devicecode(self, req: Request) -> Reply:
        client_id = req.form.get("client_id", "")
        with self._lock:
            if client_id not in self._clients:
                return self._error(req, _OAuthError("invalid_client", 700016))
            user_code = "".join(secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(9))
            device_code = secrets.token_urlsafe(64)
            self._devices[device_code] = _DeviceCode(
                client_id, frozenset(req.form.get("scope", "").split()), user_code,
                self.clock() + self.device_code_lifetime)
        verify = f"{self.url}/devicelogin"
        return Reply(200, {
            "user_code": user_code, "device_code": device_code, "verification_uri": verify,
            "expires_in": self.device_code_lifetime, "interval": self.device_interval,
            "message": f"To sign in, use a web browser to open the page {verify} and enter the "
                       f"code {user_code} to authenticate."})

    def _client_credentials_grant(self, req: Request) -> dict:
        client_id = self._authenticate_client(req, require_secret=True)
        scopes = req.form.get("scope", "").split()
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            raise _OAuthError("invalid_scope", 1002012)
        token = self._new_access_token(None, client_id, frozenset(scopes))
        return self._token_body(token, frozenset(scopes))

    def _token_body(self, token: str, scopes: frozenset[str]) -> dict:
        lifetime = self.access_token_lifetime
        return {"token_type": "Bearer", "scope": " ".join(sorted(scopes)), "expires_in": lifetime,
                "ext_expires_in": lifetime, "access_token": token}

    def _id_token(self, mailbox: str, client_id: str, nonce: str | None = None) -> str:
        now = int(self.clock())
        claims = {"aud": client_id, "iss": f"{self.url}/{self.tenant_id}/v2.0", "iat": now,
                  "nbf": now, "exp": now + 3600, "name": mailbox.split("@")[0],
                  "oid": _oid(mailbox), "preferred_username": mailbox,
                  "sub": _b64url(uuid.uuid5(uuid.NAMESPACE_URL, client_id + mailbox).bytes),
                  "tid": self.tenant_id, "uti": secrets.token_urlsafe(16), "ver": "2.0",
                  **({"nonce": nonce} if nonce else {})}
        header = {"typ": "JWT", "alg": "none"}
        return ".".join([_b64url(json.dumps(header).encode()),
                         _b64url(json.dumps(claims).encode()), ""])

    def _error(self, req: Request, e: _OAuthError) -> Reply:
        now = self.clock()
        stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(now))
        trace, corr = str(uuid.uuid4()), req.headers.get("client-request-id") or str(uuid.uuid4())
        return Reply(e.status, {
            "error": e.error,
            "error_description": f"AADSTS{e.code}: {e.description} Trace ID: {trace} "
                                 f"Correlation ID: {corr} Timestamp: {stamp}",
            "error_codes": list(e.codes), "timestamp": stamp, "trace_id": trace,
            "correlation_id": corr, "error_uri": f"{self.url}/error?code={e.code}",
        }, {} if e.retry_after is None else {"Retry-After": str(e.retry_after)})

    def _introspect(self, req: Request) -> Reply:
        with self._lock:
            self.introspections += 1
            at = self._access.get(req.form.get("token", ""))
            if (at is None or at.mailbox is None or not self._may_open(at, None)
                    or not _scope_allows(at, req.headers.get("x-dovecot-auth-service", ""))):
                return Reply(200, {"active": False})
            return Reply(200, {"active": True, "username": at.mailbox, "email": at.mailbox,
                               "scope": " ".join(sorted(at.scopes)), "client_id": at.client_id,
                               "token_type": "Bearer", "exp": int(at.expires_at)})

    def _password_grant(self, req: Request) -> Reply:
        mailbox, token = req.form.get("username", ""), req.form.get("password", "")
        with self._lock:
            self.password_grants += 1
            at = self._access.get(token)
            if (req.form.get("grant_type") != "password" or not self._may_open(at, mailbox)
                    or not _scope_allows(at, req.headers.get("x-dovecot-auth-service", ""))):
                return Reply(400, {"error": "invalid_grant"})
            expires_in = max(0, int(at.expires_at - self.clock()))
        return Reply(200, {"access_token": token, "token_type": "Bearer",
                           "expires_in": expires_in, "username": mailbox, "active": True})

    def _app(self, req: Request) -> Reply | None:
        if self.delay:
            time.sleep(self.delay)
        reply = route(self.routes, req)
        with self._lock:
            self.request_log.append(LoggedRequest(req.path, req.form.get("grant_type"),
                                                  0 if reply is DROP else reply.status))
        return reply


# Exchange Online checks the permission per protocol: a delegated token needs the protocol's scope,
# an app-only one (scope <resource>/.default) the app role, which the fake grants every app.
_SERVICE_SCOPES = {"pop3": "POP.AccessAsUser.All", "imap": "IMAP.AccessAsUser.All"}


def _scope_allows(at: _AccessToken | None, service: str) -> bool:
    """May `at` be used for Dovecot's `service` (X-Dovecot-Auth-Service)? Unknown services pass."""
    needed = _SERVICE_SCOPES.get(service.lower())
    if at is None or needed is None or not at.scopes:
        return at is not None
    if any(s.endswith("/.default") for s in at.scopes):
        return True
    return any(s.rsplit("/", 1)[-1] == needed for s in at.scopes)
