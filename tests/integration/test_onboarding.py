"""relay365 auth: getting a mailbox's refresh token in, against the fake identity platform."""

from __future__ import annotations

import smtplib
import subprocess
import sys
import time
import uuid

import pytest

from tests.integration.conftest import DOMAIN, MAILBOX, relay_config
from tests.integration.test_smtp_relay import delivered, send
from tests.support.relayproc import RelayProcess

pytestmark = pytest.mark.integration


def auth(config_path, *args, stdin: str = "", timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relay365", "auth", MAILBOX, "-c", str(config_path), *args],
                          input=stdin, capture_output=True, text=True, timeout=timeout)


def no_seed_config(tmp_path, pki, idp, upstream, **kw) -> RelayProcess:
    config = relay_config(tmp_path, pki, idp, upstream, smtp={}, **kw)
    del config["accounts"][0]["refresh_token"]
    proc = RelayProcess(tmp_path, config)
    proc.write_config()
    return proc


def send_once_the_token_is_there(relay, upstream, subject: str, timeout: float = 20) -> None:
    """The daemon picks a stored token up at its next attempt: send until it does, then check."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            send(relay.smtp_port, subject)
            break
        except Exception:
            assert time.monotonic() < deadline, "the running relay never used the stored token"
            time.sleep(0.5)
    delivered(upstream, f"bob@{DOMAIN}", subject)


@pytest.fixture
def running(tmp_path, pki, idp, upstream):
    proc = no_seed_config(tmp_path, pki, idp, upstream)
    yield proc.start()
    proc.stop()


def test_import_refresh_token_verifies_and_daemon_picks_it_up(tmp_path, running, idp, upstream):
    proc = running
    with pytest.raises(smtplib.SMTPException):  # no refresh token yet: the relay says so with a 4xx
        send(proc.smtp_port, "before auth")
    assert proc.wait_log("token_failed")["error"] == "no_refresh_token"
    rt = idp.issue_refresh_token(MAILBOX)
    result = auth(proc.config_path, "--refresh-token-stdin", stdin=rt + "\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Stored a refresh token" in result.stdout
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith(MAILBOX))
    assert "smtp: ok" in line and "imap: ok" in line
    store = (tmp_path / "state" / "tokens.enc").read_bytes()
    assert rt.encode() not in store
    subject = f"after auth {uuid.uuid4()}"
    # the running daemon sees the new token at its next attempt; no restart
    send_once_the_token_is_there(proc, upstream, subject)


def test_import_of_a_dead_token_is_refused_clearly(tmp_path, pki, idp, upstream):
    proc = no_seed_config(tmp_path, pki, idp, upstream)
    result = auth(proc.config_path, "--refresh-token-stdin", "--no-verify", stdin="not-a-token\n")
    assert result.returncode == 1
    assert "invalid_grant (AADSTS70000)" in result.stderr and MAILBOX in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "state" / "tokens.enc").exists()


# -- the interactive flows: the test plays the operator and the browser ---------------------------

import http.client  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import ssl  # noqa: E402
import threading  # noqa: E402
from urllib.parse import parse_qs, urlsplit  # noqa: E402

from tests.support.upstream import free_port  # noqa: E402


class AuthRun:
    """`relay365 auth` running in a subprocess, its output read line by line as it comes."""

    def __init__(self, config_path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay365", "auth", MAILBOX, "-c", str(config_path), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self._new = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._new:
                self.lines.append(line.rstrip("\n"))
                self._new.notify_all()

    def wait_line(self, pattern: str, timeout: float = 30) -> re.Match:
        deadline = time.monotonic() + timeout
        with self._new:
            while True:
                for line in self.lines:
                    if m := re.search(pattern, line):
                        return m
                left = deadline - time.monotonic()
                assert left > 0 and self.proc.poll() is None, (
                    f"no line matching {pattern!r}: {self.lines}\n{self.proc.stderr.read()}")
                self._new.wait(min(left, 0.2))

    def answer(self, text: str) -> None:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)
        err = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode, "\n".join(self.lines), err


def browser(pki, url: str) -> str:
    """Open the authorize URL as a browser would; return where the identity platform redirects."""
    parts = urlsplit(url)
    conn = http.client.HTTPSConnection(parts.hostname, parts.port,
                                       context=ssl.create_default_context(cafile=str(pki.ca_file)),
                                       timeout=10)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}")
        response = conn.getresponse()
        response.read()
        assert response.status == 302, response.status
        return response.getheader("Location")
    finally:
        conn.close()


def follow_to_localhost(location: str) -> int:
    parts = urlsplit(location)
    assert parts.hostname == "localhost"
    conn = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=10)
    try:
        conn.request("GET", f"{parts.path or '/'}?{parts.query}")  # as a browser sends it
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


AUTHORIZE = r"(https://127\.0\.0\.1:\d+/\S+/oauth2/v2\.0/authorize\?\S+)"


def test_auth_code_flow_with_local_listener_while_the_daemon_runs(running, pki, idp, upstream, tmp_path):
    port = free_port()
    run = AuthRun(running.config_path, "--redirect-uri", f"http://localhost:{port}/")
    url = run.wait_line(AUTHORIZE).group(1)
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert set(q["scope"].split()) >= {"https://outlook.office.com/IMAP.AccessAsUser.All",
                                       "https://outlook.office.com/POP.AccessAsUser.All",
                                       "https://outlook.office.com/SMTP.Send", "offline_access"}
    assert q["login_hint"] == MAILBOX and q["prompt"] == "select_account"
    assert q["code_challenge_method"] == "S256" and q["state"] and q["redirect_uri"] == f"http://localhost:{port}/"
    assert urlsplit(url).path.startswith("/contoso.test/")  # the tenant-specific authority
    location = browser(pki, url)
    run.wait_line("Waiting for the browser")
    assert follow_to_localhost(location) == 200
    code, out, err = run.finish()
    assert code == 0, out + err
    assert "Stored a refresh token" in out
    line = next(ln for ln in out.splitlines() if ln.startswith(MAILBOX))
    assert "smtp: ok" in line and "imap: ok" in line
    assert "code=" not in out + err  # the code never reaches the terminal
    # the daemon uses it without a restart, and relay365 accounts shows the account ok
    subject = f"after auth-code {uuid.uuid4()}"
    send_once_the_token_is_there(running, upstream, subject)
    accounts = subprocess.run([sys.executable, "-m", "relay365", "accounts", "-c", str(running.config_path)],
                              capture_output=True, text=True, timeout=30)
    row = next(ln for ln in accounts.stdout.splitlines() if ln.startswith(MAILBOX))
    assert " ok " in f" {row} ", accounts.stdout


def test_auth_code_flow_paste_mode(tmp_path, pki, idp, upstream):
    proc = no_seed_config(tmp_path, pki, idp, upstream)
    run = AuthRun(proc.config_path, "--no-verify")
    url = run.wait_line(AUTHORIZE).group(1)
    run.wait_line("Paste its full address")
    location = browser(pki, url)
    assert location.startswith("https://login.microsoftonline.com/common/oauth2/nativeclient?code=")
    run.answer(location)
    code, out, err = run.finish()
    assert code == 0, out + err
    assert (tmp_path / "state" / "tokens.enc").exists()


def test_a_tampered_state_is_refused_and_nothing_stored(tmp_path, pki, idp, upstream):
    proc = no_seed_config(tmp_path, pki, idp, upstream)
    run = AuthRun(proc.config_path, "--no-verify")
    location = browser(pki, run.wait_line(AUTHORIZE).group(1))
    run.answer(re.sub(r"state=[^&]+", "state=forged", location))
    code, _out, err = run.finish()
    assert code == 1 and "state does not match" in err and "Traceback" not in err
    assert not (tmp_path / "state" / "tokens.enc").exists()


def test_a_different_user_signing_in_is_refused(tmp_path, pki, idp, upstream):
    proc = no_seed_config(tmp_path, pki, idp, upstream)
    idp.sign_in_as = f"intern@{DOMAIN}"
    run = AuthRun(proc.config_path, "--no-verify")
    run.answer(browser(pki, run.wait_line(AUTHORIZE).group(1)))
    code, out, err = run.finish()
    assert code == 1, out + err
    assert f"signed in as intern@{DOMAIN}, but the account is {MAILBOX}; nothing was stored" in err
    assert not (tmp_path / "state" / "tokens.enc").exists()


def test_sign_in_error_from_the_identity_platform_is_explained(tmp_path, pki, idp, upstream):
    proc = no_seed_config(tmp_path, pki, idp, upstream)
    idp.authorize_error = ("consent_required", 65001)
    run = AuthRun(proc.config_path, "--no-verify")
    run.answer(browser(pki, run.wait_line(AUTHORIZE).group(1)))
    code, _, err = run.finish()
    assert code == 1 and "sign-in failed: consent_required: AADSTS65001" in err


def public_client_config(tmp_path, pki, idp, upstream):
    """The device-code flow needs a public client: an app without a secret."""
    idp.add_client("relay365-public")
    proc = no_seed_config(tmp_path, pki, idp, upstream)
    proc.config["apps"]["default"]["client_id"] = "relay365-public"
    del proc.config["apps"]["default"]["client_secret"]
    proc.write_config()
    return proc


def test_device_code_flow(tmp_path, pki, idp, upstream):
    proc = public_client_config(tmp_path, pki, idp, upstream)
    run = AuthRun(proc.config_path, "--device")
    user_code = run.wait_line(r"enter the code (\w+)").group(1)
    idp.approve_device(user_code, MAILBOX)
    code, out, err = run.finish()
    assert code == 0, out + err
    line = next(ln for ln in out.splitlines() if ln.startswith(MAILBOX))
    assert "smtp: ok" in line and "imap: ok" in line
    assert idp.grants["urn:ietf:params:oauth:grant-type:device_code"] >= 1


def test_device_code_declined_is_a_clear_failure(tmp_path, pki, idp, upstream):
    proc = public_client_config(tmp_path, pki, idp, upstream)
    run = AuthRun(proc.config_path, "--device", "--no-verify")
    idp.decline_device(run.wait_line(r"enter the code (\w+)").group(1))
    code, _, err = run.finish()
    assert code == 1 and "authorization_declined" in err and MAILBOX in err
    assert "Traceback" not in err
    assert not (tmp_path / "state" / "tokens.enc").exists()


def test_device_code_flow_where_entra_refuses_public_client_flows(tmp_path, pki, idp, upstream):
    """The session's app has a secret and 'Allow public client flows' off: Entra's own refusal."""
    proc = no_seed_config(tmp_path, pki, idp, upstream)
    run = AuthRun(proc.config_path, "--device")
    idp.approve_device(run.wait_line(r"enter the code (\w+)").group(1), MAILBOX)
    code, _out, err = run.finish()
    assert code == 1 and "Traceback" not in err, err
    assert "AADSTS7000218, public client flows are off" in err
    assert "Allow public client flows: Yes" in err
    assert not (tmp_path / "state" / "tokens.enc").exists()


def accounts_json(config_path) -> dict[str, dict]:
    import json

    result = subprocess.run([sys.executable, "-m", "relay365", "accounts", "-c", str(config_path), "--json"],
                            capture_output=True, text=True, timeout=30)
    return {row["mailbox"]: row for row in json.loads(result.stdout)["accounts"]}


def wait_accounts(config_path, check, timeout: float = 15) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = accounts_json(config_path)
        if check(rows):
            return rows
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)


def test_reauthorising_a_dead_account_while_the_daemon_runs(tmp_path, pki, idp, upstream):
    """The operator's everyday repair: relay365 accounts says needs-auth, relay365 auth fixes it,
    the running daemon relays again, and the other accounts' state is not disturbed."""
    other = f"other@{DOMAIN}"
    config = relay_config(tmp_path, pki, idp, upstream, smtp={}, refresh_token="0.A-long-dead-token")
    config["accounts"].append({"mailbox": other, "refresh_token": idp.issue_refresh_token(other)})
    proc = RelayProcess(tmp_path, config)
    proc.start()
    try:
        rows = wait_accounts(proc.config_path, lambda r: r[MAILBOX]["state"] == "needs-auth"
                             and r[other]["state"] == "ok")
        assert rows[MAILBOX]["code"] == "AADSTS70000" and "relay365 auth" in rows[MAILBOX]["action"]
        run = AuthRun(proc.config_path)
        run.answer(browser(pki, run.wait_line(AUTHORIZE).group(1)))
        code, out, err = run.finish()
        assert code == 0, out + err
        assert "smtp: ok" in out and "imap: ok" in out
        rows = accounts_json(proc.config_path)
        assert rows[MAILBOX]["state"] == "ok" and rows[other]["state"] == "ok"
        send_once_the_token_is_there(proc, upstream, f"after re-auth {uuid.uuid4()}")
    finally:
        proc.stop()


