"""A local stand-in for the Microsoft identity platform (Entra ID), good enough for real msal.

`FakeIdP` is an HTTPS server on 127.0.0.1 (`jsonhttps.JSONHTTPSServer`: stdlib threads, so it works
from sync tests and beside a running asyncio loop) in front of a small, lock-protected token state:

clients (`add_client`: secret, the mailboxes app-only tokens may open; `grant_admin_consent`),
users with aliases (`add_user`: a token opens every address of its user), refresh tokens
(`issue_refresh_token`, single use when `rotate`), and access tokens (`entra.mint`: opaque for mail,
JWTs for Graph) remembered with mailbox, client, scopes and expiry, for `valid_token`'s check.

Requests are matched against `routes` (method, path regex, handler -> `Reply` or `DROP`). msal needs two
routes (`/{tenant}/v2.0/.well-known/openid-configuration` and `/{tenant}/oauth2/v2.0/token`); Dovecot's
oauth2 passdb uses `/introspect` (RFC 7662) and `/grant` (its password grant). `relay365 auth` uses
the interactive ones, `/{tenant}/oauth2/v2.0/authorize` and `/{tenant}/oauth2/v2.0/devicecode`, with
the `authorization_code` and device-code grants (`relay365.standins.signin`); a signed-in user's tokens
come with an unsigned JWT-shaped `id_token` and `client_info`, so msal knows the account.

Error replies have Entra ID's shape (`relay365.standins.entra`): msal passes them on as a dict.
Faults: `fail_next`, `down`, `delay`, `secret_expires_at`. Request log: (path, grant_type, status), no secret.
"""

from __future__ import annotations

import base64
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
from pathlib import Path
from typing import TypeGuard
from urllib.parse import unquote_plus

from .entra import (
    DEFAULT_SCOPE,
    DESCRIPTIONS,
    OIDC_SCOPES,
    OUTLOOK,
    AccessToken,
    AuthCode,
    Client,
    DeviceCode,
    LoggedRequest,
    OAuthError,
    RefreshToken,
    User,
    b64url,
    id_token,
    mint,
    oid,
    scope_allows,
    token_scopes,
)
from .jsonhttps import DROP, JSONHTTPSServer, JSONObject, Reply, Request, Route, route
from .signin import SignInFlows

__all__ = ["DEFAULT_SCOPE", "DESCRIPTIONS", "OUTLOOK", "FakeIdP", "LoggedRequest"]


