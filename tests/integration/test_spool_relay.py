"""The spool through the whole relay: real clients, relay365 as a subprocess, real Postfix/Dovecot.

Office 365 "goes down" by a `Gate` (tests/support/forwarder.py): a TCP forwarder in front of the
real Postfix that the test opens and shuts, so the relay's upstream address stays the same
across the outage. The relay is killed with SIGKILL at the points the issue names and started
again on the same state_dir; what arrived is counted in the Dovecot mailbox.
"""

from __future__ import annotations

import email
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import DOMAIN, MAILBOX, PASSWORD, USER, relay_config
from tests.support.forwarder import Gate

pytestmark = pytest.mark.integration

BOB = f"bob@{DOMAIN}"
FAST_RETRIES = {"retry_base": "1s", "retry_cap": "2s", "rescan_interval": "1s", "throttle_pause": "1s"}


@pytest.fixture
def gate(upstream):
    g = Gate(upstream.smtp_port)
    yield g
    g.shut()


def spool_config(tmp_path, pki, idp, upstream, gate, *, user: dict | None = None,
                 spool: dict | None = None, **kw) -> dict:
    config = relay_config(tmp_path, pki, idp, upstream, smtp={}, **kw)
    config["upstream"]["smtp"]["port"] = gate.port
    config["users"][0].update(user or {"delivery": "spool"})
    config["spool"] = {**FAST_RETRIES, **(spool or {})}
    return config


