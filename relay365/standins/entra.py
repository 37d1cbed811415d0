"""What the identity-platform stand-in remembers, and the shape of Entra ID's errors.

The records (`Client`, `User`, `RefreshToken`, `AuthCode`, `DeviceCode`, `AccessToken`) are the
state of `relay365.standins.fakeidp.FakeIdP`; `OAuthError` carries an AADSTS code whose
description, from `DESCRIPTIONS`, reads like Entra ID's, because msal passes error replies through
to its caller.
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

OUTLOOK = "https://outlook.office365.com"
DEFAULT_SCOPE = f"{OUTLOOK}/.default"
OIDC_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})

DESCRIPTIONS = {
    28000: "Provided value for the input parameter scope is not valid because it contains more "
           "than one resource.",
    65001: "The user or administrator has not consented to use the application.",
    70000: "Provided grant is invalid or malformed.",
    70003: "The app requested an unsupported grant type.",
    70008: "The provided authorization code or refresh token has expired due to inactivity.",
    7000222: "The provided client secret keys for the app are expired. Create new keys for your "
             "app, or consider using certificate credentials for added security.",
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
    700025: "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
    7000218: "The request body must contain the following parameter: 'client_assertion' or "
    "'client_secret'.",
}


@dataclass(frozen=True)
class LoggedRequest:
    path: str
    grant_type: str | None
    status: int  # 0 when the connection was dropped
    with_secret: bool = False  # the client authenticated with its secret (a confidential client)


@dataclass(frozen=True)
class Client:
    secret: str | None
    app_mailboxes: frozenset[str]
    redirect_uris: frozenset[str] | None = None  # None: any redirect URI is registered
    # "Allow public client flows": a registration with a secret may also run the device-code
    # flow without it; the refresh tokens it gets are then redeemed without the secret too
    public_flows: bool = False
    roles: frozenset[str] = frozenset({"Mail.Send"})  # application permissions (Graph's `roles`)
    secret_expires_at: float | None = None  # then the secret is refused: AADSTS7000222
    # delegated permissions an admin consented to for every user ("Grant admin consent"): a
    # refresh token of this app redeems for them too, not only for what its sign-in asked
    admin_consent: frozenset[str] = frozenset()


@dataclass(frozen=True)
class User:
    """A directory user whose sign-in name (`upn`) is not its only address: `mail` is its primary
    SMTP address, `aliases` its other proxy addresses. Users nobody added are `User(upn, upn)`."""
    upn: str
    mail: str
    aliases: tuple[str, ...] = ()

    def owns(self, address: str) -> bool:
        return address.lower() in {a.lower() for a in (self.upn, self.mail, *self.aliases)}

    def profile(self) -> dict[str, object]:
        """What Graph's `GET /me?$select=userPrincipalName,mail,proxyAddresses` answers."""
        return {"userPrincipalName": self.upn, "mail": self.mail,
                "proxyAddresses": [f"SMTP:{self.mail}", *(f"smtp:{a}" for a in self.aliases)]}


@dataclass(frozen=True)
class RefreshToken:
    mailbox: str
    client_id: str | None  # None: any registered client may redeem it
    scopes: frozenset[str] | None  # None: any scope
    public: bool = False  # from a public client flow: redeemed without a secret (else AADSTS700025)


@dataclass(frozen=True)
class AuthCode:
    mailbox: str
    client_id: str
    redirect_uri: str
    challenge: str
    scopes: frozenset[str]
    nonce: str | None
    expires_at: float


@dataclass
class DeviceCode:
    client_id: str
    scopes: frozenset[str]
    user_code: str
    expires_at: float
    mailbox: str | None = None  # set when approved
    declined: bool = False


@dataclass(frozen=True)
class AccessToken:
    mailbox: str | None  # None for app-only tokens
    client_id: str
    scopes: frozenset[str]
    expires_at: float


