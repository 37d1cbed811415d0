"""`relay365 check --upstream` for accounts that send via Graph: a Graph token is fetched and its
claims say whether it carries Mail.Send (scp for delegated, roles for app-only); nothing is sent."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.integration import test_graph_relay as base
from tests.integration.conftest import CLIENT_ID, DOMAIN, MAILBOX

pytestmark = pytest.mark.integration
graph, _graph_clean = base.graph, base._graph_clean
APP = f"app@{DOMAIN}"


def check(relay_config_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relay365", "check", "-c", str(relay_config_path),
                           "--upstream"], capture_output=True, text=True, timeout=60)


def line_of(result: subprocess.CompletedProcess, mailbox: str) -> str:
    return next(ln for ln in result.stdout.splitlines() if ln.startswith(mailbox))


def write(tmp_path, config):
    from tests.support.relayproc import RelayProcess

    proc = RelayProcess(tmp_path, config)
    proc.write_config()
    return proc.config_path


def test_delegated_graph_account_shows_mail_send_and_sends_nothing(tmp_path, pki, idp, upstream, graph):
    path = write(tmp_path, base.graph_config(tmp_path, pki, idp, upstream, graph))
    result = check(path)
    assert result.returncode == 0, result.stdout + result.stderr
    line = line_of(result, MAILBOX)
    assert "graph: ok (delegated Mail.Send, Mail.ReadWrite)" in line
    assert "smtp: not used (send_via: graph)" in line
    assert not graph.requests  # the check reads the token's claims; Graph is never called


def test_auto_account_checks_smtp_and_graph(tmp_path, pki, idp, upstream, graph):
    path = write(tmp_path, base.graph_config(tmp_path, pki, idp, upstream, graph, send_via="auto"))
    line = line_of(check(path), MAILBOX)
    assert "smtp: ok" in line and "graph: ok (delegated Mail.Send" in line


def test_delegated_token_without_mail_send_fails_the_check(tmp_path, pki, idp, upstream, graph):
    config = base.graph_config(tmp_path, pki, idp, upstream, graph)
    # a refresh token whose Graph consent lacks Mail.Send: Entra refuses to redeem it for the
    # scopes asked (AADSTS65001), and the check says what to do
    config["accounts"][0]["refresh_token"] = idp.issue_refresh_token(MAILBOX, scopes=[
        *(f"https://outlook.office.com/{s}" for s in ("IMAP.AccessAsUser.All", "POP.AccessAsUser.All",
                                                      "SMTP.Send")), f"{graph.url}/Mail.ReadWrite"])
    result = check(write(tmp_path, config))
    assert result.returncode == 1
    assert "graph: FAILED token invalid_grant (AADSTS65001)" in line_of(result, MAILBOX)


def test_app_only_graph_account_reads_roles(tmp_path, pki, idp, upstream, graph):
    config = base.graph_config(tmp_path, pki, idp, upstream, graph)
    config["accounts"] = [{"mailbox": APP, "flow": "client_credentials", "send_via": "graph"}]
    config["users"][0]["mailbox"] = APP
    path = write(tmp_path, config)
    assert "graph: ok (application Mail.Send" in line_of(check(path), APP)
    idp.set_app_roles(CLIENT_ID, set())  # the admin never granted Graph's application Mail.Send
    try:
        result = check(path)
    finally:
        idp.set_app_roles(CLIENT_ID, {"Mail.Send"})
    line = line_of(result, APP)
    assert "graph: no application Mail.Send in the token (roles: -)" in line
    assert "RBAC for Applications" in line  # which may grant it outside the token
    assert not graph.requests
