"""SMTP through relay365 into real Postfix (STARTTLS + XOAUTH2 via Dovecot) and real Dovecot mailboxes."""

from __future__ import annotations

import concurrent.futures
import email
import shutil
import smtplib
import ssl
import subprocess
import sys
import time
import uuid

import pytest

from tests.integration.conftest import DOMAIN, MAILBOX, PASSWORD, USER, relay_config

pytestmark = pytest.mark.integration


def message(subject: str, sender: str = "Printer 3 <printer3@lan.local>",
            to: str = f"bob@{DOMAIN}", size: int = 0) -> bytes:
    body = "Scanned document attached.\r\n" + ("x" * 76 + "\r\n") * (size // 78)
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{uuid.uuid4()}@lan.local>\r\n\r\n{body}").encode()


def delivered(upstream, mailbox: str, subject: str, timeout: float = 20) -> email.message.Message:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for raw in upstream.messages(mailbox):
            msg = email.message_from_bytes(raw)
            if msg["Subject"] == subject:
                return msg
        time.sleep(0.1)
    raise AssertionError(f"{subject!r} never reached {mailbox}\n{upstream.log_tail()}")


def send(port: int, subject: str, *, login=(USER, PASSWORD), source=None, tls_ca=None,
         to: str = f"bob@{DOMAIN}", **kw) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=source) as s:
        if tls_ca:
            s.starttls(context=ssl.create_default_context(cafile=str(tls_ca)))
        if login:
            s.login(*login)
        s.sendmail("printer3@lan.local", [to], message(subject, to=to, **kw))


def test_auth_plain_relays_with_sender_rewritten(make_relay, upstream, idp):
    relay = make_relay(smtp={})
    subject = f"plain {uuid.uuid4()}"
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as s:
        s.ehlo()
        assert "PLAIN" in s.esmtp_features["auth"] and "LOGIN" in s.esmtp_features["auth"]
        s.user, s.password = USER, PASSWORD
        assert s.auth("PLAIN", s.auth_plain)[0] == 235
        s.sendmail("printer3@lan.local", [f"bob@{DOMAIN}"], message(subject))
    msg = delivered(upstream, f"bob@{DOMAIN}", subject)
    assert msg["From"] == f"Printer 3 <{MAILBOX}>"
    assert msg["Reply-To"] == "Printer 3 <printer3@lan.local>"
    assert "Scanned document attached." in msg.get_payload()
    relayed = relay.wait_log("message_relayed")
    assert relayed["user"] == USER and relayed["mailbox"] == MAILBOX and relayed["recipients"] == 1
    assert relayed["upstream_reply"].startswith("250")
    summary = relay.wait_log("smtp_session", outcome="relayed")
    assert summary["messages"] == 1 and summary["peer"] == "127.0.0.1" and summary["seconds"] >= 0
    assert PASSWORD not in relay.log_path.read_text()


def test_auth_login_mechanism(make_relay, upstream):
    relay = make_relay(smtp={})
    subject = f"login {uuid.uuid4()}"
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as s:
        s.ehlo()
        s.user, s.password = USER, PASSWORD
        code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        assert code == 235
        s.sendmail("printer3@lan.local", [f"bob@{DOMAIN}"], message(subject))
    delivered(upstream, f"bob@{DOMAIN}", subject)


def test_local_starttls_and_plaintext_auth_refused(make_relay, upstream, pki):
    relay = make_relay(smtp={"tls": "starttls", "cert_file": str(pki.cert_file),
                             "key_file": str(pki.key_file), "allow_plaintext_auth": False})
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as s:
        s.ehlo()
        assert s.has_extn("starttls")
        code, text = s.docmd("AUTH", "PLAIN " + "AHNjYW5uZXIAeA==")
        assert code == 538, text
    subject = f"starttls {uuid.uuid4()}"
    send(relay.smtp_port, subject, tls_ca=pki.ca_file)
    delivered(upstream, f"bob@{DOMAIN}", subject)


