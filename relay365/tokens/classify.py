"""Turn msal's result dicts into `TokenError`s: transient, or what the operator must do.

msal returns `{"error": ..., "error_description": "AADSTS70008: ...", "error_codes": [70008]}`
instead of raising. This module is the one place that reads those dicts. A code we do not know and
that is not a server-side problem is treated as needing the operator: retrying a rejected grant
forever only hides the problem (and burns the identity platform's rate limit).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..errors import TokenError

REAUTH = "re-authorise the mailbox (relay365 auth MAILBOX -c CONFIG) to get a new refresh token"

# AADSTS code -> what the operator should do.
ACTIONS: dict[int, str] = {
    70000: "the refresh token is invalid, revoked or already used; " + REAUTH,
    70008: "the refresh token expired (90 days unused, or revoked); " + REAUTH,
    700082: "the refresh token expired from inactivity; " + REAUTH,
    700084: "the refresh token of a single-page app expired; register the app as a public/web "
            "client and " + REAUTH,
    50173: "the grant was revoked (password change or reset); " + REAUTH,
    70043: "a Conditional Access sign-in frequency policy expired the token; exclude the relay's "
           "app or " + REAUTH,
    50076: "multi-factor authentication is now required (Conditional Access); " + REAUTH
           + " interactively",
    50079: "the user must enrol in multi-factor authentication; " + REAUTH + " interactively",
    65001: "the app lacks consent for the requested permissions; grant admin consent for "
           "IMAP.AccessAsUser.All, POP.AccessAsUser.All and SMTP.Send in Entra ID",
    53003: "blocked by a Conditional Access policy; allow the relay's app or address in the policy",
    50057: "the user account is disabled in Entra ID",
    50034: "the user does not exist in this tenant; check the mailbox and the app's tenant",
    7000215: "the client secret is wrong (use the secret's Value, not its ID); fix apps.*.client_secret",
    7000222: "the client secret expired; create a new one in the app registration and update "
             "apps.*.client_secret",
    700016: "the app (client_id) was not found in this tenant; check apps.*.client_id and tenant",
    90002: "the tenant was not found; check apps.*.tenant",
    7000218: "the app is public but no client secret was sent; add apps.*.client_secret or enable "
             "'Allow public client flows' in the app registration",
    700024: "the client assertion is not valid; check the app's credentials",
    700025: "the refresh token belongs to a public client (device-code sign-in) but a client "
            "secret was sent; use an app without client_secret for this mailbox, or " + REAUTH
            + " with the auth-code flow",
    50194: "the app is not multi-tenant; use its tenant id instead of common/organizations",
    500011: "the resource (Office 365 Exchange Online) is not available in the tenant; check the "
            "tenant and the cloud",
    1002012: "an invalid scope was requested; check accounts[].scopes",
    70011: "an invalid scope was requested; check accounts[].scopes",
    700027: "the client assertion signature failed validation; check the app's credentials",
}
# Server side or throttling: retry with backoff.
TRANSIENT_CODES = {90024, 90033, 50033, 50196, 90006, 80012, 40001, 50001}
TRANSIENT_ERRORS = {"temporarily_unavailable", "server_error", "slow_down", "network"}
NEEDS_AUTH_ERRORS = {"invalid_grant", "interaction_required", "consent_required", "login_required"}


def first_code(result: Mapping[str, object]) -> int | None:
    codes = result.get("error_codes")
    # msal passes on whatever JSON the endpoint (or a proxy in front of it) sent: check the shape
    if isinstance(codes, list) and codes and type(codes[0]) is int:
        return codes[0]
    m = re.match(r"AADSTS(\d+)", str(result.get("error_description", "")))
    return int(m.group(1)) if m else None


def classify(account: str, result: Mapping[str, object], *, status: int | None = None) -> TokenError:
    """Classify one failed token response (`result` lacks an access_token)."""
    error = str(result.get("error") or "unknown_error")
    code = first_code(result)
    description = str(result.get("error_description", "")).splitlines()[0][:300] if result.get(
        "error_description") else ""
    transient = (error in TRANSIENT_ERRORS or code in TRANSIENT_CODES
                 or (status is not None and (status >= 500 or status == 429)))
    if transient:
        action = "the identity platform is unavailable or throttling; relay365 retries with backoff"
    elif code in ACTIONS:
        action = ACTIONS[code]
    elif error in NEEDS_AUTH_ERRORS:
        action = REAUTH
    else:
        action = "check the app registration and the account settings; the description names the cause"
    return TokenError(account=account, error=error, code=code, transient=transient, action=action,
                      description=description)


def network_error(account: str, exc: BaseException) -> TokenError:
    """A failure to talk to the token endpoint at all: always transient."""
    return TokenError(account=account, error="network", code="network", transient=True,
                      action="cannot reach the token endpoint; check DNS, proxy and firewall; "
                             "relay365 retries with backoff",
                      description=f"{type(exc).__name__}: {str(exc)[:200]}")


def service_error(account: str, exc: BaseException) -> TokenError:
    """The token endpoint answered, but with a server error or something unreadable: transient."""
    return TokenError(account=account, error="server_error", code="server_error", transient=True,
                      action="the identity platform answered with a server error; relay365 retries "
                             "with backoff",
                      description=f"{type(exc).__name__}: {str(exc)[:200]}")