def registered_client(proc, idp, client_id: str = "relay365-registered") -> None:
    """An app whose registration lists its redirect URIs, as in Entra ID."""
    idp.add_client(client_id, secret="registered-secret",
                   redirect_uris=["http://localhost", "https://login.microsoftonline.com/common/oauth2/nativeclient"])
    proc.config["apps"]["default"].update(client_id=client_id, client_secret="registered-secret")
    proc.write_config()


def test_auth_code_with_localhost_and_no_port_listens_on_a_free_one(tmp_path, pki, idp, upstream):
    proc = no_seed_config(tmp_path, pki, idp, upstream)
    registered_client(proc, idp)
    run = AuthRun(proc.config_path, "--redirect-uri", "http://localhost", "--no-verify")
    url = run.wait_line(AUTHORIZE).group(1)
    port = int(run.wait_line(r"come back to http://localhost:(\d+) ").group(1))
    assert port != 80 and parse_qs(urlsplit(url).query)["redirect_uri"] == [f"http://localhost:{port}"]
    run.wait_line(rf"ssh -L {port}:127\.0\.0\.1:{port}")  # how to reach it from a laptop
    assert follow_to_localhost(browser(pki, url)) == 200
    code, out, err = run.finish()
    assert code == 0, out + err
    assert (tmp_path / "state" / "tokens.enc").exists()