def test_implicit_tls_listener(make_relay, upstream, pki):
    relay = make_relay(smtp={"tls": "implicit", "cert_file": str(pki.cert_file),
                             "key_file": str(pki.key_file), "allow_plaintext_auth": False})
    subject = f"smtps {uuid.uuid4()}"
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    with smtplib.SMTP_SSL("127.0.0.1", relay.smtp_port, context=ctx, timeout=30) as s:
        s.login(USER, PASSWORD)
        s.sendmail("a@lan.local", [f"bob@{DOMAIN}"], message(subject))
    delivered(upstream, f"bob@{DOMAIN}", subject)


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed")
def test_swaks_client(make_relay, upstream):
    relay = make_relay(smtp={})
    subject = f"swaks {uuid.uuid4()}"
    result = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{relay.smtp_port}", "--auth", "PLAIN",
         "--auth-user", USER, "--auth-password", PASSWORD, "--from", "scanner7@lan.local",
         "--to", f"carol@{DOMAIN}", "--header", f"Subject: {subject}", "--timeout", "30"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  250 2.0.0 Ok: queued" in result.stdout
    msg = delivered(upstream, f"carol@{DOMAIN}", subject)
    assert MAILBOX in msg["From"]


def test_unauthenticated_only_from_listed_networks(make_relay, upstream, idp):
    relay = make_relay(smtp={"unauthenticated": [{"network": "127.0.0.2/32", "mailbox": MAILBOX}]})
    subject = f"printer {uuid.uuid4()}"
    send(relay.smtp_port, subject, login=None, source=("127.0.0.2", 0))
    delivered(upstream, f"bob@{DOMAIN}", subject)
    # a device without a password spools by default (printers drop scans on a 4xx)
    assert relay.wait_log("message_queued")["mailbox"] == MAILBOX
    requests_before = idp.token_requests
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30, source_address=("127.0.0.3", 0)) as s:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            s.sendmail("x@lan.local", [f"bob@{DOMAIN}"], message("open relay?"))
    assert refused.value.smtp_code == 530
    denied = relay.wait_log("relay_denied")
    assert denied["peer"] == "127.0.0.3"
    assert idp.token_requests == requests_before


def test_bad_password_is_535_and_never_reaches_upstream(make_relay, idp):
    relay = make_relay(smtp={})
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as s:
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            s.login(USER, "wrong password")
        assert failed.value.smtp_code == 535
        code, _ = s.docmd("MAIL", "FROM:<x@lan.local>")
        assert code == 530
    event = relay.wait_log("auth_failed")
    assert event["user"] == USER and event["reason"] == "bad_password" and event["peer"] == "127.0.0.1"
    # no upstream session was opened: Dovecot never had a token to introspect
    assert idp.introspections == 0
    assert not relay.find("upstream_connected")
    assert "wrong password" not in relay.log_path.read_text()


def test_fifty_logins_cost_one_token_request(make_relay, upstream, idp):
    relay = make_relay(smtp={})

    def one(i: int) -> None:
        send(relay.smtp_port, f"burst {i}", to=f"burst@{DOMAIN}")

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        list(pool.map(one, range(50)))
    assert idp.grants["refresh_token"] == 1
    assert idp.token_requests == 1
    upstream.wait_for_messages(f"burst@{DOMAIN}", 50)


def test_rotated_refresh_token_survives_restart(make_relay, upstream, idp, tmp_path):
    relay = make_relay(smtp={})
    config_before = relay.config_path.read_bytes()
    send(relay.smtp_port, "before restart")
    assert idp.grants["refresh_token"] == 1  # the seed was redeemed and rotated: it is dead now
    relay.stop()
    store = (tmp_path / "state" / "tokens.enc").read_bytes()
    seed = relay.config["accounts"][0]["refresh_token"]
    assert seed.encode() not in store
    relay.start()
    assert relay.config_path.read_bytes() == config_before  # the config file is never rewritten
    subject = f"after restart {uuid.uuid4()}"
    send(relay.smtp_port, subject)
    delivered(upstream, f"bob@{DOMAIN}", subject)
    assert idp.grants["refresh_token"] == 2
    assert not relay.find("token_failed")


def test_identity_platform_down_is_4xx_then_recovers(make_relay, upstream, idp):
    relay = make_relay(smtp={})
    idp.down = True
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        send(relay.smtp_port, "while down")
    assert refused.value.smtp_code == 451
    assert b"temporarily unavailable" in refused.value.smtp_error
    failed = relay.wait_log("token_failed")
    assert failed["transient"] is True and failed["account"] == MAILBOX
    idp.down = False
    subject = f"recovered {uuid.uuid4()}"
    deadline = time.monotonic() + 15
    while True:  # the relay holds a failing account back for a second or two, then tries again
        try:
            send(relay.smtp_port, subject)
            break
        except smtplib.SMTPSenderRefused as exc:
            assert exc.smtp_code == 451
            assert time.monotonic() < deadline, "no recovery within 15 s"
            time.sleep(0.5)
    delivered(upstream, f"bob@{DOMAIN}", subject)


