"""IMAP through relay365 into real Dovecot (IMAPS, XOAUTH2 only), with real clients."""

from __future__ import annotations

import asyncio
import imaplib
import shutil
import smtplib
import socket
import subprocess
import time
import uuid

import pytest

from tests.integration.conftest import DOMAIN, PASSWORD, PASSWORD_HASH, relay_config

pytestmark = pytest.mark.integration
pytest.importorskip("relay365.imap.core")


def make_msg(i: int, size: int = 0, subject: str | None = None) -> bytes:
    body = f"message {i}\r\n" + ("y" * 998 + "\r\n") * (size // 1000)
    return (f"From: sender{i}@lan.local\r\nTo: reader@{DOMAIN}\r\n"
            f"Subject: {subject or f'msg {i}'}\r\nMessage-ID: <{uuid.uuid4()}@t>\r\n\r\n{body}").encode()


@pytest.fixture
def reader(tmp_path, pki, idp, upstream, make_relay):
    """A relay with IMAP (and SMTP) and a fresh, empty mailbox of its own for this test."""

    def start(imap: dict | None = None, **kw):
        mailbox = f"reader-{uuid.uuid4().hex[:8]}@{DOMAIN}"
        user = mailbox.split("@")[0]
        config = relay_config(tmp_path, pki, idp, upstream, smtp={}, imap=imap or {}, **kw)
        config["accounts"].append({"mailbox": mailbox, "refresh_token": idp.issue_refresh_token(mailbox)})
        config["users"].append({"username": user, "password_hash": PASSWORD_HASH, "mailbox": mailbox})
        relay = make_relay(config)
        return relay, user, mailbox

    return start


def _close(client) -> None:
    """aioimaplib's logout leaves its transport open; close it so nothing leaks into later tests."""
    transport = getattr(getattr(client, "protocol", None), "transport", None)
    if transport is not None:
        transport.close()


def login(relay, user: str) -> imaplib.IMAP4:
    imap = imaplib.IMAP4("127.0.0.1", relay.imap_port, timeout=60)
    try:
        imap.login(user, PASSWORD)
    except imaplib.IMAP4.error:
        imap.shutdown()
        raise
    return imap


def test_login_select_fetch_with_upstream_capabilities(reader, upstream, idp):
    relay, user, mailbox = reader()
    upstream.deliver_many(mailbox, [make_msg(i) for i in range(3)])
    imap = imaplib.IMAP4("127.0.0.1", relay.imap_port, timeout=30)
    assert b"AUTH=PLAIN" in imap.welcome and b"relay365 ready" in imap.welcome
    typ, data = imap.login(user, PASSWORD)
    assert typ == "OK" and b"LOGIN completed" in data[0]
    # after login the client sees Dovecot's capabilities, not ours: in the OK and on request
    assert b"[CAPABILITY " in data[0] and b"IDLE" in data[0]
    caps = imap.capability()[1][0].split()
    assert b"IDLE" in caps and b"AUTH=PLAIN" not in caps
    typ, data = imap.select("INBOX")
    assert typ == "OK" and data[0] == b"3"
    typ, data = imap.fetch("2", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert b"Subject: msg 1" in data[0][1]
    imap.logout()
    summary = relay.wait_log("imap_session", user=user)
    assert summary["outcome"] == "spliced" and summary["closed_by"] in ("client", "upstream")
    assert summary["bytes_up"] > 0 and summary["bytes_down"] > 0
    assert PASSWORD not in relay.log_path.read_text()


def test_authenticate_plain_and_aioimaplib(reader, upstream):
    relay, user, mailbox = reader()
    upstream.deliver(mailbox, make_msg(1))
    imap = imaplib.IMAP4("127.0.0.1", relay.imap_port, timeout=30)
    typ, _ = imap.authenticate("PLAIN", lambda _: f"\0{user}\0{PASSWORD}".encode())
    assert typ == "OK"
    assert imap.select("INBOX", readonly=True)[1][0] == b"1"
    imap.logout()

    import aioimaplib

    async def run() -> list:
        client = aioimaplib.IMAP4(host="127.0.0.1", port=relay.imap_port, timeout=30)
        await client.wait_hello_from_server()
        resp = await client.login(user, PASSWORD)
        assert resp.result == "OK"
        resp = await client.select("INBOX")
        assert resp.result == "OK"
        resp = await client.fetch("1", "(RFC822)")
        await client.logout()
        _close(client)
        return resp.lines

    lines = asyncio.run(run())
    assert any(b"message 1" in line for line in lines if isinstance(line, (bytes, bytearray)))


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_imap(reader, upstream):
    relay, user, mailbox = reader()
    upstream.deliver(mailbox, make_msg(7, subject="for curl"))
    result = subprocess.run(["curl", "-sS", "--user", f"{user}:{PASSWORD}",
                             f"imap://127.0.0.1:{relay.imap_port}/INBOX;UID=1"],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert b"Subject: for curl" in result.stdout


def test_wrong_password_never_connects_upstream(reader, idp):
    relay, user, _ = reader()
    imap = imaplib.IMAP4("127.0.0.1", relay.imap_port, timeout=30)
    with pytest.raises(imaplib.IMAP4.error) as failed:
        imap.login(user, "wrong")
    assert "AUTHENTICATIONFAILED" in str(failed.value)
    imap.logout()
    assert idp.introspections == 0 and not relay.find("imap_login")
    assert relay.wait_log("auth_failed", proto="imap")["reason"] == "bad_password"


def test_token_endpoint_down_is_unavailable_and_relay_keeps_running(reader, idp):
    idp.down = True  # from the start, so no token is cached
    relay, user, _ = reader()
    relay.wait_log("token_failed")
    imap = imaplib.IMAP4("127.0.0.1", relay.imap_port, timeout=30)
    with pytest.raises(imaplib.IMAP4.error) as refused:
        imap.login(user, PASSWORD)
    assert "UNAVAILABLE" in str(refused.value)
    imap.logout()
    assert relay.wait_log("imap_token_unavailable")["mailbox"].startswith("reader-")
    idp.down = False
    deadline = time.monotonic() + 15
    while True:  # recovers without a restart
        try:
            login(relay, user).logout()
            break
        except imaplib.IMAP4.error:
            assert time.monotonic() < deadline
            time.sleep(0.5)


def test_session_cap_per_mailbox(reader):
    relay, user, _ = reader(imap={"max_sessions_per_mailbox": 2})
    held = [login(relay, user) for _ in range(2)]
    imap = imaplib.IMAP4("127.0.0.1", relay.imap_port, timeout=30)
    with pytest.raises(imaplib.IMAP4.error) as refused:
        imap.login(user, PASSWORD)
    assert "LIMIT" in str(refused.value)
    imap.logout()
    held[0].logout()
    deadline = time.monotonic() + 5
    while True:  # the place is given back when the session ends
        try:
            login(relay, user).logout()
            break
        except imaplib.IMAP4.error:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    held[1].logout()


def test_25mb_message_fetched_byte_for_byte(reader, upstream):
    relay, user, mailbox = reader()
    big = make_msg(1, size=25 * 1024 * 1024)
    upstream.deliver(mailbox, big)
    imap = login(relay, user)
    imap.select("INBOX", readonly=True)
    typ, data = imap.fetch("1", "(BODY.PEEK[])")
    assert typ == "OK"
    assert data[0][1] == big
    imap.logout()
    assert relay.wait_log("imap_session", user=user)["bytes_down"] > len(big)


def test_idle_sees_a_message_delivered_through_postfix(reader, upstream):
    relay, user, mailbox = reader()

    async def idle_until_exists() -> bytes:
        import aioimaplib

        client = aioimaplib.IMAP4(host="127.0.0.1", port=relay.imap_port, timeout=30)
        await client.wait_hello_from_server()
        await client.login(user, PASSWORD)
        await client.select("INBOX")
        idle = await client.idle_start(timeout=60)
        # deliver through the relay's SMTP side -> Postfix -> LMTP -> Dovecot
        await asyncio.to_thread(_send, relay.smtp_port, mailbox)
        pushed: list = []  # Dovecot may say "* OK Still here" first: IDLE's keepalive
        deadline = asyncio.get_running_loop().time() + 45
        while not any(b"EXISTS" in _bytes(p) for p in pushed):
            left = deadline - asyncio.get_running_loop().time()
            assert left > 0, f"no EXISTS within 45 s of the delivery; pushed: {pushed!r}"
            pushed += await client.wait_server_push(timeout=left)
        client.idle_done()
        await asyncio.wait_for(idle, 30)
        await client.logout()
        _close(client)
        return b" ".join(_bytes(p) for p in pushed)

    def _bytes(p: object) -> bytes:
        return p if isinstance(p, bytes) else str(p).encode()

    def _send(port: int, to: str) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            s.login("scanner", PASSWORD)
            s.sendmail("x@lan.local", [to], make_msg(1, subject="while idling"))

    pushed = asyncio.run(idle_until_exists())
    assert b"EXISTS" in pushed


@pytest.mark.skipif(shutil.which("mbsync") is None, reason="mbsync (isync) not installed")
def test_mbsync_two_way_sync_of_a_few_hundred_messages(reader, upstream, tmp_path):
    relay, user, mailbox = reader()
    upstream.deliver_many(mailbox, [make_msg(i) for i in range(300)])
    local = tmp_path / "local"
    local.mkdir()
    rc = tmp_path / "mbsyncrc"
    passfile = tmp_path / "pass"
    passfile.write_text(PASSWORD)
    rc.write_text(f"""IMAPAccount relay
Host 127.0.0.1
Port {relay.imap_port}
User {user}
PassCmd "cat {passfile}"
SSLType None
AuthMechs LOGIN

IMAPStore remote
Account relay

MaildirStore local
Path {local}/
Inbox {local}/INBOX

Channel sync
Far :remote:
Near :local:
Patterns INBOX
Create Both
Expunge Both
SyncState *
""")

    def mbsync() -> None:
        result = subprocess.run(["mbsync", "-c", str(rc), "-a"], capture_output=True, text=True,
                                timeout=180)
        assert result.returncode == 0, result.stdout + result.stderr

    mbsync()
    pulled = list((local / "INBOX" / "new").iterdir()) + list((local / "INBOX" / "cur").iterdir())
    assert len(pulled) == 300
    # two-way: a message made locally goes up, one delivered upstream comes down
    (local / "INBOX" / "new" / f"{int(time.time())}.local1.host").write_bytes(
        make_msg(999, subject="made locally"))
    upstream.deliver(mailbox, make_msg(1000, subject="arrived upstream"))
    mbsync()
    assert any(b"Subject: made locally" in m for m in upstream.messages(mailbox))
    down = [p.read_bytes() for d in ("new", "cur") for p in (local / "INBOX" / d).iterdir()]
    assert len(down) == 302 and any(b"arrived upstream" in m for m in down)


def test_local_starttls_and_plaintext_injection_refused(reader, pki):
    import ssl as _ssl

    relay, user, _ = reader(imap={"tls": "starttls", "cert_file": str(pki.cert_file),
                                  "key_file": str(pki.key_file), "allow_plaintext_auth": False})
    imap = imaplib.IMAP4("127.0.0.1", relay.imap_port, timeout=30)
    assert "LOGINDISABLED" in imap.capabilities and "STARTTLS" in imap.capabilities
    imap.starttls(_ssl.create_default_context(cafile=str(pki.ca_file)))
    assert imap.login(user, PASSWORD)[0] == "OK"
    imap.logout()
    # a command smuggled in the same packet as STARTTLS must never run after the handshake
    sock = socket.create_connection(("127.0.0.1", relay.imap_port), timeout=10)
    sock.recv(1000)
    sock.sendall(b"a1 STARTTLS\r\na2 LOGIN " + user.encode() + b" x\r\n")
    data = b""
    while True:
        chunk = sock.recv(1000)
        if not chunk:
            break
        data += chunk
    sock.close()
    assert b"BYE" in data or b"BAD" in data