class OAuthError(Exception):
    def __init__(self, error: str, code: int | tuple[int, ...], status: int = 400,
                 description: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(error)
        self.retry_after = retry_after
        self.codes = code if isinstance(code, tuple) else (code,)
        self.error, self.code, self.status = error, self.codes[0], status
        self.description = description or DESCRIPTIONS.get(self.code, "Injected failure.")


MAIL_RESOURCES = ("https://outlook.", "https://partner.outlook.")


def mint(length: int, issuer: str, mailbox: str | None, client: Client | None, client_id: str,
         scopes: frozenset[str], now: float) -> str:
    """A new access token: for Office 365 mail an opaque string of `length` (Exchange's are
    opaque to clients), for any other resource (Graph) an unsigned JWT with Entra's `aud`, `scp`
    (delegated) or `roles` (app-only) claims, which `relay365 check --upstream` reads."""
    if not scopes or any(s.startswith(MAIL_RESOURCES) for s in scopes):
        return secrets.token_urlsafe(length)[:length]
    claims: dict[str, object] = {
        "aud": next(iter(scopes)).rpartition("/")[0], "iss": issuer, "iat": int(now),
        "exp": int(now) + 3600, "appid": client_id, "uti": secrets.token_urlsafe(16)}
    if mailbox is None:
        claims["roles"] = sorted(client.roles) if client else []
    else:
        claims["upn"], claims["scp"] = mailbox, " ".join(sorted(s.rpartition("/")[2] for s in scopes))
    header = {"typ": "JWT", "alg": "none"}
    return ".".join([b64url(json.dumps(header).encode()), b64url(json.dumps(claims).encode()), ""])


def id_token(issuer: str, tenant_id: str, mailbox: str, client_id: str, now: int,
             nonce: str | None = None) -> str:
    """An unsigned JWT-shaped id_token for the user `mailbox` (its UPN: `preferred_username`)."""
    claims = {"aud": client_id, "iss": f"{issuer}/{tenant_id}/v2.0", "iat": now,
              "nbf": now, "exp": now + 3600, "name": mailbox.split("@")[0],
              "oid": oid(mailbox), "preferred_username": mailbox,
              "sub": b64url(uuid.uuid5(uuid.NAMESPACE_URL, client_id + mailbox).bytes),
              "tid": tenant_id, "uti": secrets.token_urlsafe(16), "ver": "2.0",
              **({"nonce": nonce} if nonce else {})}
    return ".".join([b64url(json.dumps({"typ": "JWT", "alg": "none"}).encode()),
                     b64url(json.dumps(claims).encode()), ""])


def token_scopes(consented: frozenset[str] | None, requested: str) -> frozenset[str]:
    """The scopes of an access token: those asked for at the token endpoint (else every one
    consented), which must be consented (AADSTS65001) and of one resource (AADSTS28000). With
    none asked for and several resources consented (a device code), the first one's."""
    wanted = frozenset(requested.split()) - OIDC_SCOPES
    if consented is not None and not wanted <= consented:
        raise OAuthError("invalid_grant", 65001)
    scopes = wanted or consented or frozenset()
    resources = sorted({s.rpartition("/")[0] for s in scopes if "/" in s})
    if len(resources) > 1:
        if wanted:
            raise OAuthError("invalid_scope", 28000)
        scopes = frozenset(s for s in scopes if s.rpartition("/")[0] == resources[0])
    return scopes


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def redirect_registered(client: Client, uri: str) -> bool:
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


def oid(mailbox: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "mailbox:" + mailbox.lower()))


# Exchange Online checks the permission per protocol: a delegated token needs the protocol's scope,
# an app-only one (scope <resource>/.default) the app role, which the fake grants every app.
_SERVICE_SCOPES = {"pop3": "POP.AccessAsUser.All", "imap": "IMAP.AccessAsUser.All"}


def scope_allows(at: AccessToken | None, service: str) -> bool:
    """May `at` be used for Dovecot's `service` (X-Dovecot-Auth-Service)? Unknown services pass."""
    needed = _SERVICE_SCOPES.get(service.lower())
    if at is None or needed is None or not at.scopes:
        return at is not None
    if any(s.endswith("/.default") for s in at.scopes):
        return True
    return any(s.rsplit("/", 1)[-1] == needed for s in at.scopes)
