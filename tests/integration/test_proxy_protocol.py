"""PROXY protocol v1/v2 with real HAProxy in front of relay365."""

from __future__ import annotations

import shutil
import smtplib
import socket
import subprocess
import time
import uuid

import pytest

from tests.integration.conftest import DOMAIN, MAILBOX
from tests.integration.test_smtp_relay import delivered, message
from tests.support.upstream import free_port

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")]


@pytest.fixture
def haproxy(tmp_path):
    procs = []

    def start(backend_port: int, send_proxy: str) -> int:
        port = free_port()
        cfg = tmp_path / f"haproxy-{port}.cfg"
        cfg.write_text(f"""global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server relay 127.0.0.1:{backend_port} {send_proxy}
""")
        log = tmp_path / f"haproxy-{port}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=out, stderr=out)
        procs.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return port
            except OSError:
                time.sleep(0.05)
        raise AssertionError("haproxy did not start: " + log.read_text()[-500:])

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("send_proxy", ["send-proxy", "send-proxy-v2"])
def test_real_client_address_through_haproxy(make_relay, upstream, haproxy, send_proxy):
    relay = make_relay(smtp={"proxy_protocol": True, "trusted_proxies": ["127.0.0.1/32"],
                             "unauthenticated": [{"network": "127.0.0.9/32", "mailbox": MAILBOX}]})
    front = haproxy(relay.smtp_port, send_proxy)
    subject = f"via haproxy {send_proxy} {uuid.uuid4()}"
    # no password: allowed only because the *real* client is in the unauthenticated network
    with smtplib.SMTP("127.0.0.1", front, timeout=30, source_address=("127.0.0.9", 0)) as s:
        s.sendmail("scanner@lan.local", [f"bob@{DOMAIN}"], message(subject))
    delivered(upstream, f"bob@{DOMAIN}", subject)
    # haproxy's own start-up probe also arrives as a proxied session (from 127.0.0.1), so look
    # for the client's session by its address rather than taking the first one logged
    assert relay.wait_log("proxied", peer="127.0.0.9")["proxy"] == "127.0.0.1"
    # unauthenticated devices spool by default: delivered above, after a 250 from the spool
    assert relay.wait_log("smtp_session", peer="127.0.0.9")["outcome"] == "queued"
    # another real client through the same proxy is not let in without a password
    with smtplib.SMTP("127.0.0.1", front, timeout=30, source_address=("127.0.0.10", 0)) as s:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            s.sendmail("x@lan.local", [f"bob@{DOMAIN}"], message("not allowed"))
        assert refused.value.smtp_code == 530


def test_proxy_header_from_untrusted_address_is_refused(make_relay):
    relay = make_relay(smtp={"proxy_protocol": True, "trusted_proxies": ["127.0.0.1/32"],
                             "unauthenticated": [{"network": "127.0.0.9/32", "mailbox": MAILBOX}]})
    sock = socket.create_connection(("127.0.0.1", relay.smtp_port), source_address=("127.0.0.11", 0),
                                    timeout=5)
    try:
        sock.sendall(b"PROXY TCP4 127.0.0.9 127.0.0.1 5555 25\r\n")
        assert sock.recv(100) == b""  # closed without a greeting ...
    except ConnectionResetError:
        pass  # ... or reset, since our header was still unread
    finally:
        sock.close()
    assert relay.wait_log("connection_refused")["reason"] == "untrusted_proxy"


def test_imap_listener_behind_haproxy_v2(make_relay, upstream, haproxy):
    pytest.importorskip("relay365.imap.core")
    relay = make_relay(imap={"proxy_protocol": True, "trusted_proxies": ["127.0.0.1/32"]})
    front = haproxy(relay.imap_port, "send-proxy-v2")
    sock = socket.create_connection(("127.0.0.1", front), source_address=("127.0.0.12", 0), timeout=10)
    assert sock.recv(200).startswith(b"* OK")
    sock.sendall(b"a1 LOGOUT\r\n")
    sock.recv(200)
    sock.close()
    assert relay.wait_log("imap_session", peer="127.0.0.12")["outcome"] == "no_login"


def test_pop3_listener_behind_haproxy_v1(make_relay, upstream, haproxy):
    import poplib

    from tests.integration.conftest import PASSWORD, USER

    relay = make_relay(pop3={"proxy_protocol": True, "trusted_proxies": ["127.0.0.1/32"]})
    front = haproxy(relay.pop3_port, "send-proxy")
    pop = poplib.POP3("127.0.0.1", front, timeout=30)
    pop.sock.close()  # reconnect from a distinct source address to find our session in the log
    sock = socket.create_connection(("127.0.0.1", front), source_address=("127.0.0.13", 0), timeout=10)
    pop.sock, pop.file = sock, sock.makefile("rb")
    assert pop._getresp().startswith(b"+OK")
    pop.user(USER)
    pop.pass_(PASSWORD)
    assert pop.stat()[0] >= 0
    pop.quit()
    summary = relay.wait_log("pop3_session", peer="127.0.0.13")
    assert summary["outcome"] == "spliced" and summary["user"] == USER
