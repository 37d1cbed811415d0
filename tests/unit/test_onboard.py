"""`relay365 auth` in-process (`relay365.onboard.run_auth`) against the fake identity platform.

The test is the operator's terminal and the browser: `Terminal` collects what run_auth prints and
answers its prompts; `browse` opens the authorize URL the way a browser would and returns where the
identity platform redirects. Upstream verification is off here (tests/integration covers it with
real Dovecot and Postfix); what is checked is the sign-in itself, what gets stored, and that every
failure is one clear message.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import re
import socket
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from relay365.config import load_config
from relay365.onboard import run_auth
from relay365.standins.fakeidp import FakeIdP
from relay365.tokens.store import TokenStore
from tests.support.upstream import free_port

MAILBOX = "scanner@example.test"
AUTHORIZE = r"(https://127\.0\.0\.1:\d+/\S+/oauth2/v2\.0/authorize\?\S+)"
NATIVE = "https://login.microsoftonline.com/common/oauth2/nativeclient"


@pytest.fixture
def idp(certs, clock):
    with FakeIdP(certs.cert_file, certs.key_file, clock=clock) as idp:
        idp.add_client("conf-app", "s3cret", redirect_uris=["http://localhost", NATIVE])
        idp.add_client("public-app", redirect_uris=["http://localhost", NATIVE])
        yield idp
        assert idp.errors == []


# Graph, when a sign-in name is not the mailbox: the stand-in, or (by default) a port where nothing
# listens, so that no test ever sends a token to the real graph.microsoft.com
NO_GRAPH = "https://127.0.0.1:9/v1.0"


def make_config(tmp_path, idp, certs, *, cloud="global", tenant="contoso.test", client="conf-app",
                mailbox=MAILBOX, graph_url=NO_GRAPH, secret=None):
    secret = secret or ("s3cret" if client == "conf-app" else None)
    secret = f"client_secret: {secret}, " if secret else ""
    path = tmp_path / "relay.yaml"
    path.write_text(f"""
state_dir: state
apps:
  default: {{client_id: {client}, {secret}tenant: {tenant}, cloud: {cloud}, authority: "{idp.url}",
             ca_file: "{certs.ca_file}"}}
upstream: {{ca_file: "{certs.ca_file}", graph: {{base_url: "{graph_url}"}}}}
accounts: [{{mailbox: {mailbox}}}]
smtp: {{unauthenticated: [{{network: 10.0.0.0/8, mailbox: {mailbox}}}]}}
""")
    return load_config(path)


class Terminal:
    """What run_auth prints (`out`) and, as `stdin`, what the operator types in answer."""

    def __init__(self, answer=None) -> None:
        self.text = ""
        self._changed = threading.Condition()
        self._answer = answer

    def write(self, s: str) -> int:
        with self._changed:
            self.text += s
            self._changed.notify_all()
        return len(s)

    def flush(self) -> None:
        pass

    def readline(self) -> str:
        return self._answer(self) if self._answer else ""

    def wait_for(self, pattern: str, timeout: float = 10) -> re.Match:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not (m := re.search(pattern, self.text)):
                assert self._changed.wait(deadline - time.monotonic()), (pattern, self.text)
            return m


class Browser:
    def __init__(self, certs) -> None:
        self.http = requests.Session()
        self.http.verify = str(certs.ca_file)
        self.http.trust_env = False

    def close(self) -> None:
        self.http.close()

    def sign_in(self, authorize_url: str) -> str:
        """Open the authorize URL; return the address the identity platform redirects to."""
        response = self.http.get(authorize_url, allow_redirects=False)
        assert response.status_code == 302, response.text
        return response.headers["Location"]


@pytest.fixture
def browser(certs):
    b = Browser(certs)
    yield b
    b.close()


def get_local(url: str) -> int:
    """The browser's last step: follow the redirect to the local listener (plain http)."""
    parts = urlsplit(url)
    assert parts.hostname == "localhost"
    conn = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=10)
    try:
        conn.request("GET", f"{parts.path or '/'}?{parts.query}")  # as a browser sends it
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def auth(config, term: Terminal | None = None, **kw) -> int:
    """run_auth with `term` as both the output and the operator's input."""
    kw = {"device": False, "token_stdin": False, "verify": False, "redirect_uri": None, **kw}
    term = term or Terminal()
    return run_auth(config, MAILBOX, out=term, stdin=term, **kw)


