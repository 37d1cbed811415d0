"""Does a Graph access token carry `Mail.Send`? Read from its claims, sending nothing. Pure code.

Graph's access tokens are JWTs; their payload says what Entra granted: `scp` (space-separated)
for a delegated token, `roles` (a list) for an app-only one. The claims are read, not verified:
this is a diagnostic for `relay365 check --upstream`, and Graph checks the signature itself.
"""

from __future__ import annotations

import base64
import json
from typing import Any

MAIL_SEND, MAIL_READWRITE = "Mail.Send", "Mail.ReadWrite"


def claims(token: str) -> dict[str, Any] | None:
    """The JWT payload of `token`; None when it is not a readable JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def mail_send(token: str) -> tuple[bool, str]:
    """(may send, what the check line says)."""
    found = claims(token)
    if found is None:
        return True, "token ok, claims not readable (not a JWT): Mail.Send not checked"
    scp = str(found.get("scp", "")).split()
    roles = [str(r) for r in found.get("roles", [])] if isinstance(found.get("roles"), list) else []
    if MAIL_SEND in scp:
        if MAIL_READWRITE not in scp:
            return True, ("ok (delegated Mail.Send; no Mail.ReadWrite: messages over 3 MB and "
                          "save_to_sent: false cannot be sent)")
        return True, "ok (delegated Mail.Send, Mail.ReadWrite)"
    if MAIL_SEND in roles:
        return True, ("ok (application Mail.Send: every mailbox unless scoped with Exchange RBAC "
                      "for Applications)")
    if "scp" not in found:
        # app-only: Exchange RBAC for Applications grants Mail.Send outside the token, so a
        # token without the role may still send for the mailboxes in the management scope
        return True, (f"no application Mail.Send in the token (roles: {', '.join(roles) or '-'}): "
                      f"sending works only if Exchange RBAC for Applications assigns the app "
                      f"'Application Mail.Send' for this mailbox (Test-ServicePrincipalAuthorization)")
    return False, (f"FAILED the Graph token carries no Mail.Send (scp: {' '.join(scp) or '-'}): add "
                   f"the delegated Microsoft Graph permission Mail.Send (and Mail.ReadWrite), grant "
                   f"admin consent, run relay365 auth")
