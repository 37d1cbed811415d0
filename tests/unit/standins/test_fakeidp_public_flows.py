"""The fake identity platform's FullAccess and 'Allow public client flows' rules, with real msal."""

from __future__ import annotations

import msal
import pytest

from relay365.standins import make_test_certs
from relay365.standins.fakeidp import FakeIdP
from tests.unit.standins.test_fakeidp import CASession

SCOPE = ["https://outlook.office.com/IMAP.AccessAsUser.All"]


@pytest.fixture
def idp(tmp_path):
    certs = make_test_certs(tmp_path)
    with FakeIdP(certs.cert_file, certs.key_file) as server:
        yield server, str(certs.ca_file)
        assert server.errors == []


def _refresh(idp: FakeIdP, ca: str, rt: str, secret: str | None) -> dict:
    http = CASession(ca)
    kw = dict(authority=f"{idp.url}/t", instance_discovery=False, http_client=http)
    app = (msal.ConfidentialClientApplication("c", client_credential=secret, **kw) if secret
           else msal.PublicClientApplication("c", **kw))
    return app.acquire_token_by_refresh_token(rt, SCOPE)


def test_public_tokens_are_refreshed_without_the_secret_only(idp):
    server, ca = idp
    server.add_client("c", secret="s", public_flows=True)
    with server._lock:  # a token as the device flow on a confidential app leaves it
        rt = server._user_tokens(_Req(), "a@x.test", "c", frozenset(SCOPE), public=True)["refresh_token"]
    refused = _refresh(server, ca, rt, "s")
    assert refused["error"] == "invalid_client" and 700025 in refused["error_codes"]
    assert "access_token" in _refresh(server, ca, rt, None)
    assert [r.with_secret for r in server.request_log if r.grant_type == "refresh_token"] == [True, False]


def test_full_access_lets_a_delegates_token_open_the_shared_mailbox(idp):
    server, _ca = idp
    server.add_client("c")
    with server._lock:
        token = server._new_access_token("agent@x.test", "c", frozenset(SCOPE))
    assert server.valid_token(token, "agent@x.test") and not server.valid_token(token, "help@x.test")
    server.grant_full_access("HELP@x.test", "Agent@x.test")
    assert server.valid_token(token, "help@x.test")
    server.grant_full_access("help@x.test", "agent@x.test", granted=False)
    assert not server.valid_token(token, "help@x.test")


class _Req:
    def __init__(self) -> None:
        self.form: dict[str, str] = {}
        self.headers: dict[str, str] = {}
