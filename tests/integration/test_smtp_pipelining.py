"""Upstream PIPELINING (RFC 2920) against real Postfix, watched on the wire.

relay365 talks to the test Postfix through `RecordingForwarder` (tests/support/recorder.py), which
ends the relay's TLS, records every read in each direction, and passes it on unchanged. A read
from the relay is what one write of the relay became: MAIL and RCPTs in one read, before Postfix
said anything, is pipelining. A second Postfix (`pipelining=False`) offers no PIPELINING: there
every command must wait for the reply to the one before, a reply between every two reads.
Recipients and mailboxes are the real Dovecot ones.
"""

from __future__ import annotations

import email
import smtplib
import ssl
import time
import uuid

import pytest
import requests

from tests.integration.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    DOMAIN,
    MAILBOX,
    PASSWORD,
    USER,
    relay_config,
)
from tests.support.recorder import RecordingForwarder
from tests.support.upstream import MailUpstream

pytestmark = pytest.mark.integration

BOB, CAROL, REFUSED = f"bob@{DOMAIN}", f"carol@{DOMAIN}", f"reject-me@{DOMAIN}"
SMTP_OFF = f"smtp-off@{DOMAIN}"


def access_token(idp, pki) -> str:
    """A token for MAILBOX from the fake identity platform, as a direct client gets one."""
    rt = idp.issue_refresh_token(MAILBOX, client_id=CLIENT_ID)
    r = requests.post(f"{idp.url}/contoso.test/oauth2/v2.0/token", verify=str(pki.ca_file), data={
        "grant_type": "refresh_token", "refresh_token": rt, "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET, "scope": "https://outlook.office.com/SMTP.Send"}, timeout=10)
    r.raise_for_status()
    return r.json()["access_token"]


def direct(server: MailUpstream, idp, pki) -> smtplib.SMTP:
    """A client of Postfix itself, logged in as MAILBOX."""
    token = access_token(idp, pki)
    s = smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30)
    s.starttls(context=ssl.create_default_context(cafile=str(pki.ca_file)))
    s.ehlo()
    s.auth("XOAUTH2", lambda challenge=None: f"user={MAILBOX}\x01auth=Bearer {token}\x01\x01",
           initial_response_ok=True)
    return s


@pytest.fixture(scope="module")
def refused_reply(upstream, idp, pki) -> tuple[int, bytes]:
    """What Postfix itself answers a direct client's RCPT TO:<reject-me@...>."""
    with direct(upstream, idp, pki) as s:
        assert s.mail(MAILBOX)[0] == 250
        return s.rcpt(REFUSED)


@pytest.fixture(scope="module")
def plain_upstream(tmp_path_factory, pki, idp, upstream):
    """A second Postfix + Dovecot whose EHLO has no PIPELINING (and refuses pipelined DATA)."""
    with MailUpstream(tmp_path_factory.mktemp("plain-upstream"), pki, f"{idp.url}/introspect",
                      grant_url=f"{idp.url}/grant", domain=DOMAIN, pipelining=False) as server:
        yield server


def forwarder_to(server: MailUpstream, pki) -> RecordingForwarder:
    return RecordingForwarder(server.smtp_port, pki.ca_file, pki.cert_file, pki.key_file)


@pytest.fixture
def wire(upstream, pki):
    with forwarder_to(upstream, pki) as fwd:
        yield fwd


@pytest.fixture
def plain_wire(plain_upstream, pki):
    with forwarder_to(plain_upstream, pki) as fwd:
        yield fwd


def through(fwd: RecordingForwarder, tmp_path, pki, idp, upstream, *, smtp=None, **kw) -> dict:
    return relay_config(tmp_path, pki, idp, upstream, smtp=smtp or {}, upstream_extra={
        "smtp": {"host": "127.0.0.1", "port": fwd.port, "tls": "implicit"}}, **kw)


def message(subject: str) -> bytes:
    return (f"From: scanner7@lan.local\r\nTo: {BOB}, {CAROL}, {REFUSED}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{uuid.uuid4()}@lan.local>\r\n\r\nscan\r\n").encode()


def landed(server: MailUpstream, mailbox: str, subject: str, timeout: float = 20) -> int:
    """How many copies of `subject` are in `mailbox`, once at least one is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = sum(email.message_from_bytes(raw)["Subject"] == subject
                for raw in server.messages(mailbox))
        if n:
            time.sleep(0.5)  # a second copy would follow the first within the same LMTP run
            return sum(email.message_from_bytes(raw)["Subject"] == subject
                       for raw in server.messages(mailbox))
        time.sleep(0.1)
    raise AssertionError(f"{subject!r} never reached {mailbox}\n{server.log_tail()}")


def transaction(fwd: RecordingForwarder) -> list[tuple[str, list[bytes]]]:
    """The reads from the relay's MAIL FROM on (the session's EHLO and AUTH left out)."""
    reads = fwd.commands()
    start = next(i for i, (d, lines) in enumerate(reads)
                 if d == "up" and any(ln.startswith(b"MAIL FROM:") for ln in lines))
    return reads[start:]


def up_commands(reads) -> list[list[bytes]]:
    """What the relay sent, read by read, as command names (content reads left out)."""
    return [[ln.split(b":")[0].split(b" ")[0] for ln in lines] for d, lines in reads
            if d == "up" and lines and lines[0][:4] in (b"MAIL", b"RCPT", b"DATA", b"RSET", b"QUIT")]


def send_three(port: int, subject: str) -> list[tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.login(USER, PASSWORD)
        said = [s.mail("scanner7@lan.local")]
        said += [s.rcpt(r) for r in (BOB, REFUSED, CAROL)]
        said.append(s.data(message(subject)))
    return said


# -- a device's session: MAIL goes with the first RCPT -------------------------------------------

def test_live_mail_goes_with_the_first_rcpt_and_each_recipient_hears_its_own_reply(
        make_relay, tmp_path, pki, idp, upstream, wire, refused_reply):
    relay = make_relay(through(wire, tmp_path, pki, idp, upstream))
    subject = f"pipelined live {uuid.uuid4()}"
    mail, bob, refused, carol, data = send_three(relay.smtp_port, subject)
    assert mail[0] == 250 and bob[0] == 250 and carol[0] == 250
    assert refused == refused_reply  # Postfix's own words, for that recipient only
    assert data[0] == 250 and b"queued" in data[1]
    assert landed(upstream, BOB, subject) == 1 and landed(upstream, CAROL, subject) == 1
    reads = transaction(wire)
    # one write: MAIL and the first RCPT, before Postfix answered either; then its two replies
    assert reads[0] == ("up", [f"MAIL FROM:<{MAILBOX}>".encode(), f"RCPT TO:<{BOB}>".encode()])
    assert reads[1][0] == "down" and [ln[:3] for ln in reads[1][1]] == [b"250", b"250"]
    # the client sends the others one by one, each waiting for its reply: so does the relay
    assert up_commands(reads)[:4] == [[b"MAIL", b"RCPT"], [b"RCPT"], [b"RCPT"], [b"DATA"]]
    content = next(lines for d, lines in reads if d == "up" and b"Subject: " + subject.encode() in lines)
    assert content[-1] == b"."  # the message and its end in one write


def test_live_refused_held_mail_is_each_rcpts_reply_and_the_session_carries_on(
        make_relay, tmp_path, pki, idp, upstream, wire):
    config = through(wire, tmp_path, pki, idp, upstream)
    config["accounts"].append({"mailbox": SMTP_OFF, "refresh_token": idp.issue_refresh_token(SMTP_OFF)})
    config["users"].append({**config["users"][0], "username": "off", "mailbox": SMTP_OFF})
    relay = make_relay(config)
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as s:
        s.login("off", PASSWORD)
        assert s.mail("a@lan.local")[0] == 250  # held: Office 365 has not seen it yet
        first, second = s.rcpt(BOB), s.rcpt(CAROL)
        assert first == second and first[0] == 535 and b"5.7.139" in first[1]
        assert s.rset()[0] == 250
        assert s.noop()[0] == 250
    reads = transaction(wire)
    assert up_commands(reads)[0] == [b"MAIL", b"RCPT"]
    replies = reads[1][1]
    # MAIL's 535 and the RCPT's 503: both read, so the relay's next command meets its own reply
    assert [ln[:3] for ln in replies] == [b"535", b"503"]
    assert [b"RCPT"] not in up_commands(reads)  # CAROL never went upstream
    assert [b"RSET"] not in up_commands(reads[:2])  # and no RSET for a transaction never opened
    assert not relay.find("smtp_internal_error")


def test_live_all_recipients_refused_then_the_next_message_on_the_same_session(
        make_relay, tmp_path, pki, idp, upstream, wire):
    relay = make_relay(through(wire, tmp_path, pki, idp, upstream))
    subject = f"after refusals {uuid.uuid4()}"
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as s:
        s.login(USER, PASSWORD)
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail("a@lan.local", [REFUSED], message("never"))  # smtplib then says RSET
        s.sendmail("a@lan.local", [BOB], message(subject))
    assert landed(upstream, BOB, subject) == 1
    assert len(wire.sessions) == 1  # one upstream session for both
    cmds = up_commands(transaction(wire))
    assert cmds[:3] == [[b"MAIL", b"RCPT"], [b"RSET"], [b"MAIL", b"RCPT"]]


# -- the spool: MAIL and every RCPT in one write ---------------------------------------------------

def test_spool_sends_the_whole_envelope_in_one_write_and_delivers_once(
        make_relay, tmp_path, pki, idp, upstream, wire, refused_reply):
    config = through(wire, tmp_path, pki, idp, upstream)
    config["users"][0]["delivery"] = "spool"
    relay = make_relay(config)
    subject = f"pipelined spool {uuid.uuid4()}"
    said = send_three(relay.smtp_port, subject)
    assert all(code == 250 for code, _ in said[:4]) and said[4][1].startswith(b"2.0.0 OK queued")
    assert landed(upstream, BOB, subject) == 1 and landed(upstream, CAROL, subject) == 1
    failed = relay.wait_log("spool_recipients_failed", timeout=20)
    assert failed["recipients"] == 1 and failed["reason"] == f"550 {refused_reply[1].decode()}"
    assert relay.wait_log("spool_delivered")["recipients"] == 2
    reads = transaction(wire)
    assert reads[0] == ("up", [f"MAIL FROM:<{MAILBOX}>".encode(), f"RCPT TO:<{BOB}>".encode(),
                               f"RCPT TO:<{REFUSED}>".encode(), f"RCPT TO:<{CAROL}>".encode()])
    assert reads[1][0] == "down" and [ln[:3] for ln in reads[1][1]] == [b"250", b"250", b"550", b"250"]
    assert up_commands(reads)[1] == [b"DATA"]


def test_spool_nobody_accepted_is_rset_not_data(make_relay, tmp_path, pki, idp, upstream, wire):
    config = through(wire, tmp_path, pki, idp, upstream)
    config["users"][0]["delivery"] = "spool"
    relay = make_relay(config)
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as s:
        s.login(USER, PASSWORD)
        s.sendmail("a@lan.local", [REFUSED], message("nobody"))
    relay.wait_log("spool_failed", timeout=20)
    cmds = up_commands(transaction(wire))
    assert cmds[0] == [b"MAIL", b"RCPT"] and cmds[1] == [b"RSET"] and [b"DATA"] not in cmds
    quit_reply = [lines for d, lines in wire.commands() if d == "down"][-1]
    assert quit_reply[0].startswith(b"221")  # in step to the end: QUIT heard its own reply


# -- a server without PIPELINING: one command at a time -------------------------------------------

def test_without_pipelining_every_command_waits_for_its_reply(make_relay, tmp_path, pki, idp,
                                                              plain_upstream, plain_wire,
                                                              refused_reply):
    relay = make_relay(through(plain_wire, tmp_path, pki, idp, plain_upstream))
    subject = f"one at a time {uuid.uuid4()}"
    mail, bob, refused, carol, data = send_three(relay.smtp_port, subject)
    assert (mail[0], bob[0], carol[0], data[0]) == (250, 250, 250, 250)
    assert refused == refused_reply
    assert landed(plain_upstream, BOB, subject) == 1 and landed(plain_upstream, CAROL, subject) == 1
    reads = transaction(plain_wire)
    assert up_commands(reads)[:5] == [[b"MAIL"], [b"RCPT"], [b"RCPT"], [b"RCPT"], [b"DATA"]]
    assert [d for d, _ in reads[:8]] == ["up", "down"] * 4  # a reply between every two commands


def test_spool_without_pipelining_every_command_waits_too(make_relay, tmp_path, pki, idp,
                                                         plain_upstream, plain_wire):
    config = through(plain_wire, tmp_path, pki, idp, plain_upstream)
    config["users"][0]["delivery"] = "spool"
    relay = make_relay(config)
    subject = f"spool one at a time {uuid.uuid4()}"
    send_three(relay.smtp_port, subject)
    assert landed(plain_upstream, BOB, subject) == 1 and landed(plain_upstream, CAROL, subject) == 1
    assert relay.wait_log("spool_delivered", timeout=20)["recipients"] == 2
    assert up_commands(transaction(plain_wire))[:5] == [[b"MAIL"], [b"RCPT"], [b"RCPT"], [b"RCPT"],
                                                        [b"DATA"]]


def test_one_postfix_offers_pipelining_the_other_does_not(upstream, plain_upstream, idp, pki):
    """The premise of the tests above, asked of each Postfix directly."""
    with direct(upstream, idp, pki) as s:
        assert s.has_extn("pipelining")
    with direct(plain_upstream, idp, pki) as s:
        assert not s.has_extn("pipelining")


# -- MAIL parameters ----------------------------------------------------------------------------

def test_a_devices_body_8bitmime_goes_upstream_with_its_size(make_relay, tmp_path, pki, idp,
                                                              upstream, wire):
    """BODY= is a parameter of the 8BITMIME extension, not an extension called BODY: it was
    dropped on the way to Office 365 for every client that declared it."""
    relay = make_relay(through(wire, tmp_path, pki, idp, upstream))
    subject = f"8bit {uuid.uuid4()}"
    body = message(subject).replace(b"scan\r\n", "Größe: 3 Seiten\r\n".encode())
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as s:
        s.login(USER, PASSWORD)
        s.sendmail("a@lan.local", [BOB], body, mail_options=["BODY=8BITMIME"])
    assert landed(upstream, BOB, subject) == 1
    mail = transaction(wire)[0][1][0]
    assert mail.split(b" ", 2)[:2] == [b"MAIL", f"FROM:<{MAILBOX}>".encode()], mail
    assert sorted(p.upper() for p in mail.split()[2:]) == [b"BODY=8BITMIME", b"SIZE=%d" % len(body)], mail
    raw = next(r for r in upstream.messages(BOB) if email.message_from_bytes(r)["Subject"] == subject)
    assert "Größe: 3 Seiten".encode() in raw
