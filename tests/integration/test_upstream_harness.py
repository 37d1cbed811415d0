"""Proves the Office 365 stand-in (tests/support/upstream.py) before relay365 tests lean on it.

Real Dovecot and Postfix, real TLS, stdlib clients and swaks; the identity provider is a few lines of
`http.server` here (the project's fake IdP is tested on its own).
"""

from __future__ import annotations

import imaplib
import json
import re
import shutil
import smtplib
import ssl
import subprocess
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs

import pytest

from tests.support.pki import PKI, make_pki
from tests.support.upstream import MailUpstream, missing_binaries, oauthbearer_string, xoauth2_string

MISSING = missing_binaries()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        bool(MISSING),
        reason=f"Postfix/Dovecot not installed (missing: {', '.join(MISSING)}); "
               f"run scripts/install-test-deps.sh",
    ),
]

ALICE = "alice@example.test"
SHARED = "shared@example.test"
GOOD = "good-token-" + "A1b2-C3d4_" * 199  # 2001 characters, the size of a real Exchange token
BAD = "expired-token-" + "x" * 200


class Introspection(BaseHTTPRequestHandler):
    """/introspect (RFC 7662): `good-token-*` is alice's, anything else is inactive.
    /grant (Dovecot's password grant): `app-token-*` may open shared@example.test only."""

    seen: ClassVar[list[dict[str, str]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        form = {k: v[0] for k, v in parse_qs(body).items()}
        if self.path == "/grant":
            status, answer = self.grant(form)
        else:
            token = form.get("token", "")
            self.seen.append({"service": self.headers.get("X-Dovecot-Auth-Service", ""), "token": token})
            active = token.startswith("good-token-")
            status, answer = 200, {"active": True, "username": ALICE} if active else {"active": False}
        reply = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    @staticmethod
    def grant(form: dict[str, str]) -> tuple[int, dict[str, object]]:
        if form.get("password", "").startswith("app-token-") and form.get("username") == SHARED:
            return 200, {"access_token": "opaque", "token_type": "Bearer", "username": SHARED, "active": True}
        return 400, {"error": "invalid_grant"}

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def introspection_url(pki: PKI) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Introspection)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.cert_file, pki.key_file)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}/introspect"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(scope="module")
def upstream(
    tmp_path_factory: pytest.TempPathFactory, pki: PKI, introspection_url: str
) -> Iterator[MailUpstream]:
    with MailUpstream(tmp_path_factory.mktemp("upstream"), pki, introspection_url) as up:
        yield up


@pytest.fixture
def client_tls(pki: PKI) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca_file))


def imap_login(up: MailUpstream, ctx: ssl.SSLContext, token: str, user: str = ALICE) -> imaplib.IMAP4_SSL:
    imap = imaplib.IMAP4_SSL(up.host, up.imap_port, ssl_context=ctx)
    try:
        # First call answers the empty challenge; on failure Dovecot sends the XOAUTH2 error JSON
        # as a challenge, which a client acknowledges with an empty response.
        imap.authenticate("XOAUTH2", lambda ch: xoauth2_string(user, token).encode() if not ch else b"")
    except BaseException:
        imap.shutdown()
        raise
    return imap


def smtp_login(up: MailUpstream, ctx: ssl.SSLContext, token: str = GOOD, user: str = ALICE) -> smtplib.SMTP:
    smtp = smtplib.SMTP(up.host, up.smtp_port, timeout=20)
    try:
        smtp.starttls(context=ctx)
        smtp.ehlo()
        smtp.auth("XOAUTH2", lambda ch=None: xoauth2_string(user, token) if ch is None else "",
                  initial_response_ok=True)
    except BaseException:
        smtp.close()
        raise
    return smtp