def in_background(fn, *args, **kw) -> concurrent.futures.Future:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(fn, *args, **kw)
    pool.shutdown(wait=False)
    return future


def paste(browser, edit=lambda url: url):
    """The operator: signs in with the printed URL and pastes where the browser landed."""
    return lambda term: edit(browser.sign_in(term.wait_for(AUTHORIZE).group(1))) + "\n"


def stored(config) -> str | None:
    token = TokenStore(config.state_dir).get(MAILBOX)
    return token.refresh_token.reveal() if token else None


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


# -- the happy paths -------------------------------------------------------------------------------

@pytest.mark.parametrize("cloud, resource", [("global", "outlook.office.com"),
                                             ("usgov", "outlook.office365.us"),
                                             ("china", "partner.outlook.cn")])
def test_paste_flow_honours_the_cloud_and_the_authority(tmp_path, idp, certs, browser, cloud, resource):
    config = make_config(tmp_path, idp, certs, cloud=cloud)
    term = Terminal(paste(browser))
    assert auth(config, term) == 0, term.text
    url = term.wait_for(AUTHORIZE).group(1)
    assert url.startswith(f"{idp.url}/contoso.test/oauth2/v2.0/authorize?")  # the configured authority
    q = query_of(url)
    assert set(q["scope"].split()) >= {f"https://{resource}/IMAP.AccessAsUser.All",
                                       f"https://{resource}/POP.AccessAsUser.All",
                                       f"https://{resource}/SMTP.Send", "offline_access"}
    assert q["login_hint"] == MAILBOX and q["prompt"] == "select_account"
    assert q["code_challenge_method"] == "S256" and q["redirect_uri"] == NATIVE and q["state"]
    rt = stored(config)
    assert rt is not None and "Stored a refresh token" in term.text
    # the stored token is a live one for this app, for the scopes of this cloud
    assert idp.grants["authorization_code"] == 1
    answer = requests.post(f"{idp.url}/contoso.test/oauth2/v2.0/token", verify=str(certs.ca_file), data={
        "grant_type": "refresh_token", "client_id": "conf-app", "client_secret": "s3cret",
        "refresh_token": rt, "scope": f"https://{resource}/SMTP.Send"}).json()
    assert idp.valid_token(answer["access_token"], MAILBOX)


def test_personal_account_tenant_consumers(tmp_path, idp, certs, browser):
    config = make_config(tmp_path, idp, certs, tenant="consumers")
    term = Terminal(paste(browser))
    assert auth(config, term) == 0, term.text
    assert f"{idp.url}/consumers/oauth2/v2.0/authorize?" in term.text
    assert stored(config)


def test_listener_catches_the_redirect(tmp_path, idp, certs, browser):
    config = make_config(tmp_path, idp, certs)
    port = free_port()
    term = Terminal()
    done = in_background(auth, config, term, redirect_uri=f"http://localhost:{port}/")
    location = browser.sign_in(term.wait_for(AUTHORIZE).group(1))
    assert location.startswith(f"http://localhost:{port}/?code=")
    # a stray request (the browser's favicon, a port scanner) is not the redirect
    assert get_local(f"http://localhost:{port}/favicon.ico?x=1") == 404
    assert get_local(location) == 200
    assert done.result(30) == 0, term.text
    assert stored(config) and "code=" not in term.text  # the code is never printed


def test_listener_without_a_port_picks_a_free_one(tmp_path, idp, certs, browser):
    """Entra ID accepts any port on a registered http://localhost; port 80 would need root."""
    config = make_config(tmp_path, idp, certs)
    term = Terminal()
    done = in_background(auth, config, term, redirect_uri="http://localhost")
    location = browser.sign_in(term.wait_for(AUTHORIZE).group(1))
    port = urlsplit(location).port
    assert port and port != 80 and idp.authorize_requests[-1]["redirect_uri"] == f"http://localhost:{port}"
    assert get_local(location) == 200
    assert done.result(30) == 0, term.text
    assert stored(config)


