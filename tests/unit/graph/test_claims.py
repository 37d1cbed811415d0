"""Mail.Send from a Graph token's claims: scp for delegated, roles for app-only."""
import base64
import json

import pytest

from relay365.graph.claims import claims, mail_send


def jwt(payload: object) -> str:
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJub25lIn0.{body}."


@pytest.mark.parametrize("payload, ok, says", [
    ({"scp": "Mail.Send Mail.ReadWrite"}, True, "ok (delegated Mail.Send, Mail.ReadWrite)"),
    ({"scp": "Mail.Send"}, True, "no Mail.ReadWrite"),
    ({"roles": ["Mail.Send"]}, True, "application Mail.Send"),
    ({"scp": "Mail.Read"}, False, "FAILED the Graph token carries no Mail.Send (scp: Mail.Read)"),
    ({"scp": ""}, False, "scp: -"),
    # app-only without the role: RBAC for Applications may still grant it, outside the token
    ({"roles": ["User.Read.All"]}, True, "no application Mail.Send in the token (roles: User.Read.All)"),
    ({}, True, "roles: -"),
    ({"roles": "Mail.Send"}, True, "RBAC for Applications"),  # not a list: not Graph's shape
])
def test_verdicts(payload, ok, says):
    got_ok, text = mail_send(jwt(payload))
    assert got_ok is ok and says in text


@pytest.mark.parametrize("token", ["opaque", "a.b", "a.!!!.c", "a.W10.c"])
def test_unreadable_tokens(token):
    assert claims(token) is None
    assert mail_send(token)[0] is True and "not checked" in mail_send(token)[1]
