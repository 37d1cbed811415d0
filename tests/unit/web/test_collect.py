"""The status page's account rows from the token manager's views (the pure part of collect)."""

from __future__ import annotations

from types import SimpleNamespace

from relay365.sessions import Recorder
from relay365.states import AccountState
from relay365.tokens.status import AccountView
from relay365.web.collect import _account

CONFIG = SimpleNamespace(source="/etc/relay365/config.yaml")


def view(**kw) -> AccountView:
    base = dict(mailbox="scanner@contoso.com", flow="refresh_token", state=AccountState.OK,
                code=None, error=None, action=None, expires_at=None, last_refresh=None,
                last_use=None)
    return AccountView(**{**base, **kw})


def row(v: AccountView):
    return _account(v, CONFIG, {}, Recorder(), 1_000_000.0)  # type: ignore[arg-type]


def test_via_says_which_way_the_account_sends_now():
    assert row(view()).via == "SMTP"
    assert row(view(send_via="graph", sending_via="graph")).via == "Graph"
    assert row(view(send_via="auto")).via == "SMTP (auto)"
    assert row(view(send_via="auto", sending_via="graph", graph_since=5.0)).via == "Graph (auto)"


def test_needs_auth_row_carries_the_fix_command_with_the_config_path():
    r = row(view(state=AccountState.NEEDS_AUTH, code="AADSTS70008",
                 action="re-authorise: relay365 auth scanner@contoso.com"))
    assert r.fix == "relay365 auth scanner@contoso.com -c /etc/relay365/config.yaml"