def test_listener_on_a_busy_port_is_a_clear_error_before_the_sign_in(tmp_path, idp, certs, capsys):
    config = make_config(tmp_path, idp, certs)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        term = Terminal()
        code = auth(config, term, redirect_uri=f"http://localhost:{port}/")
    err = capsys.readouterr().err
    assert code == 1 and f"127.0.0.1:{port}" in err and "Traceback" not in err
    assert "authorize" not in term.text  # nobody was sent to sign in for nothing
    assert stored(config) is None


def test_the_signed_in_user_may_differ_in_case(tmp_path, idp, certs, browser):
    idp.sign_in_as = MAILBOX.upper()
    config = make_config(tmp_path, idp, certs)
    assert auth(config, term=Terminal(paste(browser))) == 0
    assert stored(config)


def test_device_code_flow(tmp_path, idp, certs):
    config = make_config(tmp_path, idp, certs, client="public-app")
    term = Terminal()
    done = in_background(auth, config, term, device=True)
    idp.approve_device(term.wait_for(r"enter the code (\w+)").group(1), as_user=MAILBOX)
    assert done.result(30) == 0, term.text
    assert stored(config)


# -- refusals: one clear message, nothing stored -----------------------------------------------------

def refused(capsys, config, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err and stored(config) is None
    return err


def test_another_user_signing_in_is_refused(tmp_path, idp, certs, browser, capsys):
    idp.sign_in_as = "intern@example.test"
    config = make_config(tmp_path, idp, certs)
    err = refused(capsys, config, auth(config, term=Terminal(paste(browser))))
    assert f"signed in as intern@example.test, but the account is {MAILBOX}" in err


def test_device_code_for_another_user_is_refused(tmp_path, idp, certs, capsys):
    config = make_config(tmp_path, idp, certs, client="public-app")
    term = Terminal()
    done = in_background(auth, config, term, device=True)
    idp.approve_device(term.wait_for(r"enter the code (\w+)").group(1), as_user="intern@example.test")
    err = refused(capsys, config, done.result(30))
    assert "signed in as intern@example.test" in err


def test_import_of_another_users_token_is_refused(tmp_path, idp, certs, capsys):
    config = make_config(tmp_path, idp, certs)
    rt = idp.issue_refresh_token("intern@example.test")
    err = refused(capsys, config, auth(config, token_stdin=True, term=Terminal(lambda t: rt + "\n")))
    assert "signed in as intern@example.test" in err


def test_forged_state_is_refused(tmp_path, idp, certs, browser, capsys):
    config = make_config(tmp_path, idp, certs)
    forge = paste(browser, lambda url: re.sub(r"state=[^&]+", "state=forged", url))
    err = refused(capsys, config, auth(config, term=Terminal(forge)))
    assert "state does not match" in err
    assert idp.grants["authorization_code"] == 0  # the code was not even redeemed


@pytest.mark.parametrize("pasted, says", [
    ("", "nothing was pasted"),
    ("\n", "nothing was pasted"),
    ("M.C507_BAY.2.U.1234-the-code-alone", "no code"),
    ("https://login.microsoftonline.com/common/oauth2/nativeclient", "no code"),
])
def test_pasting_something_else_is_explained(tmp_path, idp, certs, capsys, pasted, says):
    config = make_config(tmp_path, idp, certs)
    err = refused(capsys, config, auth(config, term=Terminal(lambda t: pasted)))
    assert says in err and "forged" not in err


def test_fragment_answer_can_be_pasted(tmp_path, idp, certs, browser):
    """Some browsers' address bars (and some redirect pages) keep the answer in the fragment."""
    config = make_config(tmp_path, idp, certs)
    frag = paste(browser, lambda url: url.replace("?", "#", 1))
    assert auth(config, term=Terminal(frag)) == 0
    assert stored(config)


def test_sign_in_error_is_explained(tmp_path, idp, certs, browser, capsys):
    idp.authorize_error = ("consent_required", 65001)
    config = make_config(tmp_path, idp, certs)
    err = refused(capsys, config, auth(config, term=Terminal(paste(browser))))
    assert "sign-in failed: consent_required: AADSTS65001" in err


def test_an_expired_code_says_to_sign_in_again(tmp_path, idp, certs, browser, clock, capsys):
    """The operator took longer than the code lives: not 'the refresh token expired'."""
    config = make_config(tmp_path, idp, certs)

    def slow_operator(term):
        location = paste(browser)(term)
        clock.now += idp.auth_code_lifetime + 1
        return location

    err = refused(capsys, config, auth(config, term=Terminal(slow_operator)))
    assert "AADSTS70008" in err and "run relay365 auth again" in err
    assert "90 days" not in err  # classify's advice for a dead refresh token does not apply


def test_device_code_declined_and_expired_are_explained(tmp_path, idp, certs, clock, capsys):
    config = make_config(tmp_path, idp, certs, client="public-app")
    term = Terminal()
    done = in_background(auth, config, term, device=True)
    idp.decline_device(term.wait_for(r"enter the code (\w+)").group(1))
    err = refused(capsys, config, done.result(30))
    assert "declined" in err and MAILBOX in err and "refresh token" not in err

    idp.device_code_lifetime = 0
    err = refused(capsys, config, auth(config, device=True))
    assert "expired" in err and "--device" in err and "check the app registration" not in err
    assert idp.grants["urn:ietf:params:oauth:grant-type:device_code"] >= 2


@pytest.mark.parametrize("cloud, login", [("usgov", "https://login.microsoftonline.us"),
                                          ("china", "https://login.partner.microsoftonline.cn")])
def test_the_example_config_switched_to_a_national_cloud_signs_in_there(monkeypatch, cloud, login):
    """An operator copies config.example.yaml and sets cloud: the authority must follow (an
    uncommented example authority would keep sending them to the global login host)."""
    from pathlib import Path

    monkeypatch.setenv("RELAY365_CLIENT_SECRET", "x")
    monkeypatch.setenv("SCANNER_RT", "y")
    example = Path(__file__).resolve().parents[2] / "config.example.yaml"
    text = example.read_text()
    assert "    cloud: global " in text
    config = load_config(example, text=text.replace("    cloud: global ", f"    cloud: {cloud} "))
    assert config.apps["default"].authority_url.startswith(login + "/")
    assert config.scopes_for(config.accounts[0])[0].startswith(
        f"https://{config.apps['default'].scope_resource}/")
    assert config.apps["default"].scope_resource != "outlook.office.com"


# -- a sign-in name that is not the mailbox: Graph says whose addresses it has --------------------

UPN = "j.smith@example.test"


def user_read(idp, graph, client="conf-app") -> None:
    """The README's app registration: delegated User.Read, admin consent granted."""
    idp.grant_admin_consent(client, {f"{graph.url}/User.Read"})


def me_requests(graph) -> list:
    return [(r.method, r.path, r.status) for r in graph.requests]


@pytest.mark.parametrize("upn, directory", [
    (UPN, {"addresses": [MAILBOX]}),  # the mailbox is an alias (smtp:) of j.smith's
    ("scanner@corp.example.test", {"mail": MAILBOX}),  # a UPN on another domain; SMTP: primary
])
def test_a_sign_in_name_that_has_the_mailbox_among_its_addresses_is_stored(
        tmp_path, idp, certs, browser, graph, upn, directory):
    idp.add_user(upn, **directory)
    user_read(idp, graph)
    idp.sign_in_as = upn
    config = make_config(tmp_path, idp, certs, graph_url=graph.base_url)
    term = Terminal(paste(browser))
    assert auth(config, term) == 0, term.text
    assert f"Signed in as {upn}; Microsoft Graph lists {MAILBOX} among its addresses" in term.text
    assert me_requests(graph) == [("GET", "/v1.0/me", 200)]
    # what is stored is the token the User.Read redemption rotated to, and it opens the mailbox
    rt = stored(config)
    answer = requests.post(f"{idp.url}/contoso.test/oauth2/v2.0/token", verify=str(certs.ca_file), data={
        "grant_type": "refresh_token", "client_id": "conf-app", "client_secret": "s3cret",
        "refresh_token": rt, "scope": "https://outlook.office.com/SMTP.Send"}).json()
    assert idp.valid_token(answer["access_token"], MAILBOX), answer


def test_a_sign_in_name_without_the_mailbox_among_its_addresses_is_refused(
        tmp_path, idp, certs, browser, graph, capsys):
    idp.add_user("intern@example.test", addresses=["printer-intern@example.test"])
    user_read(idp, graph)
    idp.sign_in_as = "intern@example.test"
    config = make_config(tmp_path, idp, certs, graph_url=graph.base_url)
    err = refused(capsys, config, auth(config, term=Terminal(paste(browser))))
    assert f"signed in as intern@example.test, but the account is {MAILBOX}; nothing was stored" in err
    assert "intern@example.test, printer-intern@example.test" in err  # what Graph listed
    assert f"{MAILBOX} is not one of them" in err and f"Sign in as {MAILBOX}" in err
    assert me_requests(graph) == [("GET", "/v1.0/me", 200)]


@pytest.mark.parametrize("who", [MAILBOX, MAILBOX.upper()])
def test_the_same_name_asks_graph_nothing(tmp_path, idp, certs, browser, graph, who):
    user_read(idp, graph)
    idp.sign_in_as = who
    config = make_config(tmp_path, idp, certs, graph_url=graph.base_url)
    term = Terminal(paste(browser))
    assert auth(config, term) == 0, term.text
    assert stored(config)
    assert graph.requests == [] and idp.grants["refresh_token"] == 0  # no User.Read token either
    assert "Microsoft Graph" not in term.text


def test_without_user_read_consent_the_refusal_names_the_code_and_the_way_out(
        tmp_path, idp, certs, browser, graph, capsys):
    idp.add_user(UPN, addresses=[MAILBOX])  # would be accepted, if Graph could be asked
    idp.sign_in_as = UPN
    config = make_config(tmp_path, idp, certs, graph_url=graph.base_url)
    err = refused(capsys, config, auth(config, term=Terminal(paste(browser))))
    assert f"signed in as {UPN}, but the account is {MAILBOX}; nothing was stored" in err
    assert "no Microsoft Graph token for User.Read: invalid_grant (AADSTS65001)" in err
    assert "User.Read to the app registration, grant admin consent" in err
    assert f"set the account's mailbox to the sign-in name {UPN}" in err
    assert graph.requests == []


def test_graph_out_of_reach_is_a_refusal_that_names_the_error(tmp_path, idp, certs, browser, capsys):
    idp.add_user(UPN, addresses=[MAILBOX])
    idp.grant_admin_consent("conf-app", {NO_GRAPH.removesuffix("/v1.0") + "/User.Read"})
    idp.sign_in_as = UPN
    config = make_config(tmp_path, idp, certs)  # Graph at a port where nothing listens
    err = refused(capsys, config, auth(config, term=Terminal(paste(browser))))
    assert f"signed in as {UPN}, but the account is {MAILBOX}; nothing was stored" in err
    assert "could not be checked: Graph GET /me: ConnectError" in err
    assert f"check that this host reaches {NO_GRAPH}" in err


def test_device_flow_of_a_confidential_app_asks_graph_as_a_public_client(
        tmp_path, idp, certs, graph):
    """A device-flow token is a public client's: its User.Read redemption goes without the secret
    (with it, Entra ID answers AADSTS700025), and the token is stored marked public."""
    idp.add_client("both-app", "s3cret", public_flows=True)
    user_read(idp, graph, client="both-app")
    idp.add_user(UPN, addresses=[MAILBOX])
    config = make_config(tmp_path, idp, certs, client="both-app", secret="s3cret",
                         graph_url=graph.base_url)
    term = Terminal()
    done = in_background(auth, config, term, device=True)
    idp.approve_device(term.wait_for(r"enter the code (\w+)").group(1), as_user=UPN)
    assert done.result(30) == 0, term.text
    assert "a public client's" in term.text and me_requests(graph) == [("GET", "/v1.0/me", 200)]
    refreshes = [r for r in idp.request_log if r.grant_type == "refresh_token"]
    assert [(r.status, r.with_secret) for r in refreshes] == [(200, False)]
    token = TokenStore(config.state_dir).get(MAILBOX)
    assert token is not None and token.public


def test_an_imported_token_of_the_mailboxs_owner_is_stored_rotated(tmp_path, idp, certs, graph):
    idp.add_user(UPN, addresses=[MAILBOX])
    raw = idp.issue_refresh_token(UPN)
    config = make_config(tmp_path, idp, certs, graph_url=graph.base_url)
    term = Terminal(lambda t: raw + "\n")
    assert auth(config, term, token_stdin=True) == 0, term.text
    rt = stored(config)
    assert rt and rt != raw  # the import and the User.Read redemption each rotated it
    assert me_requests(graph) == [("GET", "/v1.0/me", 200)]
