"""Alerts through the whole relay: relay365 as a subprocess, the fake identity platform answering
AADSTS70008 / AADSTS7000222, a local HTTPS webhook receiver, and alert mail delivered by the
relay's own upstream path into a real Dovecot mailbox (Postfix/Dovecot as Office 365).
"""

from __future__ import annotations

import datetime
import email
import email.policy
import signal
import smtplib
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import CLIENT_ID, CLIENT_SECRET, DOMAIN, MAILBOX, PASSWORD, USER, relay_config
from tests.support.webhook import WebhookReceiver

pytestmark = pytest.mark.integration

OPS = f"ops@{DOMAIN}"
HOOK_TOKEN = "hook-bearer-t0ken"


@pytest.fixture
def hook(pki):
    with WebhookReceiver(pki.cert_file, pki.key_file) as receiver:
        yield receiver


def alerts_config(tmp_path, pki, idp, upstream, hook, *, mail: bool = False, **kw) -> dict:
    config = relay_config(tmp_path, pki, idp, upstream, smtp={}, **kw)
    config["alerts"] = {
        "webhook": {"url": hook.url, "headers": {"Authorization": f"Bearer {HOOK_TOKEN}"},
                    "ca_file": str(pki.ca_file)},
        "interval": "1s"}
    if mail:
        config["alerts"]["mail_to"] = [OPS]
    return config


def send(port: int, subject: str, rcpt: str = f"bob@{DOMAIN}") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.login(USER, PASSWORD)
        s.sendmail("scanner@printers.lan", [rcpt], (
            f"From: scanner@printers.lan\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\npage\r\n").encode())


def no_secret_in(hook: WebhookReceiver, *secrets: str) -> None:
    for raw in hook.raw:
        for s in (CLIENT_SECRET, HOOK_TOKEN, *secrets):
            assert s.encode() not in raw


def test_needs_auth_start_and_clear_reach_the_webhook_once_each(tmp_path, pki, idp, upstream, hook,
                                                                  make_relay):
    config = alerts_config(tmp_path, pki, idp, upstream, hook)
    soon = datetime.datetime.now(datetime.UTC).date() + datetime.timedelta(days=5)
    config["apps"]["default"]["client_secret_expires"] = soon.isoformat()
    first_rt = config["accounts"][0]["refresh_token"]
    idp.fail_next(1, "invalid_grant", [70008], retry_after=0)  # the keeper's first refresh
    relay = make_relay(config)

    (start,) = hook.wait(kind="needs_auth", status="started")
    assert start["subject"] == MAILBOX and "AADSTS70008" in start["title"]
    assert f"relay365 auth {MAILBOX} -c {relay.config_path}" in start["text"]
    assert start["command"] == f"relay365 auth {MAILBOX} -c {relay.config_path}"
    assert "re-authorise" in start["action"]
    (secret,) = hook.wait(kind="secret_expiry", status="started")
    assert secret["stage"] == "7d" and soon.isoformat() in secret["text"]
    headers = hook.received[0][0]
    assert headers["authorization"] == f"Bearer {HOOK_TOKEN}"
    assert headers["content-type"] == "application/json"

    # the operator re-authorises (here: a new seed token in the config, and a reload)
    config["accounts"][0]["refresh_token"] = new_rt = idp.issue_refresh_token(MAILBOX)
    relay.write_config(config)
    relay.proc.send_signal(signal.SIGHUP)
    relay.wait_log("reloaded")
    send(relay.smtp_port, f"after re-auth {uuid.uuid4()}")  # a login redeems the new token
    (clear,) = hook.wait(kind="needs_auth", status="cleared")
    assert clear["key"] == start["key"] and clear["severity"] == "ok"
    time.sleep(2.5)  # two more rounds: nothing more to say
    assert len(hook.bodies(kind="needs_auth")) == 2 and len(hook.bodies(kind="secret_expiry")) == 1
    no_secret_in(hook, first_rt, new_rt)
    assert [e["key"] for e in relay.find("alert_sent")].count(f"needs_auth:{MAILBOX}") == 2


@pytest.fixture
def expired_secret(idp):
    """The app's secret expired a minute ago: the fake identity platform answers AADSTS7000222."""
    idp.add_client(CLIENT_ID, secret=CLIENT_SECRET, app_mailboxes=[f"app@{DOMAIN}"],
                   secret_expires_at=time.time() - 60)
    yield
    idp.add_client(CLIENT_ID, secret=CLIENT_SECRET, app_mailboxes=[f"app@{DOMAIN}"])


def test_an_expired_client_secret_aadsts7000222_is_an_alert(tmp_path, pki, idp, upstream, hook,
                                                             make_relay, expired_secret):
    relay = make_relay(alerts_config(tmp_path, pki, idp, upstream, hook))
    (start,) = hook.wait(kind="needs_auth", status="started")
    assert "AADSTS7000222" in start["title"] and "client secret expired" in start["action"]
    assert start["command"] == f"relay365 check -c {relay.config_path} --upstream"
    assert ("/contoso.test/oauth2/v2.0/token", "refresh_token", 401, True) in [
        (r.path, r.grant_type, r.status, r.with_secret) for r in idp.request_log]
    no_secret_in(hook)