def test_invalid_grant_is_one_clear_event_and_4xx(make_relay, idp):
    # armed before the relay starts: its token keeper asks for a token at once, and when it
    # asked before the fault was armed, the relay held a good token and the fault hit the next test
    relay = make_relay(smtp={}, start=False)
    idp.fail_next(1, "invalid_grant", [70008], retry_after=0)
    relay.start()
    for _ in range(3):
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            send(relay.smtp_port, "expired")
        assert refused.value.smtp_code == 451
        assert b"needs attention" in refused.value.smtp_error
    events = relay.find("token_failed")
    assert len(events) == 1  # one event, not one per login; and the identity platform asked once
    assert idp.token_requests == 1
    event = events[0]
    assert event["account"] == MAILBOX and event["code"] == "AADSTS70008"
    assert "re-authorise" in event["action"] and event["level"] == "error"
    assert event["state"] == "needs-auth"


def test_upstream_replies_pass_through(make_relay, upstream):
    relay = make_relay(smtp={})
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as s:
        s.login(USER, PASSWORD)
        s.mail("printer3@lan.local")
        code, text = s.rcpt(f"reject-me@{DOMAIN}")
        assert code == 550 and b"5.1.1" in text
        code, text = s.rcpt(f"tempfail@{DOMAIN}")
        assert 400 <= code < 500
        code, _ = s.rcpt(f"dave@{DOMAIN}")
        assert code == 250
        code, _ = s.data(message("partial"))
        assert code == 250
    delivered(upstream, f"dave@{DOMAIN}", "partial")


def test_sender_keep_passes_upstream_sendas_rejection(make_relay, upstream):
    relay = make_relay(smtp={"sender": "keep"})
    with pytest.raises(smtplib.SMTPDataError) as rejected:
        send(relay.smtp_port, "keep")
    assert 500 <= rejected.value.smtp_code < 600


def test_size_limit_is_advertised_and_enforced(make_relay):
    relay = make_relay(smtp={"max_message_size": "2KB"})
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as s:
        s.ehlo()
        assert s.esmtp_features["size"] == "2048"
        s.login(USER, PASSWORD)
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            s.sendmail("a@lan.local", [f"bob@{DOMAIN}"], message("big", size=4096))
        assert refused.value.smtp_code == 552


def test_rejected_cached_token_is_refreshed_once(make_relay, upstream, idp):
    # every session logs in anew (no pool), with the cached token
    relay = make_relay(smtp={}, upstream_extra={"smtp_pool_idle": 0})
    send(relay.smtp_port, "warm the cache")
    idp.revoke_access_tokens()  # Exchange would say 535 for a revoked token
    subject = f"after revoke {uuid.uuid4()}"
    send(relay.smtp_port, subject)
    delivered(upstream, f"bob@{DOMAIN}", subject)
    assert idp.grants["refresh_token"] == 2
    assert relay.find("upstream_auth_retry")


