"""POP3 through relay365 into real Dovecot POP3S (XOAUTH2 only), with real clients."""

from __future__ import annotations

import concurrent.futures
import os
import poplib
import pwd
import shutil
import ssl
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import DOMAIN, PASSWORD, PASSWORD_HASH, USER, relay_config

pytestmark = pytest.mark.integration


def make_msg(i: int, size: int = 0) -> bytes:
    body = f"message {i}\r\n" + ("p" * 998 + "\r\n") * (size // 1000)
    return (f"From: sender{i}@lan.local\r\nTo: reader@{DOMAIN}\r\nSubject: pop {i}\r\n"
            f"Message-ID: <{uuid.uuid4()}@t>\r\n\r\n{body}").encode()


@pytest.fixture
def reader(tmp_path, pki, idp, upstream, make_relay):
    """A relay with POP3 and a fresh mailbox (delegated, or app-only with `app=True`)."""

    def start(pop3: dict | None = None, app: bool = False, **kw):
        mailbox = f"app@{DOMAIN}" if app else f"pop-{uuid.uuid4().hex[:8]}@{DOMAIN}"
        user = "appuser" if app else mailbox.split("@")[0]
        config = relay_config(tmp_path, pki, idp, upstream, pop3=pop3 or {}, **kw)
        account: dict = {"mailbox": mailbox}
        if app:
            account["flow"] = "client_credentials"
        else:
            account["refresh_token"] = idp.issue_refresh_token(mailbox)
        config["accounts"].append(account)
        config["users"].append({"username": user, "password_hash": PASSWORD_HASH, "mailbox": mailbox})
        return make_relay(config), user, mailbox

    return start


def login(relay, user: str, password: str = PASSWORD) -> poplib.POP3:
    pop = poplib.POP3("127.0.0.1", relay.pop3_port, timeout=60)
    pop.user(user)
    pop.pass_(password)
    return pop


def retr(pop: poplib.POP3, n: int) -> bytes:
    """poplib undoes dot-stuffing and splits lines; join them back with CRLF as stored."""
    return b"\r\n".join(pop.retr(n)[1]) + b"\r\n"


def test_retr_is_byte_identical_and_uidl_stable(reader, upstream):
    relay, user, mailbox = reader()
    sent = [make_msg(1), make_msg(2, size=20 * 1024 * 1024), b"From: a@b\r\n\r\n.leading dot\r\n"]
    upstream.deliver_many(mailbox, sent)
    pop = login(relay, user)
    assert b"relay365" in pop.welcome
    assert pop.stat()[0] == 3
    stored = upstream.messages(mailbox)
    for i in range(3):
        assert retr(pop, i + 1) == stored[i] == sent[i]
    uidl = pop.uidl()[1]
    pop.quit()
    pop = login(relay, user)
    assert pop.uidl()[1] == uidl and len(uidl) == 3
    top = pop.top(1, 0)[1]
    assert b"Subject: pop 1" in top and b"message 1" not in top
    pop.quit()
    relay.wait_log("pop3_session", user=user)
    sessions = relay.find("pop3_session", user=user)
    assert all(s["outcome"] == "spliced" for s in sessions)
    assert max(s["bytes_down"] for s in sessions) > 20_000_000
    assert PASSWORD not in relay.log_path.read_text()


def test_dele_quit_removes_and_dele_rset_keeps(reader, upstream):
    relay, user, mailbox = reader()
    upstream.deliver_many(mailbox, [make_msg(1), make_msg(2)])
    pop = login(relay, user)
    pop.dele(1)
    pop.rset()
    pop.quit()
    assert len(upstream.messages(mailbox)) == 2
    pop = login(relay, user)
    pop.dele(1)
    pop.quit()
    left = upstream.messages(mailbox)
    assert len(left) == 1 and b"pop 2" in left[0]


def test_wrong_password_is_auth_code_without_token_request(reader, idp):
    relay, user, _ = reader()
    for account in relay.config["accounts"]:  # the keeper's first round fetches a token for each:
        relay.wait_log("token_refreshed", account=account["mailbox"])  # not this login's doing
    idp.reset_counters()
    pop = poplib.POP3("127.0.0.1", relay.pop3_port, timeout=30)
    pop.user(user)
    with pytest.raises(poplib.error_proto) as refused:
        pop.pass_("wrong password")
    assert refused.value.args[0] == b"-ERR [AUTH] Invalid credentials"
    pop.quit()
    assert idp.token_requests == 0 and idp.introspections == 0
    assert not relay.find("pop3_login")


def test_auth_plain_and_capa(reader, upstream):
    relay, user, mailbox = reader()
    upstream.deliver(mailbox, make_msg(1))
    pop = poplib.POP3("127.0.0.1", relay.pop3_port, timeout=30)
    caps = pop.capa()
    assert "SASL" in caps and "PLAIN" in caps["SASL"] and "RESP-CODES" in caps
    import base64
    resp = pop._shortcmd("AUTH PLAIN " + base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode())
    assert resp.startswith(b"+OK")
    assert pop.stat()[0] == 1
    pop.quit()


def test_ten_concurrent_logins_cost_one_token_request(make_relay, idp):
    relay, user = make_relay(pop3={}), USER  # one account only: nothing else asks for tokens

    def one(_: int) -> int:
        pop = login(relay, user)
        count = pop.stat()[0]
        pop.quit()
        return count

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        assert list(pool.map(one, range(10))) == [0] * 10
    assert idp.token_requests == 1


def test_app_only_account(reader, upstream, idp):
    relay, user, mailbox = reader(app=True)
    upstream.deliver(mailbox, make_msg(5))
    pop = login(relay, user)
    assert b"message 5" in retr(pop, pop.stat()[0])
    pop.quit()
    assert idp.grants["client_credentials"] >= 1


def test_stls_and_implicit_tls(reader, upstream, pki):
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    tls = {"cert_file": str(pki.cert_file), "key_file": str(pki.key_file)}
    relay, user, mailbox = reader(pop3={"tls": "starttls", "allow_plaintext_auth": False, **tls})
    upstream.deliver(mailbox, make_msg(1))
    pop = poplib.POP3("127.0.0.1", relay.pop3_port, timeout=30)
    with pytest.raises(poplib.error_proto):
        pop.user(user)  # no plaintext login before STLS
    pop.stls(ctx)
    pop.user(user)
    pop.pass_(PASSWORD)
    assert pop.stat()[0] == 1
    pop.quit()
    relay2, user2, _ = reader(pop3={"tls": "implicit", **tls})
    pop = poplib.POP3_SSL("127.0.0.1", relay2.pop3_port, context=ctx, timeout=30)
    pop.user(user2)
    pop.pass_(PASSWORD)
    assert pop.stat()[0] == 0
    pop.quit()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_pop3(reader, upstream):
    relay, user, mailbox = reader()
    upstream.deliver(mailbox, make_msg(7))
    result = subprocess.run(["curl", "-sS", "--user", f"{user}:{PASSWORD}",
                             f"pop3://127.0.0.1:{relay.pop3_port}/1"], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == upstream.messages(mailbox)[0]


@pytest.mark.skipif(shutil.which("fetchmail") is None, reason="fetchmail not installed")
@pytest.mark.parametrize("keep", [True, False], ids=["keep", "delete"])
def test_fetchmail(reader, upstream, tmp_path, keep):
    relay, user, mailbox = reader()
    upstream.deliver_many(mailbox, [make_msg(1), make_msg(2)])
    out = tmp_path / "mbox"
    rc = tmp_path / "fetchmailrc"
    rc.write_text(f'poll 127.0.0.1 service {relay.pop3_port} protocol pop3 auth password\n'
                  f'  user "{user}" password "{PASSWORD}" is "{user}"\n'
                  f'  {"keep" if keep else "nokeep"} sslproto "" mda "/bin/sh -c \'cat >> {out}\'"\n')
    rc.chmod(0o600)
    result = subprocess.run(["fetchmail", "-f", str(rc), "--nodetach", "--nosyslog", "-i",
                             str(tmp_path / "fetchids"), "--pidfile", str(tmp_path / "fm.pid")],
                            capture_output=True, timeout=120, env={"HOME": str(tmp_path),
                                                                    "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
    got = out.read_bytes()
    assert b"message 1" in got and b"message 2" in got
    assert len(upstream.messages(mailbox)) == (2 if keep else 0)


@pytest.mark.skipif(shutil.which("getmail") is None, reason="getmail6 not installed")
def test_getmail6(reader, upstream, tmp_path, request):
    relay, user, mailbox = reader()
    upstream.deliver_many(mailbox, [make_msg(1), make_msg(2)])
    # getmail refuses to deliver as root: a Maildir the unprivileged `nobody` may write
    home = Path(tempfile.mkdtemp(prefix="relay365-getmail-"))
    home.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(home, ignore_errors=True))
    maildir = home / "Maildir"
    nobody = pwd.getpwnam("nobody")
    for d in (maildir, maildir / "cur", maildir / "new", maildir / "tmp"):
        d.mkdir()
        os.chown(d, nobody.pw_uid, nobody.pw_gid)
    rc = tmp_path / "getmailrc"
    rc.write_text(f"[retriever]\ntype = SimplePOP3Retriever\nserver = 127.0.0.1\n"
                  f"port = {relay.pop3_port}\nusername = {user}\npassword = {PASSWORD}\n"
                  f"[destination]\ntype = Maildir\npath = {maildir}/\nuser = nobody\n"
                  f"[options]\nread_all = true\ndelete = false\n")
    result = subprocess.run(["getmail", "--getmaildir", str(tmp_path), "--rcfile", str(rc)],
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    got = [p.read_bytes() for p in (maildir / "new").iterdir()]
    assert len(got) == 2 and any(b"message 2" in g for g in got)
    assert len(upstream.messages(mailbox)) == 2


def test_token_without_pop_scope_is_sys_temp(tmp_path, pki, idp, upstream, make_relay):
    """Exchange refuses a delegated token without POP.AccessAsUser.All; the client hears SYS/TEMP
    and the reason is in the log."""
    mailbox = f"noscope-{uuid.uuid4().hex[:8]}@{DOMAIN}"
    scopes = ["https://outlook.office.com/IMAP.AccessAsUser.All", "https://outlook.office.com/SMTP.Send"]
    config = relay_config(tmp_path, pki, idp, upstream, pop3={})
    config["accounts"].append({"mailbox": mailbox, "scopes": scopes,
                               "refresh_token": idp.issue_refresh_token(mailbox, scopes=scopes)})
    config["users"].append({"username": "noscope", "password_hash": PASSWORD_HASH, "mailbox": mailbox})
    relay = make_relay(config)
    pop = poplib.POP3("127.0.0.1", relay.pop3_port, timeout=30)
    pop.user("noscope")
    with pytest.raises(poplib.error_proto) as refused:
        pop.pass_(PASSWORD)
    assert refused.value.args[0].startswith(b"-ERR [SYS/TEMP] ")
    pop.quit()
    assert relay.wait_log("pop3_upstream_failed", mailbox=mailbox)
