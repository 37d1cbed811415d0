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
import urllib.error
import urllib.request
import uuid
import warnings
from pathlib import Path

import pytest
import trustme

from tests.integration.conftest import CLIENT_SECRET, DOMAIN, MAILBOX, PASSWORD, USER, relay_config
from tests.support.relayproc import RelayProcess
from tests.support.upstream import MailUpstream, free_port, missing_binaries, xoauth2_string

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


# -- password guessing ---------------------------------------------------------------------------

class ProxyIMAP(imaplib.IMAP4):
    def __init__(self, host: str, port: int, proxy_src: str | None) -> None:
        self.proxy_src = proxy_src
        super().__init__(host, port, timeout=30)

    def _create_socket(self, timeout):
        sock = super()._create_socket(timeout)
        if self.proxy_src:
            sock.sendall(proxy_header(self.proxy_src))
        return sock


class ProxyPOP3(poplib.POP3):
    def __init__(self, host: str, port: int, proxy_src: str | None) -> None:
        self.proxy_src = proxy_src
        super().__init__(host, port, timeout=30)

    def _create_socket(self, timeout):
        sock = super()._create_socket(timeout)
        if self.proxy_src:
            sock.sendall(proxy_header(self.proxy_src))
        return sock


def _port(relay, proto: str, src: str | None) -> tuple[str, int]:
    """IPv6 sources come in over ::1, IPv4 ones over 127.0.0.1 (each with its PROXY header)."""
    if src and ":" in src:
        return "::1", relay.ports[proto][1]
    return "127.0.0.1", relay.ports[proto][0]


def login(relay, proto: str, src: str | None, user: str, password: str) -> str:
    """One login attempt; the server's answer as text ("OK" when it let us in). `src`: the
    client address a PROXY header presents (None: no header, the listener has no PROXY)."""
    host, port = _port(relay, proto, src)
    if proto == "smtp":
        with ProxySMTP(host, port, timeout=30, proxy_src=src) as s:
            s.ehlo()
            s.user, s.password = user, password
            try:
                return "OK" if s.auth("PLAIN", s.auth_plain)[0] == 235 else "?"
            except smtplib.SMTPAuthenticationError as exc:
                return f"{exc.smtp_code} {exc.smtp_error.decode()}"
    if proto == "imap":
        imap = ProxyIMAP(host, port, src)
        try:
            imap.login(user, password)
            return "OK"
        except imaplib.IMAP4.error as exc:
            return str(exc)
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                imap.logout()
    pop = ProxyPOP3(host, port, src)
    try:
        pop.user(user)
        pop.pass_(password)
        return "OK"
    except poplib.error_proto as exc:
        return str(exc)
    finally:
        with contextlib.suppress(poplib.error_proto, OSError):
            pop.quit()
        pop.close()


BLOCK_AFTER = 4


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, pki, idp, upstream):
    tmp = tmp_path_factory.mktemp("guarded")
    listen = {"listen": ["127.0.0.1:0", "[::1]:0"], "proxy_protocol": True,
              "trusted_proxies": ["127.0.0.1/32", "::1/128"]}
    config = relay_config(tmp, pki, idp, upstream, smtp=listen, imap=listen, pop3=listen,
                          limits={"auth_failure_delay": 0.01, "auth_max_delay": 0.02,
                                  "auth_block_after": BLOCK_AFTER, "auth_block_seconds": 120})
    config["users"].append({**config["users"][0], "username": "other"})
    with running(tmp, config, "guarded") as relay:
        yield relay


PROTOS = ("smtp", "imap", "pop3")


def test_one_budget_per_client_across_protocols_an_ipv6_client_by_its_64(guarded):
    net = "2001:db8:a:1"
    for i, proto in enumerate(["smtp", "imap", "pop3", "smtp"]):  # a new address every time
        assert login(guarded, proto, f"{net}::{i + 1}", f"nobody{i}", "guess") != "OK"
    blocked = guarded.wait_log("auth_blocked", by="ip")
    assert blocked["peer"] == f"{net}::4"
    for proto in PROTOS:  # the whole /64, every protocol, even with the right password
        assert login(guarded, proto, f"{net}:ffff::99", USER, PASSWORD) != "OK"
    for proto in PROTOS:  # the next /64 is another client
        assert login(guarded, proto, "2001:db8:a:2::1", USER, PASSWORD) == "OK"


def test_a_blocked_client_learns_nothing_about_which_users_exist(guarded):
    for i, proto in enumerate(PROTOS):
        src = f"198.18.{i}.1"
        # failing: an existing user's wrong password and an unknown user hear the same
        assert login(guarded, proto, src, "other", "wrong") == login(guarded, proto, src, "ghost",
                                                                     "wrong")
        for n in range(BLOCK_AFTER - 2):
            login(guarded, proto, src, f"ghost{n}", "wrong")
        # blocked: the same answer for the right password, a wrong one and an unknown user
        heard = {login(guarded, proto, src, "other", PASSWORD),
                 login(guarded, proto, src, "other", "wrong"),
                 login(guarded, proto, src, "ghost", "wrong")}
        assert len(heard) == 1 and "OK" not in heard, heard
        assert not {"other", "ghost", "exist", "unknown"} & set(heard.pop().lower().split())


