"""Sending through Microsoft Graph (send_via: graph | auto), end to end.

Real clients (smtplib, swaks) -> relay365 as a subprocess -> the Graph stand-in (HTTPS, tokens
checked against the fake identity platform) -> the real Dovecot over LMTP, so every assertion about
what a recipient got reads a real Maildir. `auto` meets a real `535 5.7.139` from the real Postfix
(`smtp-off@`, see tests/support/upstream.py).
"""

from __future__ import annotations

import email
import itertools
import json
import shutil
import smtplib
import subprocess
import sys
import time
import uuid

import pytest

from relay365.standins.fakegraph import FakeGraph
from tests.integration.conftest import DOMAIN, MAILBOX, PASSWORD, PASSWORD_HASH, USER, relay_config

pytestmark = pytest.mark.integration

BOB, CAROL, DAVE = f"bob@{DOMAIN}", f"carol@{DOMAIN}", f"dave@{DOMAIN}"
SMTP_OFF = f"smtp-off@{DOMAIN}"
FAST_RETRIES = {"retry_base": "1s", "retry_cap": "2s", "rescan_interval": "1s", "throttle_pause": "1s"}


@pytest.fixture(scope="module")
def graph(pki, idp, upstream):
    def deliver(mailbox: str, rcpts: list[str], mime: bytes) -> None:
        upstream.lmtp_deliver(mailbox, rcpts, mime)

    with FakeGraph(pki.cert_file, pki.key_file, check_token=idp.valid_token,
                   token_scopes=idp.token_scopes, deliver=deliver) as server:
        yield server


@pytest.fixture(autouse=True)
def _graph_clean(graph):
    graph.reset()
    yield
    assert not graph.errors


def graph_config(tmp_path, pki, idp, upstream, graph, *, send_via: str = "graph",
                 delivery: str = "direct", mailbox: str = MAILBOX, **kw) -> dict:
    config = relay_config(tmp_path, pki, idp, upstream, smtp={}, spool=FAST_RETRIES,
                          upstream_extra={"graph": {"base_url": graph.base_url}}, **kw)
    config["accounts"] = [{"mailbox": mailbox, "refresh_token": idp.issue_refresh_token(mailbox),
                           "send_via": send_via}]
    config["users"] = [{"username": USER, "password_hash": PASSWORD_HASH, "mailbox": mailbox,
                        "delivery": delivery}]
    return config