def message(subject: str, size: int = 0) -> bytes:
    body = "page\r\n" + ("y" * 98 + "\r\n") * (size // 100)
    return (f"From: Scanner <scanner@printers.lan>\r\nTo: {BOB}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{uuid.uuid4()}@printers.lan>\r\n\r\n{body}").encode()


def transaction(port: int, subject: str, rcpts=(BOB,), size: int = 0) -> tuple[dict, tuple[int, bytes]]:
    """One message: (refused recipients, DATA reply). Raises what smtplib raises."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.login(USER, PASSWORD)
        s.mail("scanner@printers.lan")
        refused = {}
        for r in rcpts:
            code, text = s.rcpt(r)
            if code >= 400:
                refused[r] = (code, text)
        return refused, s.data(message(subject, size))


def arrived(upstream, subject: str, mailbox: str = BOB) -> int:
    return sum(email.message_from_bytes(raw)["Subject"] == subject for raw in upstream.messages(mailbox))


def wait_arrived(upstream, subject: str, n: int = 1, mailbox: str = BOB, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while arrived(upstream, subject, mailbox) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"{subject!r}: {arrived(upstream, subject, mailbox)} of {n} "
                                 f"arrived\n{upstream.log_tail()}")
        time.sleep(0.1)


def queue_cli(relay, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relay365", "queue", *args, "-c", str(relay.config_path)],
                          capture_output=True, text=True, timeout=30)


def queued_ids(relay) -> list[str]:
    d = Path(relay.config["state_dir"]) / "spool" / "queue"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def test_spool_mode_answers_250_from_disk_and_delivers(tmp_path, pki, idp, upstream, gate, make_relay):
    gate.open()
    relay = make_relay(spool_config(tmp_path, pki, idp, upstream, gate))
    subject = f"spooled {uuid.uuid4()}"
    refused, (code, text) = transaction(relay.smtp_port, subject)
    assert refused == {} and code == 250
    assert text.startswith(b"2.0.0 OK queued as "), text
    entry_id = text.decode().rsplit(" ", 1)[1]
    wait_arrived(upstream, subject)
    assert relay.wait_log("spool_delivered", id=entry_id)["mailbox"] == MAILBOX
    assert relay.wait_log("smtp_session")["outcome"] == "queued"
    assert queued_ids(relay) == []
    # the sender was rewritten before it went into the spool, as in direct mode
    msg = next(email.message_from_bytes(r) for r in upstream.messages(BOB)
               if email.message_from_bytes(r)["Subject"] == subject)
    assert MAILBOX in msg["From"]


def test_outage_then_recovery_delivers_everything_in_arrival_order(
        tmp_path, pki, idp, upstream, gate, make_relay):
    relay = make_relay(spool_config(tmp_path, pki, idp, upstream, gate))  # gate shut: O365 is down
    tag = uuid.uuid4().hex[:8]
    ids = []
    for i in range(5):
        _, (code, text) = transaction(relay.smtp_port, f"outage {tag} {i}")
        assert code == 250, text
        ids.append(text.decode().rsplit(" ", 1)[1])
    assert ids == sorted(ids)
    deferred = relay.wait_log("spool_deferred", timeout=15)
    assert "cannot reach upstream" in deferred["error"], deferred
    # the operator sees them, while the daemon runs
    listing = queue_cli(relay, "list")
    assert listing.returncode == 0, listing.stderr
    assert "5 message(s)" in listing.stdout and MAILBOX in listing.stdout
    shown = queue_cli(relay, "show", ids[2])
    assert shown.returncode == 0 and f"outage {tag} 2" in shown.stdout and BOB in shown.stdout
    assert arrived(upstream, f"outage {tag} 0") == 0

    gate.open()  # Office 365 is back
    for i in range(5):
        wait_arrived(upstream, f"outage {tag} {i}")
    delivered = [e["id"] for e in relay.events() if e.get("event") == "spool_delivered"]
    assert delivered == ids  # in order of arrival, each once
    for i in range(5):
        assert arrived(upstream, f"outage {tag} {i}") == 1
    assert queued_ids(relay) == []
    assert "0 message(s)" in queue_cli(relay, "list").stdout


def test_fallback_spools_on_an_outage_and_passes_permanent_errors(
        tmp_path, pki, idp, upstream, gate, make_relay):
    relay = make_relay(spool_config(tmp_path, pki, idp, upstream, gate,
                                    user={"delivery": "direct", "fallback": "spool"}))
    tag = uuid.uuid4().hex[:8]
    # Office 365 down: the client still hears 250, from the spool
    _, (code, text) = transaction(relay.smtp_port, f"fallback {tag} down")
    assert code == 250 and text.startswith(b"2.0.0 OK queued as "), text
    assert "451" in relay.wait_log("smtp_fallback_spool")["reason"]
    gate.open()
    wait_arrived(upstream, f"fallback {tag} down")

    # Office 365 up: delivered directly, Exchange's own reply comes back
    _, (code, text) = transaction(relay.smtp_port, f"fallback {tag} up")
    assert code == 250 and text.startswith(b"2.0.0 Ok: queued as "), text  # Postfix's words
    wait_arrived(upstream, f"fallback {tag} up")

    # a permanent refusal is never spooled: the client hears the 5xx
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as s:
            s.login(USER, PASSWORD)
            s.sendmail("scanner@printers.lan", [f"reject-me@{DOMAIN}"], message(f"fallback {tag} 5xx"))
    assert refused.value.recipients[f"reject-me@{DOMAIN}"][0] == 550

    # one recipient deferred (451), one accepted: the accepted one gets it now, the other is spooled
    refused_rcpts, (code, text) = transaction(relay.smtp_port, f"fallback {tag} mixed",
                                              rcpts=(BOB, f"tempfail@{DOMAIN}"))
    assert refused_rcpts == {} and code == 250
    wait_arrived(upstream, f"fallback {tag} mixed")
    fell = relay.wait_log("smtp_fallback_spool", recipient=f"tempfail@{DOMAIN}")
    assert fell["reason"].startswith("451")
    entry_id = relay.wait_log("message_queued", recipients=1)["id"]
    shown = queue_cli(relay, "show", entry_id)
    recipients = next(line for line in shown.stdout.splitlines() if line.startswith("recipients:"))
    assert recipients.split(None, 1)[1] == f"tempfail@{DOMAIN}"  # only the deferred one
    assert queue_cli(relay, "delete", entry_id).returncode == 0
    assert entry_id not in queued_ids(relay)


def test_without_fallback_an_outage_is_a_4xx(tmp_path, pki, idp, upstream, gate, make_relay):
    relay = make_relay(spool_config(tmp_path, pki, idp, upstream, gate, user={"delivery": "direct"}))
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as s:
        s.login(USER, PASSWORD)
        code, text = s.mail("scanner@printers.lan")
    assert code == 451 and b"4.4.1" in text
    assert queued_ids(relay) == []


def test_token_endpoint_down_is_spooled_and_delivered_when_it_returns(
        tmp_path, pki, idp, upstream, gate, make_relay):
    gate.open()
    idp.down = True
    relay = make_relay(spool_config(tmp_path, pki, idp, upstream, gate,
                                    user={"delivery": "direct", "fallback": "spool"}))
    subject = f"idp down {uuid.uuid4()}"
    _, (code, text) = transaction(relay.smtp_port, subject)
    assert code == 250 and b"queued as" in text
    relay.wait_log("spool_deferred", timeout=15)
    assert arrived(upstream, subject) == 0
    idp.down = False
    wait_arrived(upstream, subject)


def test_sigkill_after_250_loses_nothing(tmp_path, pki, idp, upstream, gate, make_relay):
    config = spool_config(tmp_path, pki, idp, upstream, gate)
    relay = make_relay(config)
    # the keeper's first refresh rotates the refresh token (the fake platform retires the old
    # one): a kill between its answer and the store's rename is the token window of
    # test_chaos.py::test_kill_9_during_a_token_rotation, not this test's point
    relay.wait_log("token_refreshed")
    tag = uuid.uuid4().hex[:8]
    for i in range(3):
        assert transaction(relay.smtp_port, f"kill {tag} {i}")[1][0] == 250
    relay.proc.send_signal(signal.SIGKILL)
    relay.proc.wait(10)
    gate.open()
    again = make_relay(config, name="relay-again")
    for i in range(3):
        wait_arrived(upstream, f"kill {tag} {i}")
    assert again.wait_log("spool_worker_started")["depth"] == 3
    time.sleep(1.5)  # a second delivery would show up by now
    assert [arrived(upstream, f"kill {tag} {i}") for i in range(3)] == [1, 1, 1]


def test_sigkill_while_receiving_accepts_nothing_and_leaves_no_debris(
        tmp_path, pki, idp, upstream, gate, make_relay):
    gate.open()
    config = spool_config(tmp_path, pki, idp, upstream, gate)
    relay = make_relay(config, env={"RELAY365_SPOOL_CRASH_AT": "enqueue_before_rename"})
    subject = f"half {uuid.uuid4()}"
    with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionError)):
        transaction(relay.smtp_port, subject)  # no 250: the relay died before the rename
    relay.proc.wait(10)
    again = make_relay(config, name="relay-again")
    started = again.wait_log("spool_worker_started")
    assert started["swept"] == 1 and started["depth"] == 0
    time.sleep(1)
    assert arrived(upstream, subject) == 0


def test_sigkill_after_upstream_250_delivers_at_most_twice(tmp_path, pki, idp, upstream, gate, make_relay):
    gate.open()
    config = spool_config(tmp_path, pki, idp, upstream, gate)
    relay = make_relay(config, env={"RELAY365_SPOOL_CRASH_AT": "after_upstream_250"})
    subject = f"twice {uuid.uuid4()}"
    assert transaction(relay.smtp_port, subject)[1][0] == 250
    relay.proc.wait(20)  # it dies right after Office 365 said 250
    wait_arrived(upstream, subject)
    again = make_relay(config, name="relay-again")
    again.wait_log("spool_delivered", timeout=20)  # the entry was still there: sent again
    wait_arrived(upstream, subject, n=2)
    time.sleep(1)
    assert arrived(upstream, subject) == 2
    assert queued_ids(again) == []


def test_min_free_space_refuses_with_452_and_recovers_on_reload(
        tmp_path, pki, idp, upstream, gate, make_relay):
    gate.open()
    config = spool_config(tmp_path, pki, idp, upstream, gate, spool={"min_free_space": "1000000GB"})
    relay = make_relay(config)
    subject = f"full {uuid.uuid4()}"
    _, (code, text) = transaction(relay.smtp_port, subject)
    assert (code, text[:5]) == (452, b"4.3.1"), text
    assert relay.wait_log("spool_refused")["reply"].startswith("452 4.3.1")
    config["spool"]["min_free_space"] = "1MB"
    relay.write_config(config)
    relay.proc.send_signal(signal.SIGHUP)
    relay.wait_log("reloaded")
    _, (code, _) = transaction(relay.smtp_port, subject)
    assert code == 250
    wait_arrived(upstream, subject)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs for the state directory; skipped where mounting is not allowed."""
    where = tmp_path / "small"
    where.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (test_min_free_space_* covers the check)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_full_disk_gives_452_loses_nothing_and_recovers(
        tmp_path, pki, idp, upstream, gate, make_relay, small_disk):
    config = spool_config(tmp_path, pki, idp, upstream, gate, spool={"min_free_space": 0})
    config["state_dir"] = str(small_disk)
    relay = make_relay(config)  # gate shut: what is accepted stays in the spool for now
    tag = uuid.uuid4().hex[:8]
    assert transaction(relay.smtp_port, f"disk {tag} before")[1][0] == 250
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # fill the disk up to the last few KB
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    _, (code, text) = transaction(relay.smtp_port, f"disk {tag} full", size=300_000)
    assert (code, text[:5]) == (452, b"4.3.1"), text
    assert list((small_disk / "spool" / "tmp").iterdir()) == []  # no half-written debris left
    filler.unlink()
    assert transaction(relay.smtp_port, f"disk {tag} after")[1][0] == 250
    gate.open()
    wait_arrived(upstream, f"disk {tag} before")
    wait_arrived(upstream, f"disk {tag} after")
    assert arrived(upstream, f"disk {tag} full") == 0