def test_auth_code_redirect_uri_the_app_did_not_register_stops_at_the_identity_platform(
        tmp_path, pki, idp, upstream):
    proc = no_seed_config(tmp_path, pki, idp, upstream)
    registered_client(proc, idp)
    run = AuthRun(proc.config_path, "--redirect-uri", "https://relay.example.test/callback", "--no-verify")
    url = run.wait_line(AUTHORIZE).group(1)
    parts = urlsplit(url)
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=10,
                                       context=ssl.create_default_context(cafile=str(pki.ca_file)))
    try:
        conn.request("GET", f"{parts.path}?{parts.query}")
        page = conn.getresponse()
        assert page.status == 400 and b"AADSTS50011" in page.read()  # the browser shows this
    finally:
        conn.close()
    code, _, err = run.finish()  # the operator gives up (end of input)
    assert code == 1 and "nothing was pasted" in err and "Traceback" not in err


def test_auth_code_for_a_national_cloud(tmp_path, pki, idp, upstream):
    proc = no_seed_config(tmp_path, pki, idp, upstream)
    proc.config["apps"]["default"]["cloud"] = "usgov"  # authority stays the fake IdP's URL
    proc.write_config()
    run = AuthRun(proc.config_path)
    url = run.wait_line(AUTHORIZE).group(1)
    scopes = set(parse_qs(urlsplit(url).query)["scope"][0].split())
    assert scopes >= {"https://outlook.office365.us/IMAP.AccessAsUser.All",
                      "https://outlook.office365.us/POP.AccessAsUser.All",
                      "https://outlook.office365.us/SMTP.Send", "offline_access"}
    assert not any("outlook.office.com" in s for s in scopes)
    assert url.startswith(f"{idp.url}/contoso.test/oauth2/v2.0/authorize?")
    run.answer(browser(pki, url))
    code, out, err = run.finish()
    assert code == 0, out + err
    assert "smtp: ok" in out and "imap: ok" in out