def message(subject: str, to: str = BOB, cc: str | None = None, size: int = 0) -> bytes:
    body = "Scanned document attached.\r\n" + ("x" * 76 + "\r\n") * (size // 78)
    cc_line = f"Cc: {cc}\r\n" if cc else ""
    return (f"From: Printer 3 <printer3@lan.local>\r\nTo: {to}\r\n{cc_line}Subject: {subject}\r\n"
            f"Message-ID: <{uuid.uuid4()}@lan.local>\r\n\r\n{body}").encode()


def send(port: int, rcpts: list[str], data: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.login(USER, PASSWORD)
        s.mail("printer3@lan.local")
        for r in rcpts:
            code, text = s.rcpt(r)
            assert code == 250, text
        return s.data(data)


def find(upstream, mailbox: str, subject: str, timeout: float = 20) -> list[email.message.Message]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [m for m in map(email.message_from_bytes, upstream.messages(mailbox))
                 if m["Subject"] == subject]
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{subject!r} never reached {mailbox}\n{upstream.log_tail()}")


def none_for(upstream, mailbox: str, subject: str) -> bool:
    return not [m for m in map(email.message_from_bytes, upstream.messages(mailbox))
                if m["Subject"] == subject]


def test_direct_send_goes_through_graph_with_a_graph_token(make_relay, tmp_path, pki, idp,
                                                             upstream, graph):
    relay = make_relay(graph_config(tmp_path, pki, idp, upstream, graph))
    subject = f"graph direct {uuid.uuid4()}"
    code, text = send(relay.smtp_port, [BOB], message(subject))
    assert (code, text) == (250, b"2.0.0 OK sent through Microsoft Graph")
    msg = find(upstream, BOB, subject)[0]
    assert MAILBOX in msg["From"]  # sender: rewrite applies to Graph too
    sends = graph.sends(202)
    assert len(sends) == 1 and sends[0].mailbox == MAILBOX
    # the token was redeemed for Graph (its own resource), not for Office 365 mail
    assert sends[0].scopes >= {f"{graph.url}/Mail.Send"}
    assert not any("outlook" in s or "office" in s for s in sends[0].scopes)
    assert relay.find("message_relayed", via="graph")
    assert not relay.find("upstream_connected")  # no SMTP session was ever opened
    assert graph.sent_items[MAILBOX.lower()]  # a MIME send always lands in Sent Items


def test_envelope_decides_recipients_bcc_hidden_and_extra_header_dropped(make_relay, tmp_path, pki,
                                                                          idp, upstream, graph):
    relay = make_relay(graph_config(tmp_path, pki, idp, upstream, graph))
    subject = f"graph bcc {uuid.uuid4()}"
    # envelope: bob (in To) and carol (in no header: a Bcc); header Cc dave is not in the envelope
    code, _ = send(relay.smtp_port, [BOB, CAROL], message(subject, to=BOB, cc=DAVE))
    assert code == 250
    bob, carol = find(upstream, BOB, subject)[0], find(upstream, CAROL, subject)[0]
    for got in (bob, carol):
        assert got["Bcc"] is None  # nobody sees who else got it blind
        assert got["Cc"] is None  # dave was taken out: the client never asked to send to him
    assert none_for(upstream, DAVE, subject)
    assert relay.find("graph_header_recipients_dropped", dropped=[DAVE])


def test_spooled_message_goes_through_graph(make_relay, tmp_path, pki, idp, upstream, graph):
    relay = make_relay(graph_config(tmp_path, pki, idp, upstream, graph, delivery="spool"))
    subject = f"graph spool {uuid.uuid4()}"
    code, text = send(relay.smtp_port, [BOB], message(subject))
    assert code == 250 and text.startswith(b"2.0.0 OK queued as")
    find(upstream, BOB, subject)
    relay.wait_log("spool_delivered")
    assert len(graph.sends(202)) == 1


def test_429_storm_in_the_spool_waits_retry_after_and_delivers_once(make_relay, tmp_path, pki, idp,
                                                                    upstream, graph):
    graph.fail_next(2, 429, "ApplicationThrottled", retry_after=2)
    relay = make_relay(graph_config(tmp_path, pki, idp, upstream, graph, delivery="spool"))
    subject = f"graph 429 {uuid.uuid4()}"
    assert send(relay.smtp_port, [BOB], message(subject))[0] == 250
    assert len(find(upstream, BOB, subject, timeout=30)) == 1
    relay.wait_log("spool_delivered")
    time.sleep(1)
    assert len(find(upstream, BOB, subject)) == 1  # once, not once per attempt
    times = [r.at for r in graph.sends()]
    assert [r.status for r in graph.sends()] == [429, 429, 202]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= 1.9 for g in gaps), gaps  # Retry-After: 2 honoured (throttle_pause is 1 s)
    assert len(relay.find("spool_throttled")) == 2


def test_graph_busy_is_4xx_in_direct_mode_and_nothing_is_delivered(make_relay, tmp_path, pki, idp,
                                                                    upstream, graph):
    relay = make_relay(graph_config(tmp_path, pki, idp, upstream, graph))
    subject = f"graph 503 {uuid.uuid4()}"
    graph.fail_next(1, 503, "ServiceUnavailable", retry_after=5)
    code, text = send(relay.smtp_port, [BOB], message(subject))
    assert code == 451 and text.startswith(b"4.4.2"), text
    graph.fail_next(1, 429, "ApplicationThrottled", retry_after=5)
    code, _ = send(relay.smtp_port, [BOB], message(subject))
    assert code == 451
    time.sleep(0.5)
    assert none_for(upstream, BOB, subject)
    assert send(relay.smtp_port, [BOB], message(subject))[0] == 250  # Graph back: it goes
    assert len(find(upstream, BOB, subject)) == 1


def test_graph_refusals_are_5xx(make_relay, tmp_path, pki, idp, upstream, graph):
    relay = make_relay(graph_config(tmp_path, pki, idp, upstream, graph))
    code, text = send(relay.smtp_port, [f"reject-me@{DOMAIN}"], message("bad rcpt",
                                                                         to=f"reject-me@{DOMAIN}"))
    assert code == 550 and text.startswith(b"5.1.1"), text
    code, text = send(relay.smtp_port, [BOB], message("too big", size=3_200_000))
    assert code == 552 and text.startswith(b"5.3.4"), text
    graph.fail_next(1, 403, "ErrorAccessDenied", retry_after=None)
    code, text = send(relay.smtp_port, [BOB], message("denied"))
    assert code == 550 and text.startswith(b"5.7.1"), text
    assert relay.find("graph_send_failed", graph_code="ErrorAccessDenied")[0]["action"]


def test_auto_switches_to_graph_on_535_5_7_139_once_and_remembers(make_relay, tmp_path, pki, idp,
                                                                  upstream, graph):
    relay = make_relay(graph_config(tmp_path, pki, idp, upstream, graph, send_via="auto",
                                    mailbox=SMTP_OFF))
    first, second = f"auto 1 {uuid.uuid4()}", f"auto 2 {uuid.uuid4()}"
    assert send(relay.smtp_port, [BOB], message(first))[0] == 250
    assert send(relay.smtp_port, [CAROL], message(second))[0] == 250
    find(upstream, BOB, first)
    find(upstream, CAROL, second)
    switched = relay.find("send_via_switched")
    assert len(switched) == 1 and "5.7.139" in switched[0]["reason"]
    assert len(relay.find("upstream_connected", mailbox=SMTP_OFF)) == 1  # the second never tried SMTP
    assert len(graph.sends(202)) == 2
    out = subprocess.run([sys.executable, "-m", "relay365", "accounts", "-c", str(relay.config_path)],
                         capture_output=True, text=True, timeout=60)
    row = next(line for line in out.stdout.splitlines() if line.startswith(SMTP_OFF))
    assert row.rstrip().endswith("graph (auto)"), out.stdout
    saved = json.loads((tmp_path / "state" / "accounts.json").read_text())["accounts"]
    assert saved[0]["sending_via"] == "graph" and saved[0]["graph_since"]


def test_auto_stays_on_smtp_while_smtp_works(make_relay, tmp_path, pki, idp, upstream, graph):
    relay = make_relay(graph_config(tmp_path, pki, idp, upstream, graph, send_via="auto"))
    subject = f"auto smtp {uuid.uuid4()}"
    code, text = send(relay.smtp_port, [BOB], message(subject))
    assert code == 250 and b"sent through Microsoft Graph" not in text
    find(upstream, BOB, subject)
    assert not graph.requests and not relay.find("send_via_switched")


def test_auto_in_the_spool_switches_too(make_relay, tmp_path, pki, idp, upstream, graph):
    relay = make_relay(graph_config(tmp_path, pki, idp, upstream, graph, send_via="auto",
                                    mailbox=SMTP_OFF, delivery="spool"))
    subject = f"auto spool {uuid.uuid4()}"
    assert send(relay.smtp_port, [BOB], message(subject))[0] == 250
    assert len(find(upstream, BOB, subject)) == 1
    relay.wait_log("spool_delivered")
    assert len(relay.find("send_via_switched")) == 1


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed")
def test_swaks_through_graph(make_relay, tmp_path, pki, idp, upstream, graph):
    relay = make_relay(graph_config(tmp_path, pki, idp, upstream, graph))
    subject = f"swaks graph {uuid.uuid4()}"
    result = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{relay.smtp_port}", "--auth", "PLAIN",
         "--auth-user", USER, "--auth-password", PASSWORD, "--from", "scanner7@lan.local",
         "--to", CAROL, "--header", f"Subject: {subject}", "--timeout", "30"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  250 2.0.0 OK sent through Microsoft Graph" in result.stdout
    find(upstream, CAROL, subject)


def test_graph_down_with_fallback_spool_is_250_and_delivered_once(make_relay, tmp_path, pki, idp,
                                                                  upstream, graph):
    config = graph_config(tmp_path, pki, idp, upstream, graph)
    config["users"][0]["fallback"] = "spool"
    relay = make_relay(config)
    subject = f"graph fallback {uuid.uuid4()}"
    graph.fail_next(1, 503, "ServiceUnavailable", retry_after=1)
    code, text = send(relay.smtp_port, [BOB, CAROL], message(subject, cc=CAROL))
    assert code == 250 and b"Microsoft Graph" not in text, text  # the spool holds it
    relay.wait_log("spool_delivered", timeout=30)
    assert len(find(upstream, BOB, subject)) == 1 and len(find(upstream, CAROL, subject)) == 1
    time.sleep(1)
    assert len(find(upstream, BOB, subject)) == 1  # once, not once per attempt
    assert len(graph.sends(202)) == 1


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_through_graph(make_relay, tmp_path, pki, idp, upstream, graph):
    relay = make_relay(graph_config(tmp_path, pki, idp, upstream, graph))
    subject = f"curl graph {uuid.uuid4()}"
    mail = tmp_path / "mail.eml"
    mail.write_bytes(message(subject, to=DAVE))
    result = subprocess.run(
        ["curl", "-sS", f"smtp://127.0.0.1:{relay.smtp_port}", "--user", f"{USER}:{PASSWORD}",
         "--mail-from", "printer3@lan.local", "--mail-rcpt", DAVE, "--upload-file", str(mail)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    find(upstream, DAVE, subject)
    assert len(graph.sends(202)) == 1
