"""`relay365 auth` when the sign-in name is not the mailbox: the mailbox is an alias of the user
who signs in (UPN j.smith@, mailbox scanner@ as a proxy address). The real CLI asks the Graph
stand-in's `GET /me`, stores the token, logs in upstream (real Postfix and Dovecot) as the mailbox,
and the running daemon relays with it; a user who does not own the mailbox is refused."""

from __future__ import annotations

import uuid

import pytest

from relay365.standins.fakegraph import FakeGraph
from tests.integration.conftest import DOMAIN, MAILBOX
from tests.integration.test_onboarding import (
    AUTHORIZE,
    AuthRun,
    browser,
    no_seed_config,
    send_once_the_token_is_there,
)

pytestmark = pytest.mark.integration

UPN = f"j.smith@{DOMAIN}"
# an app of its own: the admin consent to User.Read stays out of the session's other tests
CLIENT, SECRET = "relay365-alias", "alias-secret"


@pytest.fixture(scope="module")
def graph(pki, idp):
    with FakeGraph(pki.cert_file, pki.key_file, check_token=idp.valid_token,
                   token_scopes=idp.token_scopes, profile=idp.user_profile) as server:
        yield server


@pytest.fixture
def alias_setup(tmp_path, pki, idp, upstream, graph):
    """The README's app registration (User.Read, admin consent), j.smith owning scanner@ as an alias."""
    graph.reset()
    idp.add_client(CLIENT, secret=SECRET)
    idp.grant_admin_consent(CLIENT, {f"{graph.url}/User.Read"})
    idp.add_user(UPN, addresses=[MAILBOX])
    proc = no_seed_config(tmp_path, pki, idp, upstream)
    proc.config["apps"]["default"].update(client_id=CLIENT, client_secret=SECRET)
    proc.config["upstream"]["graph"] = {"base_url": graph.base_url}
    proc.write_config()
    yield proc
    idp.add_user(UPN)  # j.smith's only address is the UPN again
    assert not graph.errors


def test_the_owner_of_the_mailbox_signs_in_and_the_daemon_relays(alias_setup, pki, idp, graph,
                                                                  upstream):
    relay = alias_setup.start()
    try:
        idp.sign_in_as = UPN
        run = AuthRun(alias_setup.config_path)
        run.answer(browser(pki, run.wait_line(AUTHORIZE).group(1)))
        code, out, err = run.finish()
        assert code == 0, out + err
        assert f"Signed in as {UPN}; Microsoft Graph lists {MAILBOX} among its addresses" in out
        assert "Stored a refresh token" in out
        line = next(ln for ln in out.splitlines() if ln.startswith(MAILBOX))
        assert "smtp: ok" in line and "imap: ok" in line  # upstream logins as the mailbox
        assert [(r.method, r.path, r.status) for r in graph.requests] == [("GET", "/v1.0/me", 200)]
        send_once_the_token_is_there(relay, upstream, f"after alias auth {uuid.uuid4()}")
    finally:
        relay.stop()


def test_someone_who_does_not_own_the_mailbox_is_refused(alias_setup, pki, idp, graph, tmp_path):
    intern = f"intern@{DOMAIN}"
    idp.sign_in_as = intern
    run = AuthRun(alias_setup.config_path, "--no-verify")
    run.answer(browser(pki, run.wait_line(AUTHORIZE).group(1)))
    code, out, err = run.finish()
    assert code == 1, out + err
    assert f"signed in as {intern}, but the account is {MAILBOX}; nothing was stored" in err
    assert f"{MAILBOX} is not one of them" in err and "Traceback" not in err
    assert [(r.path, r.status) for r in graph.requests] == [("/v1.0/me", 200)]
    assert not (tmp_path / "state" / "tokens.enc").exists()
