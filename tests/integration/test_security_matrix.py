"""The security matrix, in CI: open relay, password guessing, TLS, secrets - against the real relay.

Open relay: every route (a local user, an `smtp.unauthenticated` network, neither) x auth state
(none, a failed AUTH, a good AUTH) x local/external sender x local/external recipient x PROXY
protocol or not - 48 sessions; what counts is what reached Postfix (its `message-id=` log line),
not just the reply. Password guessing: one budget per client (an IPv6 client by its /64) and one
per user, shared by SMTP, IMAP and POP3; the replies never tell an existing user from an unknown
one. TLS: local listeners refuse TLS < 1.2, the upstream is verified (ca_file and system store,
certificate and name). Secrets: none in logs, metrics, the status page or replies, with faults
injected; core dumps off.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import itertools
import poplib
import smtplib
import socket
import ssl
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import trustme

from tests.integration.conftest import CLIENT_SECRET, DOMAIN, MAILBOX, PASSWORD, USER, relay_config
from tests.integration.test_operations import free_port
from tests.support.relayproc import RelayProcess
from tests.support.upstream import MailUpstream, missing_binaries, xoauth2_string

pytestmark = pytest.mark.integration

NETWORK_SRC, OUTSIDE_SRC = "127.0.0.9", "127.0.0.20"  # plain listener: real source addresses
PROXIED_IN, PROXIED_OUT = "192.0.2.9", "198.51.100.7"  # behind the trusted proxy (127.0.0.1)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, pki, idp):
    """A private pair: external recipients bounce into the sender's mailbox, so keep them here."""
    if missing := missing_binaries():
        pytest.skip(f"needs {', '.join(missing)}")
    with MailUpstream(tmp_path_factory.mktemp("matrix-upstream"), pki, f"{idp.url}/introspect",
                      grant_url=f"{idp.url}/grant", domain=DOMAIN) as server:
        yield server


@contextlib.contextmanager
def running(tmp_path: Path, config: dict, name: str):
    relay = RelayProcess(tmp_path, config, name=name)
    try:
        yield relay.start()
    finally:
        relay.stop()


class ProxySMTP(smtplib.SMTP):
    """smtplib that sends a PROXY v1 header first, as HAProxy's send-proxy does."""

    def __init__(self, *args, proxy_src: str | None = None, **kw) -> None:
        self.proxy_src = proxy_src
        super().__init__(*args, **kw)

    def _get_socket(self, host, port, timeout):
        sock = super()._get_socket(host, port, timeout)
        if self.proxy_src:
            sock.sendall(proxy_header(self.proxy_src))
        return sock


def proxy_header(src: str) -> bytes:
    family, dst = ("TCP6", "::1") if ":" in src else ("TCP4", "127.0.0.1")
    return f"PROXY {family} {src} {dst} 40000 25\r\n".encode()


# -- open relay ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def relays(tmp_path_factory, pki, idp, upstream):
    tmp = tmp_path_factory.mktemp("matrix")
    nets = [{"network": f"{NETWORK_SRC}/32", "mailbox": MAILBOX, "delivery": "direct"},
            {"network": f"{PROXIED_IN}/32", "mailbox": MAILBOX, "delivery": "direct"}]
    plain = relay_config(tmp, pki, idp, upstream, smtp={"unauthenticated": nets})
    # the proxy's own address is in a network too: a relay that judged the proxy instead of
    # the client behind it would be open to everyone behind it
    proxied = relay_config(tmp, pki, idp, upstream, smtp={
        "unauthenticated": [*nets, {"network": "127.0.0.1/32", "mailbox": MAILBOX,
                                    "delivery": "direct"}],
        "proxy_protocol": True, "trusted_proxies": ["127.0.0.1/32"]})
    proxied["state_dir"] = str(tmp / "state2")
    with running(tmp, plain, "plain") as a, running(tmp, proxied, "proxied") as b:
        yield {"plain": a, "proxy": b}