def test_one_budget_per_user_across_protocols_and_addresses(guarded):
    for i, proto in enumerate(["smtp", "imap", "pop3", "imap"]):  # four clients, one user
        assert login(guarded, proto, f"203.0.113.{i + 1}", USER, "guess") != "OK"
    assert guarded.wait_log("auth_blocked", by="user")["user"] == USER
    for proto in PROTOS:
        assert login(guarded, proto, "203.0.113.50", USER, PASSWORD) != "OK"
        assert login(guarded, proto, "203.0.113.50", "other", PASSWORD) == "OK"


# -- TLS -----------------------------------------------------------------------------------------

@contextlib.contextmanager
def old_tls_client(maximum: ssl.TLSVersion):
    with warnings.catch_warnings():  # TLSVersion.TLSv1/TLSv1_1 are deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.minimum_version, ctx.maximum_version = ssl.TLSVersion.TLSv1, maximum
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    yield ctx


def _handshake(port: int, ctx: ssl.SSLContext, starttls: bool) -> str:
    """The TLS version agreed with 127.0.0.1:port, or the error."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        if starttls:
            raw.recv(512)
            raw.sendall(b"EHLO probe\r\n")
            while raw.recv(4096).rstrip().split(b"\r\n")[-1][:4] != b"250 ":
                pass
            raw.sendall(b"STARTTLS\r\n")
            assert raw.recv(512).startswith(b"220")
        try:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                return tls.version() or "?"
        except (ssl.SSLError, OSError) as exc:
            return f"refused: {type(exc).__name__}"


@pytest.fixture(scope="module")
def tls_relay(tmp_path_factory, pki, idp, upstream):
    tmp = tmp_path_factory.mktemp("tls")
    files = {"cert_file": str(pki.cert_file), "key_file": str(pki.key_file)}
    config = relay_config(tmp, pki, idp, upstream, smtp={"tls": "starttls", **files},
                          imap={"tls": "implicit", **files}, pop3={"tls": "implicit", **files})
    with running(tmp, config, "tls") as relay:
        yield relay


def test_this_client_can_speak_tls_1_1_at_all(tmp_path):
    """The control for the next test: against a server that allows it, 1.1 is agreed."""
    ca = trustme.CA()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.minimum_version = ssl.TLSVersion.TLSv1
        server_ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    with FakeTLSServer(server_ctx) as server, old_tls_client(ssl.TLSVersion.TLSv1_1) as ctx:
        assert _handshake(server.port, ctx, starttls=False) == "TLSv1.1"


@pytest.mark.parametrize(("proto", "starttls"), [("smtp", True), ("imap", False), ("pop3", False)])
def test_local_listeners_refuse_tls_below_1_2(tls_relay, proto, starttls):
    port = tls_relay.ports[proto][0]
    with old_tls_client(ssl.TLSVersion.TLSv1_1) as ctx:
        assert _handshake(port, ctx, starttls).startswith("refused")
    with old_tls_client(ssl.TLSVersion.TLSv1_2) as ctx:
        assert _handshake(port, ctx, starttls) == "TLSv1.2"


class FakeTLSServer:
    """An implicit-TLS "IMAP server" that records which handshakes completed and what came after."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx, self.completed, self.received = ctx, 0, b""
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeTLSServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    self.completed += 1
                    tls.sendall(b"* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR] fake\r\n")
                    self.received += tls.recv(65536)
            except (ssl.SSLError, OSError):
                conn.close()


