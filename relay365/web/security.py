"""The admin session and CSRF protection of the status page: pure functions of a key and `now`.

Theory of operation. Without `http.admin_token` there is no key and the page is read-only: every
action is refused. With it, an operator logs in once by posting the token (compared in constant
time); the answer sets a cookie `<issued>.<mac>` - HttpOnly, SameSite=Strict, Path=/ - valid for
`SESSION_LIFETIME`. The MAC key is derived from the admin token and a random salt made at startup,
so changing the token or restarting the daemon ends every session, and nothing is stored.

Each form on the page carries a CSRF token, a MAC of the cookie under the same key: a forged
cross-site POST has neither the cookie (SameSite=Strict keeps the browser from sending it) nor
the token (another origin cannot read the page). A browser's `Sec-Fetch-Site: cross-site` or
`same-site` is refused outright as a third line. Scripts skip the cookie and send
`Authorization: Bearer <admin token>`, which no browser attaches on its own.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from ..secret import Secret

SESSION_LIFETIME = 8 * 3600.0  # a working day; then log in again
COOKIE = "relay365_admin"


def derive_key(admin_token: Secret | None, salt: bytes) -> bytes | None:
    """The MAC key for sessions and CSRF tokens; None (read-only) without an admin token."""
    if not admin_token:
        return None
    return hmac.new(salt, b"relay365-status:" + admin_token.reveal().encode(), hashlib.sha256).digest()


def _mac(key: bytes, what: str) -> str:
    return hmac.new(key, what.encode(), hashlib.sha256).hexdigest()


def token_matches(admin_token: Secret | None, given: str) -> bool:
    """Constant-time comparison of what was posted or sent as Bearer with the admin token."""
    if not admin_token or not given:
        return False
    return hmac.compare_digest(admin_token.reveal().encode(), given.encode())


def issue_session(key: bytes, now: float) -> str:
    issued = str(int(now))
    return f"{issued}.{_mac(key, 'session:' + issued)}"


def session_valid(key: bytes | None, cookie: str | None, now: float) -> bool:
    if key is None or not cookie or "." not in cookie:
        return False
    issued, _, mac = cookie.partition(".")
    if not issued.isdigit() or not hmac.compare_digest(mac, _mac(key, "session:" + issued)):
        return False
    return 0 <= now - int(issued) < SESSION_LIFETIME


def csrf_token(key: bytes, cookie: str) -> str:
    return _mac(key, "csrf:" + cookie)


def csrf_valid(key: bytes | None, cookie: str | None, given: str | None) -> bool:
    if key is None or not cookie or not given:
        return False
    return hmac.compare_digest(csrf_token(key, cookie), given)


def cross_site(headers: Mapping[str, str]) -> bool:
    """The browser says the request comes from another site (Fetch Metadata)."""
    return headers.get("sec-fetch-site", "").lower() in ("cross-site", "same-site")


def cookies(header: str | None) -> dict[str, str]:
    """`Cookie:` header -> {name: value}; malformed pairs are skipped."""
    out: dict[str, str] = {}
    for part in (header or "").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name:
            out.setdefault(name, value)
    return out


def set_cookie(value: str, *, secure: bool, max_age: float = SESSION_LIFETIME) -> str:
    """The Set-Cookie header value; `Secure` when the page is reached over HTTPS (a proxy)."""
    flags = f"; Max-Age={int(max_age)}; Path=/; HttpOnly; SameSite=Strict"
    return f"{COOKIE}={value}{flags}{'; Secure' if secure else ''}"