def _alert_mails(upstream, phase: str) -> list[email.message.EmailMessage]:
    mails = [email.message_from_bytes(raw, policy=email.policy.default) for raw in upstream.messages(OPS)]
    return [m for m in mails if (m["X-Relay365-Alert"] or "").startswith(phase)]


def _wait_mails(upstream, phase: str, n: int = 1, timeout: float = 30) -> list[email.message.EmailMessage]:
    deadline = time.monotonic() + timeout
    while len(found := _alert_mails(upstream, phase)) < n:
        assert time.monotonic() < deadline, f"{len(found)} of {n} {phase} alert mails\n{upstream.log_tail()}"
        time.sleep(0.1)
    return found


def test_a_dead_letter_alert_arrives_as_mail_and_is_not_repeated_after_a_restart(
        tmp_path, pki, idp, upstream, hook, make_relay):
    config = alerts_config(tmp_path, pki, idp, upstream, hook, mail=True)
    config["users"][0]["delivery"] = "spool"
    relay = make_relay(config)
    send(relay.smtp_port, f"to nobody {uuid.uuid4()}", rcpt=f"reject-me@{DOMAIN}")
    failed_id = relay.wait_log("spool_failed", timeout=30)["failed_id"]

    (mail,) = _wait_mails(upstream, "started")
    assert mail["Subject"] == f"[relay365 ALERT] message from {MAILBOX} moved to failed/ ({failed_id})"
    assert MAILBOX in mail["From"] and mail["To"] == OPS
    body = mail.get_content()
    assert "550 5.1.1" in body and f"relay365 queue retry {failed_id} -c {relay.config_path}" in body
    hook.wait(kind="spool_failed", status="started")

    relay.stop()  # a restart: the book in state_dir says both channels announced it
    relay.start()
    assert relay.wait_log("alerts_started")["announced"] == {"mail": 1, "webhook": 1}
    time.sleep(3)  # three rounds
    assert len(_alert_mails(upstream, "started")) == 1
    assert len(hook.bodies(kind="spool_failed")) == 1
    assert not relay.find("alert_sent")

    deleted = subprocess.run([sys.executable, "-m", "relay365", "queue", "delete", failed_id, "-c",
                              str(relay.config_path)], capture_output=True, text=True, timeout=30)
    assert deleted.returncode == 0, deleted.stderr
    (cleared,) = _wait_mails(upstream, "cleared")
    assert cleared["Subject"].startswith("[relay365 CLEARED] message from")
    hook.wait(kind="spool_failed", status="cleared")
    assert len(_alert_mails(upstream, "started")) == 1
    state = Path(config["state_dir"]) / "alerts.json"
    assert state.stat().st_mode & 0o777 == 0o600


def test_a_webhook_that_fails_is_logged_and_the_relay_keeps_relaying(tmp_path, pki, idp, upstream,
                                                                      hook, make_relay):
    hook.status = 500
    idp.fail_next(1, "invalid_grant", [70008], retry_after=0)
    relay = make_relay(alerts_config(tmp_path, pki, idp, upstream, hook))
    failed = relay.wait_log("alert_failed")
    assert failed["channel"] == "webhook" and failed["error"] == "webhook 127.0.0.1: HTTP 500"
    assert "s3cretpath" not in relay.log_path.read_text() and HOOK_TOKEN not in relay.log_path.read_text()
    assert relay.proc is not None and relay.proc.poll() is None


def test_a_stuck_spool_starts_and_clears(tmp_path, pki, idp, upstream, hook, make_relay):
    from tests.integration.test_spool_relay import FAST_RETRIES
    from tests.support.forwarder import Gate

    gate = Gate(upstream.smtp_port)  # shut: Office 365 is unreachable
    config = alerts_config(tmp_path, pki, idp, upstream, hook)
    config["upstream"]["smtp"]["port"] = gate.port
    config["users"][0]["delivery"] = "spool"
    config["spool"] = FAST_RETRIES
    config["alerts"]["spool_oldest_after"] = "2s"
    try:
        relay = make_relay(config)
        send(relay.smtp_port, f"stuck {uuid.uuid4()}")
        (start,) = hook.wait(kind="spool_stuck", status="started")
        assert "1 queued message" in start["title"] and "relay365 queue list -c" in start["command"]
        gate.open()
        hook.wait(kind="spool_stuck", status="cleared", timeout=30)
        assert len(hook.bodies(kind="spool_stuck")) == 2
    finally:
        gate.shut()


def test_alerts_added_by_a_reload_announce_what_is_wrong_now(tmp_path, pki, idp, upstream, hook,
                                                             make_relay):
    config = alerts_config(tmp_path, pki, idp, upstream, hook)
    alerts = config.pop("alerts")
    idp.fail_next(1, "invalid_grant", [70008], retry_after=0)
    relay = make_relay(config)
    relay.wait_log("token_failed")
    assert relay.wait_log("alerts_started")["channels"] == []
    config["alerts"] = alerts
    relay.write_config(config)
    relay.proc.send_signal(signal.SIGHUP)
    relay.wait_log("reloaded")
    (start,) = hook.wait(kind="needs_auth", status="started")
    assert start["subject"] == MAILBOX
