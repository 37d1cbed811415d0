"""The interactive sign-in flows of the identity-platform stand-in, which `relay365 auth` drives.

`/{tenant}/oauth2/v2.0/authorize` is the browser's side of the code flow: it "signs in" as
`sign_in_as` (default: the `login_hint`) and redirects back with a code, or with `authorize_error`,
checking the app's registered `redirect_uris` as Entra ID does. The `authorization_code` grant
checks PKCE (S256), and its codes are single-use, bound to app and redirect URI, and dead after
`auth_code_lifetime`. `/{tenant}/oauth2/v2.0/devicecode` starts the device-code flow, whose grant
answers `authorization_pending` until a test calls `approve_device` (or `decline_device`), and
`expired_token` after `device_code_lifetime`.

Who signs in is a user named by a UPN; `add_user` gives a user addresses beyond its UPN (a
primary SMTP address, aliases), which its tokens then open as well, and `user_profile` is what
Graph's `GET /me` says of a user. `grant_admin_consent` is an admin's consent to delegated
permissions for every user of an app: its refresh tokens redeem for them without having asked.

`SignInFlows` is a mixin of `relay365.standins.fakeidp.FakeIdP`; `_IdP` names what it uses there.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol
from urllib.parse import urlencode

from .entra import (
    DESCRIPTIONS,
    AuthCode,
    Client,
    DeviceCode,
    OAuthError,
    User,
    b64url,
    redirect_registered,
)
from .jsonhttps import JSONObject, Reply, Request


class _IdP(Protocol):
    _lock: threading.Lock
    _clients: dict[str, Client]
    _codes: dict[str, AuthCode]
    _devices: dict[str, DeviceCode]
    _users: dict[str, User]
    clock: Callable[[], float]
    sign_in_as: str | None
    authorize_error: tuple[str, int] | None
    authorize_requests: list[dict[str, str]]
    auth_code_lifetime: int
    device_code_lifetime: int
    device_interval: int

    @property
    def url(self) -> str: ...

    def _error(self, req: Request, e: OAuthError) -> Reply: ...

    def _authenticate_client(self, req: Request, require_secret: bool = False,
                             public: bool = False) -> str: ...

    def _user_tokens(self, req: Request, mailbox: str, client_id: str, scopes: frozenset[str],
                     nonce: str | None = None, public: bool = False) -> JSONObject: ...


def _pending(devices: dict[str, DeviceCode], user_code: str) -> DeviceCode:
    for dc in devices.values():
        if dc.user_code == user_code:
            return dc
    raise KeyError(f"no pending device code {user_code!r}")


class SignInFlows:
    def set_app_roles(self: _IdP, client_id: str, roles: set[str]) -> None:
        """The application permissions an app was granted (the `roles` of its app-only tokens)."""
        with self._lock:
            self._clients[client_id] = replace(self._clients[client_id], roles=frozenset(roles))

    def grant_admin_consent(self: _IdP, client_id: str, scopes: set[str]) -> None:
        """Delegated permissions (`https://graph.microsoft.com/User.Read`) consented for every user."""
        with self._lock:
            client = self._clients[client_id]
            self._clients[client_id] = replace(client, admin_consent=frozenset(scopes))

    def add_user(self: _IdP, upn: str, addresses: list[str] | tuple[str, ...] = (), *,
                 mail: str | None = None) -> None:
        """A user signing in as `upn` whose mailbox also has `addresses` (proxy addresses, e.g.
        an alias), and `mail` as its primary SMTP address (default: the UPN)."""
        with self._lock:
            self._users[upn.lower()] = User(upn, mail or upn, tuple(addresses))

    def user_profile(self: _IdP, upn: str) -> dict[str, object]:
        """Graph's `GET /me` for the user `upn` (userPrincipalName, mail, proxyAddresses)."""
        with self._lock:
            return self._users.get(upn.lower(), User(upn, upn)).profile()

    def _user(self: _IdP, upn: str) -> User:
        """(Under `_lock`.) The directory entry of the user `upn`."""
        return self._users.get(upn.lower(), User(upn, upn))

    def approve_device(self: _IdP, user_code: str, as_user: str) -> None:
        """The user entered `user_code` at the verification page and signed in as `as_user`."""
        with self._lock:
            _pending(self._devices, user_code).mailbox = as_user

    def decline_device(self: _IdP, user_code: str) -> None:
        """The user entered `user_code` and then refused the sign-in."""
        with self._lock:
            _pending(self._devices, user_code).declined = True

    def _auth_code_grant(self: _IdP, req: Request) -> JSONObject:
        client_id = self._authenticate_client(req)
        code = self._codes.pop(req.form.get("code", ""), None)  # single use
        if code is None or code.client_id != client_id:
            raise OAuthError("invalid_grant", 54005)
        if code.expires_at <= self.clock():
            raise OAuthError("invalid_grant", 70008)
        if req.form.get("redirect_uri") != code.redirect_uri:
            raise OAuthError("invalid_grant", 50011)
        verifier = req.form.get("code_verifier", "")
        challenge = b64url(hashlib.sha256(verifier.encode()).digest())
        if not verifier or not hmac.compare_digest(challenge, code.challenge):
            raise OAuthError("invalid_grant", 501481)
        return self._user_tokens(req, code.mailbox, client_id, code.scopes, code.nonce)

    def _device_code_grant(self: _IdP, req: Request) -> JSONObject:
        client_id = self._authenticate_client(req, public=True)
        dc = self._devices.get(req.form.get("device_code", ""))
        if dc is None or dc.client_id != client_id:
            raise OAuthError("invalid_grant", 70000)
        if dc.expires_at <= self.clock():
            del self._devices[req.form["device_code"]]
            raise OAuthError("expired_token", 70019)
        if dc.declined:
            del self._devices[req.form["device_code"]]
            raise OAuthError("authorization_declined", 70000,
                              description="The end user denied the authorization request.")
        if dc.mailbox is None:
            raise OAuthError("authorization_pending", 70016)
        del self._devices[req.form["device_code"]]
        client = self._clients[client_id]  # a confidential app run as a public one (no secret)?
        public = client.public_flows and client.secret is not None
        return self._user_tokens(req, dc.mailbox, client_id, dc.scopes, public=public)

    def _authorize(self: _IdP, req: Request) -> Reply:
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
            return self._error(req, OAuthError("unauthorized_client", 700016))
        if not redirect_registered(client, redirect):
            return self._error(req, OAuthError("invalid_request", 50011))
        fragment = q.get("response_mode") == "fragment"
        state = q.get("state")
        echo = {"state": state} if state is not None else {}

        def back(params: dict[str, str]) -> Reply:
            query = urlencode({**params, **echo})
            if fragment:
                return Reply(302, None, {"Location": f"{redirect}#{query}"})
            return Reply(302, None, {"Location": redirect + ("&" if "?" in redirect else "?") + query})

        def refuse(error: str, code: int, why: str | None = None) -> Reply:
            return back({"error": error, "error_description":
                         f"AADSTS{code}: {why or DESCRIPTIONS.get(code, 'Injected failure.')}"})

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
            self._codes[code] = AuthCode(mailbox, q["client_id"], redirect, q["code_challenge"],
                                          frozenset(q["scope"].split()), q.get("nonce"),
                                          self.clock() + self.auth_code_lifetime)
        return back({"code": code, "session_state": str(uuid.uuid4())})

    def _devicecode(self: _IdP, req: Request) -> Reply:
        client_id = req.form.get("client_id", "")
        with self._lock:
            if client_id not in self._clients:
                return self._error(req, OAuthError("invalid_client", 700016))
            user_code = "".join(secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(9))
            device_code = secrets.token_urlsafe(64)
            self._devices[device_code] = DeviceCode(
                client_id, frozenset(req.form.get("scope", "").split()), user_code,
                self.clock() + self.device_code_lifetime)
        verify = f"{self.url}/devicelogin"
        return Reply(200, {
            "user_code": user_code, "device_code": device_code, "verification_uri": verify,
            "expires_in": self.device_code_lifetime, "interval": self.device_interval,
            "message": f"To sign in, use a web browser to open the page {verify} and enter the "
                       f"code {user_code} to authenticate."})