class FakeIdP(SignInFlows):
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
        self._clients: dict[str, Client] = {}
        self._refresh: dict[str, RefreshToken] = {}
        self._access: dict[str, AccessToken] = {}
        self._faults: deque[OAuthError] = deque()
        self._codes: dict[str, AuthCode] = {}
        self._devices: dict[str, DeviceCode] = {}  # by device_code
        self._full_access: set[tuple[str, str]] = set()  # (mailbox, delegate), lower case
        self._users: dict[str, User] = {}  # by lower-case UPN: those with more than one address
        self.sign_in_as: str | None = None  # who signs in at /authorize (None: the login_hint)
        self.authorize_error: tuple[str, int] | None = None  # (error, AADSTS code) for /authorize
        self.device_code_lifetime, self.device_interval = 900, 1
        self.auth_code_lifetime = 600  # Entra ID's codes live about ten minutes
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

    def __exit__(self, *exc: object) -> None:
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
                   redirect_uris: list[str] | tuple[str, ...] | None = None, *,
                   public_flows: bool = False, secret_expires_at: float | None = None) -> None:
        """Register an app. `redirect_uris` as registered (None: any; `http://localhost` or 127.0.0.1
        matches any port, as in Entra ID). `public_flows`: "Allow public client flows" (device code
        without the secret). `secret_expires_at`: then the secret is refused (AADSTS7000222)."""
        with self._lock:
            self._clients[client_id] = Client(
                secret, frozenset(m.lower() for m in app_mailboxes),
                None if redirect_uris is None else frozenset(redirect_uris), public_flows,
                secret_expires_at=secret_expires_at)

    def grant_full_access(self, mailbox: str, delegate: str, granted: bool = True) -> None:
        """Exchange's `Add-MailboxPermission -Identity mailbox -User delegate -AccessRights
        FullAccess` (or its removal): the delegate's own tokens then open `mailbox` too."""
        with self._lock:
            (self._full_access.add if granted else self._full_access.discard)(
                (mailbox.lower(), delegate.lower()))

    def issue_refresh_token(self, mailbox: str, scopes: list[str] | None = None,
                            client_id: str | None = None) -> str:
        token = "0.A" + secrets.token_urlsafe(96)
        with self._lock:
            self._refresh[token] = RefreshToken(
                mailbox, client_id, None if scopes is None else frozenset(scopes))
        return token

    def fail_next(self, n: int = 1, error: str = "invalid_grant", codes: Sequence[int] = (70008,),
                  status: int = 400, description: str | None = None,
                  retry_after: int | None = None) -> None:
        """Answer the next `n` token requests with this error, before looking at them.

        msal replays a 400 from its own http cache for 60 s when the same request is repeated,
        and a 5xx or Retry-After answer for Retry-After (default 5) seconds; `retry_after=0`
        adds `Retry-After: 0`, which turns both off."""
        fault = OAuthError(error, tuple(codes), status, description, retry_after)
        with self._lock:
            self._faults.extend([fault] * n)

    def valid_token(self, token: str, mailbox: str | None = None) -> bool:
        """Is `token` a live access token, and (if `mailbox` is given) may it open that mailbox?"""
        with self._lock:
            return self._may_open(self._access.get(token), mailbox)

    def token_scopes(self, token: str) -> frozenset[str]:
        """The scopes a live access token was issued for (its resource: `https://graph.../Mail.Send`)."""
        with self._lock:
            at = self._access.get(token)
            return at.scopes if self._may_open(at, None) and at else frozenset()

    def revoke_access_tokens(self) -> None:
        with self._lock:
            self._access.clear()

    def expire_access_tokens(self) -> None:
        with self._lock:
            past = self.clock() - 1
            self._access = {t: AccessToken(a.mailbox, a.client_id, a.scopes, past)
                            for t, a in self._access.items()}

    def clear_faults(self) -> None:  # forget the fail_next answers not given yet
        self._faults.clear()  # one deque call: atomic, as the lock would make it

    def reset_counters(self) -> None:
        with self._lock:
            self.token_requests = 0  # every POST to the token endpoint, failed ones included
            self.grants: Counter[str] = Counter()  # by grant_type
            self.introspections = 0
            self.password_grants = 0
            self.request_log: list[LoggedRequest] = []
            self.authorize_requests: list[dict[str, str]] = []  # the query of each /authorize

    def _may_open(self, at: AccessToken | None, mailbox: str | None) -> bool:
        if at is None or at.expires_at <= self.clock():
            return False
        if mailbox is None:
            return True
        if at.mailbox is not None:
            return (self._user(at.mailbox).owns(mailbox)  # the user's own address, or an alias
                    or (mailbox.lower(), at.mailbox.lower()) in self._full_access)
        client = self._clients.get(at.client_id)
        return client is not None and mailbox.lower() in client.app_mailboxes

    def _new_access_token(self, mailbox: str | None, client_id: str, scopes: frozenset[str]) -> str:
        token = mint(self.token_length, self.url, mailbox, self._clients.get(client_id), client_id,
                     scopes, self.clock())
        self._access[token] = AccessToken(mailbox, client_id, scopes,
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
            return self._error(req, OAuthError("temporarily_unavailable", 90033, 503,
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
            raise OAuthError("unsupported_grant_type", 70003)
        except OAuthError as e:
            return self._error(req, e)

    def _authenticate_client(self, req: Request, require_secret: bool = False,
                             public: bool = False) -> str:
        """The client of a token request. `public`: a public client flow (device code, or the
        refresh of its token), which a registration with a secret may run without it when
        "Allow public client flows" is on - and must then run without it (AADSTS700025)."""
        client_id, given = req.form.get("client_id", ""), req.form.get("client_secret")
        basic = req.headers.get("authorization", "")
        if basic[:6].lower() == "basic ":  # client_secret_basic, RFC 6749 s.2.3.1
            try:
                decoded = base64.b64decode(basic[6:], validate=True).decode()
            except ValueError:
                raise OAuthError("invalid_client", 7000215, 401) from None
            user, _, password = decoded.partition(":")
            client_id, given = unquote_plus(user), unquote_plus(password)
        client = self._clients.get(client_id)
        if client is None:
            raise OAuthError("invalid_client", 700016, 400, f"Application with identifier "
                              f"'{client_id}' was not found in the directory.")
        if client.secret is None and not require_secret:
            return client_id
        if public and client.public_flows:
            if given is not None:
                raise OAuthError("invalid_client", 700025, 401)
            return client_id
        if given is None:
            raise OAuthError("invalid_client", 7000218, 401)
        if client.secret is None or not hmac.compare_digest(given.encode(), client.secret.encode()):
            raise OAuthError("invalid_client", 7000215, 401)
        if client.secret_expires_at is not None and client.secret_expires_at <= self.clock():
            raise OAuthError("invalid_client", 7000222, 401)
        return client_id

    def _refresh_grant(self, req: Request) -> JSONObject:
        old = req.form.get("refresh_token", "")
        rt = self._refresh.get(old)
        client_id = self._authenticate_client(req, public=rt is not None and rt.public)
        if rt is None or rt.client_id not in (None, client_id):
            raise OAuthError("invalid_grant", 70000)
        consented = None if rt.scopes is None else rt.scopes | self._clients[client_id].admin_consent
        scopes = token_scopes(consented, req.form.get("scope", ""))
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
            body["client_info"] = b64url(json.dumps(
                {"uid": oid(rt.mailbox), "utid": self.tenant_id}).encode())
        return body

    def _user_tokens(self, req: Request, mailbox: str, client_id: str, scopes: frozenset[str],
                     nonce: str | None = None, public: bool = False) -> JSONObject:
        """Access, refresh and id token for a user who just signed in (code or device flow)."""
        rt = "0.A" + secrets.token_urlsafe(96)
        # what was consented at sign-in; the access token is for one resource of it
        self._refresh[rt] = RefreshToken(mailbox, client_id, scopes - OIDC_SCOPES, public)
        resource = token_scopes(scopes - OIDC_SCOPES, req.form.get("scope", ""))
        body = self._token_body(self._new_access_token(mailbox, client_id, resource), resource)
        body["refresh_token"] = rt
        body["id_token"] = self._id_token(mailbox, client_id, nonce)
        if req.form.get("client_info") == "1":
            body["client_info"] = b64url(json.dumps(
                {"uid": oid(mailbox), "utid": self.tenant_id}).encode())
        return body

    def _client_credentials_grant(self, req: Request) -> JSONObject:
        client_id = self._authenticate_client(req, require_secret=True)
        scopes = req.form.get("scope", "").split()
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            raise OAuthError("invalid_scope", 1002012)
        token = self._new_access_token(None, client_id, frozenset(scopes))
        return self._token_body(token, frozenset(scopes))

    def _token_body(self, token: str, scopes: frozenset[str]) -> JSONObject:
        lifetime = self.access_token_lifetime
        return {"token_type": "Bearer", "scope": " ".join(sorted(scopes)), "expires_in": lifetime,
                "ext_expires_in": lifetime, "access_token": token}

    def _id_token(self, mailbox: str, client_id: str, nonce: str | None = None) -> str:
        return id_token(self.url, self.tenant_id, mailbox, client_id, int(self.clock()), nonce)

    def _error(self, req: Request, e: OAuthError) -> Reply:
        stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(self.clock()))
        trace, corr = str(uuid.uuid4()), req.headers.get("client-request-id") or str(uuid.uuid4())
        return Reply(e.status, {
            "error": e.error,
            "error_description": f"AADSTS{e.code}: {e.description} Trace ID: {trace} "
                                 f"Correlation ID: {corr} Timestamp: {stamp}",
            "error_codes": list(e.codes), "timestamp": stamp, "trace_id": trace,
            "correlation_id": corr, "error_uri": f"{self.url}/error?code={e.code}",
        }, {} if e.retry_after is None else {"Retry-After": str(e.retry_after)})

    def _for_dovecot(self, at: AccessToken | None, mailbox: str | None,
                     req: Request) -> TypeGuard[AccessToken]:
        service = req.headers.get("x-dovecot-auth-service", "")
        return at is not None and self._may_open(at, mailbox) and scope_allows(at, service)

    def _introspect(self, req: Request) -> Reply:
        with self._lock:
            self.introspections += 1
            at = self._access.get(req.form.get("token", ""))
            if at is None or at.mailbox is None or not self._for_dovecot(at, None, req):
                return Reply(200, {"active": False})
            return Reply(200, {"active": True, "username": at.mailbox, "email": at.mailbox,
                               "scope": " ".join(sorted(at.scopes)), "client_id": at.client_id,
                               "token_type": "Bearer", "exp": int(at.expires_at)})

    def _password_grant(self, req: Request) -> Reply:
        mailbox, token = req.form.get("username", ""), req.form.get("password", "")
        with self._lock:
            self.password_grants, at = self.password_grants + 1, self._access.get(token)
            if not self._for_dovecot(at, mailbox, req) or req.form.get("grant_type") != "password":
                return Reply(400, {"error": "invalid_grant"})
            expires_in = max(0, int(at.expires_at - self.clock()))
        return Reply(200, {"access_token": token, "token_type": "Bearer",
                           "expires_in": expires_in, "username": mailbox, "active": True})

    def _app(self, req: Request) -> Reply | None:
        time.sleep(self.delay)  # 0: no pause
        reply = route(self.routes, req)
        with self._lock:
            secret = "client_secret" in req.form or req.headers.get("authorization", "")[:6] == "Basic "
            self.request_log.append(LoggedRequest(req.path, req.form.get("grant_type"),
                                                  0 if reply is DROP else reply.status, secret))
        return reply

