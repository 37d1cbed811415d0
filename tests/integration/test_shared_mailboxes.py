"""Shared mailboxes and several sender addresses, end to end: real IMAP/POP3/SMTP clients through
the relay (a subprocess) into real Dovecot and Postfix.

The stand-ins model Exchange's permissions: Dovecot opens a mailbox for a token only when the fake
identity platform says so (`grant_full_access`: FullAccess), and Postfix takes `MAIL FROM:<x>` from
a login only with SendAs on x (`MailUpstream(send_as=...)`, Add-RecipientPermission).
"""

from __future__ import annotations

import email
import imaplib
import poplib
import smtplib
import subprocess
import sys
import time
import uuid

import pytest

from tests.integration.conftest import DOMAIN, PASSWORD, PASSWORD_HASH, relay_config
from tests.support.relayproc import RelayProcess
from tests.support.upstream import MailUpstream, missing_binaries

pytestmark = pytest.mark.integration

AGENT = f"agent@{DOMAIN}"  # a licensed member of staff: the only refresh token here
HELPDESK = f"helpdesk@{DOMAIN}"  # shared: AGENT has FullAccess
LOCKED = f"locked@{DOMAIN}"  # shared, but AGENT has no FullAccess on it
SCANS = f"scans@{DOMAIN}"  # shared: AGENT has SendAs
BOSS = f"boss@{DOMAIN}"  # AGENT has no SendAs on it
ERP, INVOICES = f"erp@{DOMAIN}", f"invoices@{DOMAIN}"  # ERP has SendAs on INVOICES
RCPT = f"inbox-{uuid.uuid4().hex[:6]}@{DOMAIN}"


@pytest.fixture(scope="module")
def office(tmp_path_factory, pki, idp):
    if missing := missing_binaries():
        pytest.skip(f"needs {', '.join(missing)}")
    with MailUpstream(tmp_path_factory.mktemp("shared-upstream"), pki, f"{idp.url}/introspect",
                      grant_url=f"{idp.url}/grant", domain=DOMAIN,
                      send_as={SCANS: [AGENT], INVOICES: [ERP]}) as server:
        yield server


@pytest.fixture(scope="module")
def relay(tmp_path_factory, pki, idp, office):
    idp.grant_full_access(HELPDESK, AGENT)
    tmp = tmp_path_factory.mktemp("shared-relay")
    config = relay_config(tmp, pki, idp, office, smtp={}, imap={}, pop3={})
    config["accounts"] = [{"mailbox": AGENT, "refresh_token": idp.issue_refresh_token(AGENT)},
                          {"mailbox": ERP, "refresh_token": idp.issue_refresh_token(ERP)}]

    def user(name: str, mailbox: str, **kw: object) -> dict:
        return {"username": name, "password_hash": PASSWORD_HASH, "mailbox": mailbox, **kw}

    config["users"] = [
        user("helpdesk", HELPDESK, account=AGENT), user("locked", LOCKED, account=AGENT),
        user("scans", SCANS, account=AGENT), user("boss", BOSS, account=AGENT),
        user("erp", ERP, send_as=[INVOICES, f"*@orders.{DOMAIN}"], sender="refuse"),
        user("erp-rewrite", ERP, send_as=[INVOICES]),
    ]
    proc = RelayProcess(tmp, config, name="shared").start()
    yield proc
    proc.stop()
    idp.grant_full_access(HELPDESK, AGENT, granted=False)


def _msg(sender: str, subject: str, reply_to: str | None = None) -> bytes:
    extra = f"Reply-To: {reply_to}\r\n" if reply_to else ""
    return (f"From: Someone <{sender}>\r\nTo: {RCPT}\r\n{extra}Subject: {subject}\r\n"
            f"Message-ID: <{uuid.uuid4()}@t>\r\n\r\nbody of {subject}\r\n").encode()


def _send(relay: RelayProcess, user: str, sender: str, subject: str,
          reply_to: str | None = None) -> None:
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=60) as s:
        s.login(user, PASSWORD)
        s.sendmail(sender, [RCPT], _msg(sender, subject, reply_to))


def _received(office: MailUpstream, subject: str, timeout: float = 20) -> email.message.Message:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for raw in office.messages(RCPT):
            msg = email.message_from_bytes(raw)
            if msg["Subject"] == subject:
                return msg
        time.sleep(0.05)
    raise AssertionError(f"no message {subject!r} in {RCPT}\n{office.log_tail()}")