def test_check_upstream_reports_each_account(tmp_path, pki, idp, upstream):
    from tests.support.relayproc import RelayProcess

    proc = RelayProcess(tmp_path, relay_config(tmp_path, pki, idp, upstream, smtp={}))
    proc.write_config()
    result = subprocess.run([sys.executable, "-m", "relay365", "check", "-c", str(proc.config_path),
                             "--upstream"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith(MAILBOX))
    assert "token: ok" in line and "smtp: ok" in line


def test_accounts_command_shows_needs_auth_with_code(make_relay, idp):
    # no parked upstream session: the next client needs a token, and meets the invalid_grant
    relay = make_relay(smtp={}, upstream_extra={"smtp_pool_idle": 0})
    send(relay.smtp_port, "healthy")
    ok = subprocess.run([sys.executable, "-m", "relay365", "accounts", "-c", str(relay.config_path)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    row = next(line.split() for line in ok.stdout.splitlines() if line.startswith(MAILBOX))
    assert row[1:3] == ["refresh_token", "ok"]
    idp.revoke_access_tokens()
    idp.fail_next(1, "invalid_grant", [70008], retry_after=0)
    with pytest.raises(smtplib.SMTPSenderRefused):
        send(relay.smtp_port, "after revocation")
    relay.wait_log("token_failed")
    result = subprocess.run([sys.executable, "-m", "relay365", "accounts", "-c", str(relay.config_path),
                             "--json"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1  # monitoring can alert on the exit code
    row = __import__("json").loads(result.stdout)["accounts"][0]
    assert row["state"] == "needs-auth" and row["code"] == "AADSTS70008"
    assert "re-authorise" in row["action"] and row["refresh_token_updated"] > 0
    table = subprocess.run([sys.executable, "-m", "relay365", "accounts", "-c", str(relay.config_path)],
                           capture_output=True, text=True, timeout=60).stdout
    assert "needs-auth (AADSTS70008)" in table and "re-authorise" in table


def test_upstream_session_is_reused_by_the_next_client_of_the_mailbox(make_relay, upstream, idp):
    relay = make_relay(smtp={})
    subjects = [f"pooled {i} {uuid.uuid4()}" for i in range(3)]
    for i, subject in enumerate(subjects):  # three client sessions in turn, like a scanner
        send(relay.smtp_port, subject)
        # the session is parked in the background after the client's QUIT: wait for it, or the
        # next client may simply be quicker (and rightly get a new upstream session)
        deadline = time.monotonic() + 10
        while len(relay.find("upstream_parked")) < i + 1:
            assert time.monotonic() < deadline, relay.log_text()
            time.sleep(0.05)
    for subject in subjects:
        delivered(upstream, f"bob@{DOMAIN}", subject)
    assert len(relay.find("upstream_connected")) == 1
    assert len(relay.find("upstream_reused")) == 2
    assert idp.password_grants == 1  # Dovecot checked one XOAUTH2 login for three messages


def test_a_parked_session_the_server_closed_is_replaced_transparently(tmp_path, pki, idp, upstream,
                                                                       make_relay):
    from tests.support.forwarder import Gate

    gate = Gate(upstream.smtp_port)
    gate.open()
    try:
        config = relay_config(tmp_path, pki, idp, upstream, smtp={})
        config["upstream"]["smtp"]["port"] = gate.port
        relay = make_relay(config)
        send(relay.smtp_port, f"first {uuid.uuid4()}")
        relay.wait_log("upstream_parked")
        gate.shut()  # Office 365 drops the idle connection the relay parked
        gate.open()
        subject = f"after the drop {uuid.uuid4()}"
        send(relay.smtp_port, subject)  # the client never notices
        delivered(upstream, f"bob@{DOMAIN}", subject)
        assert len(relay.find("upstream_connected")) == 2
        # the dead parked session was noticed when taken (the close had arrived) or on MAIL
        assert not relay.find("upstream_reused") or relay.find("upstream_reuse_failed")
    finally:
        gate.shut()


def test_pool_off(make_relay, upstream):
    relay = make_relay(smtp={}, upstream_extra={"smtp_pool_idle": 0})
    send(relay.smtp_port, f"a {uuid.uuid4()}")
    send(relay.smtp_port, f"b {uuid.uuid4()}")
    assert len(relay.find("upstream_connected")) == 2 and not relay.find("upstream_reused")


def test_rset_between_messages_costs_office_365_nothing(make_relay, upstream):
    """Clients that RSET (or EHLO again) before every message: the upstream session has no
    transaction open then, so it hears no RSET. Postfix's disconnect line counts the commands."""
    relay = make_relay(smtp={}, upstream_extra={"smtp_pool_idle": 0})
    marker = uuid.uuid4().hex
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as s:
        s.login(USER, PASSWORD)
        for n in range(3):
            assert s.rset()[0] == 250
            s.sendmail("a@lan.local", [f"bob@{DOMAIN}"], message(f"{marker} {n}"))
        s.ehlo()
        # a transaction the client abandons: that one the upstream must hear ended
        assert s.mail("a@lan.local")[0] == 250
        assert s.rcpt(f"bob@{DOMAIN}")[0] == 250
        assert s.rset()[0] == 250
        s.sendmail("a@lan.local", [f"bob@{DOMAIN}"], message(f"{marker} after"))
    for n in range(3):
        delivered(upstream, f"bob@{DOMAIN}", f"{marker} {n}")
    delivered(upstream, f"bob@{DOMAIN}", f"{marker} after")
    relay.stop()
    summary = ""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        lines = [ln for ln in upstream.logs().splitlines()
                 if "disconnect from" in ln and "data=4" in ln]
        if lines:
            summary = lines[-1]
            break
        time.sleep(0.2)
    assert "mail=5 rcpt=5 data=4 rset=1 " in summary, summary