def message(sender: str, to: str, subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg.set_content(f"{subject}\n")
    return msg


# --------------------------------------------------------------------------------------- IMAP


def test_imap_offers_xoauth2_only(upstream: MailUpstream, client_tls: ssl.SSLContext) -> None:
    imap = imaplib.IMAP4_SSL(upstream.host, upstream.imap_port, ssl_context=client_tls)
    try:
        caps = set(imap.capabilities)
    finally:
        imap.shutdown()
    assert "AUTH=XOAUTH2" in caps
    assert not {"AUTH=PLAIN", "AUTH=LOGIN", "AUTH=OAUTHBEARER"} & caps
    assert "LOGINDISABLED" in caps


def test_imap_xoauth2_good_token(upstream: MailUpstream, client_tls: ssl.SSLContext) -> None:
    assert len(GOOD) > 2000
    imap = imap_login(upstream, client_tls, GOOD)
    try:
        assert imap.select("INBOX")[0] == "OK"
    finally:
        imap.logout()
    assert Introspection.seen[-1] == {"service": "imap", "token": GOOD}


@pytest.mark.parametrize(("user", "token"), [(ALICE, BAD), ("bob@example.test", GOOD)],
                         ids=["inactive-token", "token-of-another-mailbox"])
def test_imap_xoauth2_refused(
    upstream: MailUpstream, client_tls: ssl.SSLContext, user: str, token: str
) -> None:
    with pytest.raises(imaplib.IMAP4.error, match=r"AUTHENTICATIONFAILED"):
        imap_login(upstream, client_tls, token, user)


def test_imap_serves_delivered_messages_byte_exact(
    upstream: MailUpstream, client_tls: ssl.SSLContext
) -> None:
    raws = [message("x@example.net", ALICE, f"bulk {i}").as_bytes().replace(b"\n", b"\r\n")
            for i in range(200)]
    big = message("x@example.net", ALICE, "big").as_bytes().replace(b"\n", b"\r\n") + b"y" * 76 * 340_000
    upstream.clear()
    upstream.deliver_many(ALICE, raws)
    upstream.deliver(ALICE, big)
    assert upstream.messages(ALICE) == [*raws, big]
    imap = imap_login(upstream, client_tls, GOOD)
    try:
        assert imap.select("INBOX", readonly=True) == ("OK", [b"201"])
        _, data = imap.fetch("1", "(BODY.PEEK[])")
        assert data[0][1] == raws[0]
        _, data = imap.fetch("201", "(RFC822.SIZE)")
        assert data[0] == f"201 (RFC822.SIZE {len(big)})".encode()
    finally:
        imap.logout()
    upstream.clear()
    assert upstream.messages(ALICE) == []


# --------------------------------------------------------------------------------------- SMTP


def test_smtp_submission_delivers_to_mailbox(upstream: MailUpstream, client_tls: ssl.SSLContext) -> None:
    smtp = smtp_login(upstream, client_tls)
    try:
        assert smtp.ehlo_resp is not None and b"SIZE 36700160" in smtp.ehlo_resp
        smtp.send_message(message(ALICE, "bob@example.test", "hello bob"))
    finally:
        smtp.quit()
    (got,) = upstream.wait_for_messages("bob@example.test", 1)
    assert b"Subject: hello bob\r\n" in got
    assert Introspection.seen[-1] == {"service": "smtp", "token": GOOD}


def test_smtp_accepts_3000_char_token(upstream: MailUpstream, client_tls: ssl.SSLContext) -> None:
    smtp_login(upstream, client_tls, token=GOOD + "z" * 1000).quit()


def test_smtp_auth_requires_starttls(upstream: MailUpstream) -> None:
    with smtplib.SMTP(upstream.host, upstream.smtp_port, timeout=20) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        assert not smtp.has_extn("auth")
        code, reply = smtp.docmd("AUTH", "XOAUTH2")
        assert code == 530 and b"STARTTLS" in reply


def test_smtp_bad_token_is_535(upstream: MailUpstream, client_tls: ssl.SSLContext) -> None:
    with pytest.raises(smtplib.SMTPAuthenticationError) as err:
        smtp_login(upstream, client_tls, token=BAD)
    assert err.value.smtp_code == 535


def test_smtp_unauthenticated_cannot_send(upstream: MailUpstream, client_tls: ssl.SSLContext) -> None:
    with smtplib.SMTP(upstream.host, upstream.smtp_port, timeout=20) as smtp:
        smtp.starttls(context=client_tls)
        with pytest.raises(smtplib.SMTPRecipientsRefused) as err:
            smtp.sendmail(ALICE, ["bob@example.test"], b"Subject: x\r\n\r\nx\r\n")
    assert err.value.recipients["bob@example.test"][0] // 100 == 5


def test_smtp_send_as_another_mailbox_refused_after_data(
    upstream: MailUpstream, client_tls: ssl.SSLContext
) -> None:
    smtp = smtp_login(upstream, client_tls)
    try:
        with pytest.raises(smtplib.SMTPDataError) as err:
            smtp.send_message(message("carol@example.test", "bob@example.test", "spoof"))
    finally:
        smtp.close()
    assert err.value.smtp_code == 553 and b"not owned by user alice@example.test" in err.value.smtp_error


@pytest.mark.parametrize(("rcpt", "code", "status"), [
    ("reject-me@example.test", 550, b"5.1.1"),
    ("tempfail@example.test", 451, b"4.3.0"),
])
def test_smtp_recipient_rejections_pass_through(
    upstream: MailUpstream, client_tls: ssl.SSLContext, rcpt: str, code: int, status: bytes
) -> None:
    smtp = smtp_login(upstream, client_tls)
    try:
        smtp.mail(ALICE)
        got_code, reply = smtp.rcpt(rcpt)
    finally:
        smtp.quit()
    assert (got_code, reply[:5]) == (code, status)


def test_swaks_starttls_then_xoauth2_offered(upstream: MailUpstream) -> None:
    # swaks 20201014 (Debian 12) has no XOAUTH2 (added in 20240103): check the TLS side only.
    swaks = shutil.which("swaks")
    if swaks is None:
        pytest.skip("swaks not installed")
    out = subprocess.run(
        [swaks, "--server", upstream.host, "--port", str(upstream.smtp_port), "--tls",
         "--quit-after", "HELO", "--ehlo", "client.example.test"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    before, _, after = out.stdout.partition(" -> STARTTLS")
    assert "AUTH" not in before
    assert re.search(r"<~\s+250-AUTH XOAUTH2\s*$", after, re.M), out.stdout


# ------------------------------------------------------------------------------- lifecycle


def test_second_instance_with_password_grant_and_oauthbearer(
    tmp_path: Path, pki: PKI, introspection_url: str, upstream: MailUpstream, client_tls: ssl.SSLContext
) -> None:
    grant_url = introspection_url.replace("/introspect", "/grant")
    with MailUpstream(tmp_path, pki, introspection_url, grant_url=grant_url,
                      mechanisms=("xoauth2", "oauthbearer")) as other:
        assert {other.imap_port, other.smtp_port}.isdisjoint({upstream.imap_port, upstream.smtp_port})
        assert other.name != upstream.name and other.root is not None
        imap_login(other, client_tls, "app-token-1", SHARED).logout()
        with pytest.raises(imaplib.IMAP4.error, match=r"AUTHENTICATIONFAILED"):
            imap_login(other, client_tls, "app-token-1", "bob@example.test")
        imap = imaplib.IMAP4_SSL(other.host, other.imap_port, ssl_context=client_tls)
        try:
            assert "AUTH=OAUTHBEARER" in imap.capabilities
            gs2 = oauthbearer_string(SHARED, "app-token-2").encode()
            assert imap.authenticate("OAUTHBEARER", lambda ch: gs2 if not ch else b"\x01")[0] == "OK"
        finally:
            imap.logout()
        pidfiles = ("run/master.pid", "spool/pid/master.pid")
        pids = [int((other.root / p).read_text().split()[0]) for p in pidfiles]
    assert all(_state(pid) == "Z" for pid in pids)  # gone (or an unreaped zombie, see upstream._pid_alive)
    assert "daemon started" in other.logs() and "starting up" in other.logs()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "Z"