@pytest.mark.parametrize(("case", "name", "trust"), [
    ("other CA, with ca_file", "127.0.0.1", "ca_file"),
    ("other CA, system store", "127.0.0.1", "system"),
    ("wrong name, with ca_file", "wrong.example", "ca_file"),
    ("wrong name, system store", "wrong.example", "system"),
    ("control: right name, system store", "127.0.0.1", "system"),
], ids=lambda v: v.replace(" ", "_").replace(",", "").replace(":", "") if isinstance(v, str) else v)
def test_an_upstream_with_a_wrong_certificate_or_name_is_refused(tmp_path, pki, idp, upstream,
                                                                 case, name, trust):
    other = trustme.CA()  # the upstream's certificate comes from this CA
    other_ca = tmp_path / "other-ca.pem"
    other.cert_pem.write_to_path(str(other_ca))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    other.issue_cert(name).configure_cert(server_ctx)
    with FakeTLSServer(server_ctx) as fake:
        config = relay_config(tmp_path, pki, idp, upstream, imap={})
        config["upstream"]["imap"] = {"host": "127.0.0.1", "port": fake.port, "tls": "implicit"}
        env = {}
        if trust == "ca_file" and case.startswith("wrong name"):
            config["upstream"]["ca_file"] = str(other_ca)  # trusted CA, wrong name
        elif trust == "system":
            del config["upstream"]["ca_file"]
            if not case.startswith("other CA"):  # the system store is where OpenSSL looks
                env = {"SSL_CERT_FILE": str(other_ca)}
        relay = RelayProcess(tmp_path, config, env=env, name="tls-upstream").start()
        try:
            imap = imaplib.IMAP4("127.0.0.1", relay.imap_port, timeout=30)
            with pytest.raises(imaplib.IMAP4.error) as refused:
                imap.login(USER, PASSWORD)
            assert "UNAVAILABLE" in str(refused.value)
            imap.shutdown()
        finally:
            relay.stop()
    if case.startswith("control"):
        assert fake.completed >= 1  # the system store really is consulted
    else:
        assert fake.completed == 0 and fake.received == b""  # no token ever sent
        failed = relay.find("imap_upstream_failed")
        assert failed and "certificate" in str(failed[-1]).lower(), failed


# -- secrets -------------------------------------------------------------------------------------

WRONG_PASSWORD = "Tr0ub4dor&3-not-it"


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.read().decode(errors="replace")


def _secrets(idp, state: Path, seed: str) -> dict[str, str]:
    """What must never be shown: raw, and in the encodings it travels in (AUTH PLAIN, XOAUTH2)."""
    out = {"password": PASSWORD, "wrong password": WRONG_PASSWORD, "client secret": CLIENT_SECRET,
           "seed refresh token": seed, "store key": (state / "store.key").read_text().strip(),
           "AUTH PLAIN": base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()[4:],
           "AUTH PLAIN (wrong)": base64.b64encode(f"\0{USER}\0{WRONG_PASSWORD}".encode()).decode()[4:]}
    with idp._lock:
        refresh, access = list(idp._refresh), list(idp._access)
    for i, token in enumerate(refresh):
        out[f"refresh token {i}"] = token[3:40]
    for i, token in enumerate(access):
        out[f"access token {i}"] = token[:40]
        out[f"XOAUTH2 {i}"] = base64.b64encode(xoauth2_string(MAILBOX, token).encode()).decode()[60:100]
    return out


def _replies_under_faults(relay, idp) -> list[str]:
    """Logins and sends, good and bad, on every protocol, with the identity platform failing."""
    heard = [login(relay, p, None, USER, WRONG_PASSWORD) for p in PROTOS]
    heard += [login(relay, p, None, USER, PASSWORD) for p in PROTOS]
    for fault in ("invalid_grant", "server_error", "revoked"):
        idp.revoke_access_tokens()
        if fault != "revoked":
            idp.fail_next(3, fault, [70008 if fault == "invalid_grant" else 50000],
                          status=400 if fault == "invalid_grant" else 500, retry_after=0)
        with ProxySMTP("127.0.0.1", relay.smtp_port, timeout=30) as s:
            s.login(USER, PASSWORD)
            heard.append(" ".join(map(str, s.mail("printer@lan.local"))))
        heard += [login(relay, p, None, USER, PASSWORD) for p in ("imap", "pop3")]
        idp._faults.clear()
    return heard


def test_no_secret_in_logs_metrics_status_page_or_replies_and_no_core_dumps(tmp_path, pki, idp,
                                                                            upstream):
    port = free_port()
    config = relay_config(tmp_path, pki, idp, upstream, smtp={}, imap={}, pop3={},
                          http={"listen": f"127.0.0.1:{port}"},
                          log={"level": "debug", "format": "json"})
    seed = config["accounts"][0]["refresh_token"]
    with running(tmp_path, config, "secrets") as relay:
        heard = _replies_under_faults(relay, idp)
        base = f"http://127.0.0.1:{port}"
        shown = {path: _get(base + path) for path in (
            "/", "/metrics", "/readyz", "/healthz", "/api/accounts", "/api/sessions", "/api/limits",
            "/api/queue")}
        limits = Path(f"/proc/{relay.proc.pid}/limits").read_text()
    assert any("AUTHENTICATIONFAILED" in h for h in heard) and "OK" in heard  # it did run
    assert "relay365_auth_failures_total" in shown["/metrics"] and "<html" in shown["/"].lower()
    places = {"log": relay.log_path.read_text(errors="replace"), "replies": "\n".join(heard),
              **shown}
    leaks = [(what, where) for what, secret in _secrets(idp, Path(config["state_dir"]), seed).items()
             for where, text in places.items() if secret and secret in text]
    assert leaks == []
    core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"], core  # soft and hard