AUTH_STATES = ("none", "failed", "ok")
SOURCES = ("network", "outside")
SENDERS = {"local": f"ceo@{DOMAIN}", "external": "someone@evil.test"}
RCPTS = {"local": f"bob@{DOMAIN}", "external": "victim@elsewhere.test"}
CASES = list(itertools.product(AUTH_STATES, SOURCES, SENDERS, RCPTS, ("plain", "proxy")))


def _session(relay, via: str, source: str, auth: str, sender: str, rcpt: str) -> tuple[int, str]:
    """One transaction; (the first non-2xx/3xx code or 250, the Message-ID sent)."""
    msgid = f"{uuid.uuid4()}@matrix"
    body = (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: matrix\r\nMessage-ID: <{msgid}>\r\n\r\n"
            "hello\r\n").encode()
    if via == "plain":
        src = NETWORK_SRC if source == "network" else OUTSIDE_SRC
        client = ProxySMTP("127.0.0.1", relay.smtp_port, timeout=30, source_address=(src, 0))
    else:
        src = PROXIED_IN if source == "network" else PROXIED_OUT
        client = ProxySMTP("127.0.0.1", relay.smtp_port, timeout=30, proxy_src=src)
    with client as s:
        s.ehlo()
        if auth != "none":
            s.user, s.password = USER, PASSWORD if auth == "ok" else "wrong"
            with contextlib.suppress(smtplib.SMTPAuthenticationError):
                s.auth("PLAIN", s.auth_plain)
        for code, _ in (s.mail(sender), s.rcpt(rcpt)):
            if code >= 400:
                return code, msgid
        return s.data(body)[0], msgid


def _landed(upstream, msgid: str) -> int:
    """How often Postfix accepted the message (cleanup logs each message-id it queues)."""
    log = (upstream.root / "log/postfix.log").read_text(errors="replace")
    return log.count(f"message-id=<{msgid}>")


def _expected(case: tuple[str, ...]) -> tuple[int, int]:
    """(reply code, copies upstream) for a case. Relaying needs a good AUTH or a source in an
    unauthenticated network - the real client's, behind a proxy. An allowed external recipient
    is passed on to Office 365, which relays for its authenticated mailbox; the test upstream
    answers it with 550 5.7.1 (delivers to @example.test only), which shows it got there."""
    auth, source, _sender, rcpt, _via = case
    if not (auth == "ok" or source == "network"):
        return 530, 0
    return (250, 1) if rcpt == "local" else (550, 0)


SENT: dict[tuple[str, ...], tuple[int, str]] = {}  # case -> (reply code, Message-ID)


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_open_relay(relays, case):
    auth, source, sender, rcpt, via = case
    SENT[case] = _session(relays[via], via, source, auth, SENDERS[sender], RCPTS[rcpt])
    assert SENT[case][0] == _expected(case)[0]


def test_open_relay_what_reached_upstream(upstream):
    """After the cases above: each allowed local message reached Postfix once, nothing else did."""
    assert len(SENT) == len(CASES), "run with the cases above"
    expected = {case: _expected(case)[1] for case in CASES}
    deadline = time.monotonic() + 20
    while True:  # postlogd writes a moment after Postfix's 250
        landed = {case: _landed(upstream, msgid) for case, (_, msgid) in SENT.items()}
        if landed == expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert {c: n for c, n in landed.items() if n != expected[c]} == {}
    # what relayed went as the mailbox, whatever the client claimed
    while len(bob := [m for m in upstream.messages(f"bob@{DOMAIN}") if b"@matrix>" in m]) < sum(
            expected.values()) and time.monotonic() < deadline:
        time.sleep(0.1)  # LMTP delivery follows the queueing
    assert len(bob) == sum(expected.values())
    assert all(m.startswith(f"Return-Path: <{MAILBOX}>".encode()) for m in bob)