def test_imap_opens_a_shared_mailbox_with_the_delegates_token(relay, office, idp):
    office.deliver(HELPDESK, b"From: a@b\r\nSubject: ticket 1\r\n\r\nhelp!\r\n")
    imap = imaplib.IMAP4("127.0.0.1", relay.imap_port, timeout=60)
    imap.login("helpdesk", PASSWORD)
    assert imap.select("INBOX")[1] == [b"1"]
    body = imap.fetch("1", "(BODY[])")[1][0][1]
    assert body == office.messages(HELPDESK)[0]
    imap.logout()
    relay.wait_log("imap_login", user="helpdesk", mailbox=HELPDESK)


def test_imap_and_pop3_refuse_a_shared_mailbox_without_full_access(relay, office):
    office.deliver(LOCKED, b"From: a@b\r\nSubject: secret\r\n\r\nno\r\n")
    imap = imaplib.IMAP4("127.0.0.1", relay.imap_port, timeout=60)
    with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
        imap.login("locked", PASSWORD)
    imap.logout()
    pop = poplib.POP3("127.0.0.1", relay.pop3_port, timeout=60)
    pop.user("locked")
    with pytest.raises(poplib.error_proto, match="SYS/TEMP"):
        pop.pass_(PASSWORD)
    pop.quit()
    relay.wait_log("imap_upstream_failed", user="locked", mailbox=LOCKED)


def test_pop3_reads_a_shared_mailbox(relay, office):
    office.deliver(HELPDESK, b"From: a@b\r\nSubject: ticket 2\r\n\r\npop!\r\n")
    pop = poplib.POP3("127.0.0.1", relay.pop3_port, timeout=60)
    pop.user("helpdesk")
    pop.pass_(PASSWORD)
    count = pop.stat()[0]
    assert count == len(office.messages(HELPDESK)) >= 1
    assert b"Subject: ticket 2" in b"\r\n".join(pop.retr(count)[1])
    pop.quit()


def test_smtp_sends_as_the_shared_mailbox_with_send_as(relay, office):
    _send(relay, "scans", "printer@lan.local", "scan 1")  # rewritten to the shared mailbox
    msg = _received(office, "scan 1")
    assert msg["Return-Path"] == f"<{SCANS}>"
    assert email.utils.parseaddr(msg["From"])[1] == SCANS
    assert email.utils.parseaddr(msg["Reply-To"])[1] == "printer@lan.local"
    event = relay.wait_log("message_relayed", user="scans")
    assert event["mailbox"] == SCANS


def test_smtp_without_send_as_is_refused_by_office_365(relay):
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=60) as s:
        s.login("boss", PASSWORD)
        with pytest.raises(smtplib.SMTPDataError) as err:
            s.sendmail(BOSS, [RCPT], _msg(BOSS, "not allowed"))
    assert err.value.smtp_code == 553  # Postfix's SendAs answer (Exchange: 554 5.2.252)


def test_send_as_addresses_are_kept_others_refused(relay, office):
    _send(relay, "erp", INVOICES, "invoice 7", reply_to="accounts@lan.local")
    msg = _received(office, "invoice 7")
    assert msg["Return-Path"] == f"<{INVOICES}>"
    assert email.utils.parseaddr(msg["From"]) == ("Someone", INVOICES)
    assert msg["Reply-To"] == "accounts@lan.local"  # kept as the client wrote it
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=60) as s:
        s.login("erp", PASSWORD)
        code, text = s.mail(f"noreply@{DOMAIN}")
    assert code == 550
    assert text.decode() == (f"5.7.60 Not allowed to send as <noreply@{DOMAIN}>; allowed: {ERP}, "
                             f"{INVOICES}, *@orders.{DOMAIN}")


def test_other_senders_are_rewritten_to_the_mailbox(relay, office):
    _send(relay, "erp-rewrite", "ops@lan.local", "report 3")
    msg = _received(office, "report 3")
    assert msg["Return-Path"] == f"<{ERP}>"
    assert email.utils.parseaddr(msg["From"])[1] == ERP


def test_check_upstream_names_the_missing_permission(relay):
    out = subprocess.run([sys.executable, "-m", "relay365", "check", "--upstream", "-c",
                          str(relay.config_path)], capture_output=True, text=True, timeout=120)
    lines = out.stdout.splitlines()
    helpdesk = next(ln for ln in lines if ln.startswith("user helpdesk:"))
    assert f"{HELPDESK} with the token of {AGENT}" in helpdesk
    assert "imap: ok" in helpdesk and "pop3: ok" in helpdesk
    locked = next(ln for ln in lines if ln.startswith("user locked:"))
    assert (f"imap: FAILED upstream refused the login - {AGENT} needs FullAccess on {LOCKED}: "
            f"Add-MailboxPermission -Identity {LOCKED} -User {AGENT} -AccessRights FullAccess") in locked
    assert f"Add-RecipientPermission -Identity {LOCKED} -Trustee {AGENT} -AccessRights SendAs" in locked
    assert out.returncode == 1, out.stdout + out.stderr