def test_device_code_nobody_enters_is_a_clear_failure(tmp_path, pki, idp, upstream):
    proc = public_client_config(tmp_path, pki, idp, upstream)
    idp.device_code_lifetime = 0
    code, _out, err = AuthRun(proc.config_path, "--device", "--no-verify").finish()
    assert code == 1 and "expired before anyone signed in" in err and "--device" in err
    assert "Traceback" not in err and not (tmp_path / "state" / "tokens.enc").exists()


# -- accounts that send through Microsoft Graph ---------------------------------------------------

GRAPH_RESOURCE = "https://127.0.0.1:9"  # the token audience only: --no-verify talks to no Graph


def graph_account_config(tmp_path, pki, idp, upstream, send_via: str = "graph") -> RelayProcess:
    proc = no_seed_config(tmp_path, pki, idp, upstream)
    proc.config["upstream"]["graph"] = {"base_url": f"{GRAPH_RESOURCE}/v1.0"}
    proc.config["accounts"][0]["send_via"] = send_via
    proc.write_config()
    return proc


@pytest.mark.parametrize("send_via", ["graph", "auto"])
def test_auth_for_a_graph_account_asks_graph_consent_and_checks_it(tmp_path, pki, idp, upstream,
                                                                    send_via):
    proc = graph_account_config(tmp_path, pki, idp, upstream, send_via)
    run = AuthRun(proc.config_path, "--no-verify")
    url = run.wait_line(AUTHORIZE).group(1)
    scopes = set(parse_qs(urlsplit(url).query)["scope"][0].split())
    assert scopes >= {f"{GRAPH_RESOURCE}/Mail.Send", f"{GRAPH_RESOURCE}/Mail.ReadWrite", "offline_access",
                      "https://outlook.office.com/SMTP.Send"}
    run.answer(browser(pki, url))
    code, out, err = run.finish()
    assert code == 0, out + err
    assert f"Microsoft Graph: consented (Mail.Send, Mail.ReadWrite), for send_via: {send_via}" in out
    assert (tmp_path / "state" / "tokens.enc").exists()


def test_auth_for_an_smtp_account_asks_no_graph_scope(tmp_path, pki, idp, upstream):
    proc = no_seed_config(tmp_path, pki, idp, upstream)
    run = AuthRun(proc.config_path, "--no-verify")
    url = run.wait_line(AUTHORIZE).group(1)
    assert "Mail.Send" not in parse_qs(urlsplit(url).query)["scope"][0]
    run.answer(browser(pki, url))
    code, out, err = run.finish()
    assert code == 0 and "Microsoft Graph" not in out, out + err


def test_imported_token_without_graph_consent_is_refused_for_a_graph_account(tmp_path, pki, idp,
                                                                              upstream):
    proc = graph_account_config(tmp_path, pki, idp, upstream)
    mail_only = idp.issue_refresh_token(MAILBOX, scopes=[
        f"https://outlook.office.com/{s}" for s in ("IMAP.AccessAsUser.All", "POP.AccessAsUser.All",
                                                     "SMTP.Send")])
    result = auth(proc.config_path, "--refresh-token-stdin", "--no-verify", stdin=mail_only + "\n")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "refused for Microsoft Graph (AADSTS65001)" in result.stderr
    assert "Mail.Send, Mail.ReadWrite" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "state" / "tokens.enc").exists()


def test_device_code_flow_for_a_graph_account_consents_to_graph(tmp_path, pki, idp, upstream):
    proc = public_client_config(tmp_path, pki, idp, upstream)
    proc.config["upstream"]["graph"] = {"base_url": f"{GRAPH_RESOURCE}/v1.0"}
    proc.config["accounts"][0]["send_via"] = "graph"
    proc.write_config()
    run = AuthRun(proc.config_path, "--device", "--no-verify")
    idp.approve_device(run.wait_line(r"enter the code (\w+)").group(1), MAILBOX)
    code, out, err = run.finish()
    assert code == 0, out + err
    assert "Microsoft Graph: consented (Mail.Send, Mail.ReadWrite), for send_via: graph" in out
