"""relay365 side by side with a direct connection and with email-oauth2-proxy, in one run.

    .venv/bin/python -m bench.run [--reps 3] [--quick] [--no-emailproxy] [--profile DIR]
                                  [--only pop3|big|graph]

Starts the integration tests' upstream (real Dovecot IMAPS + Postfix submission, XOAUTH2 through
the fake identity platform) on loopback, relay365 in front of it, and email-oauth2-proxy (PyPI
`emailproxy`, installed into bench/.venv-emailproxy on first use, run with --no-gui and
`oauth2_flow = client_credentials` against the same identity platform, trusting the test CA through
SSL_CERT_FILE). Each workload runs against each target interleaved (direct, relay, emailproxy,
direct, ...), several repetitions; the table has medians and the ratios relay/direct and
relay/emailproxy. Numbers are for one machine at one time: quote them with the machine, never as
a test.

--profile DIR runs only relay365, sampled by py-spy (PyPI, installed into bench/.venv-profile on
first use), during the FETCH, SMTP and IMAP login workloads; it writes collapsed stacks per workload
into DIR (input for flamegraph.pl or speedscope) and prints where the relay's CPU went.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import imaplib
import os
import resource
import signal
import smtplib
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.pop3 import pop3_rows  # noqa: E402
from relay365.passwords import hash_password  # noqa: E402
from relay365.standins.fakeidp import FakeIdP  # noqa: E402
from tests.support.pki import make_pki  # noqa: E402
from tests.support.relayproc import RelayProcess  # noqa: E402
from tests.support.upstream import MailUpstream, free_port, xoauth2_string  # noqa: E402

DOMAIN = "example.test"
MAILBOX = f"bench@{DOMAIN}"
USER, PASSWORD = "bench", "bench-password"
CLIENT_ID, SECRET = "bench-client", "bench-secret"
# a second account used only by the token-count workload, so that its first token request falls
# inside the count; emailproxy's app-only tokens carry no mailbox, so it gets its own client id
TOK_MAILBOX, TOK_USER, TOK_CLIENT_ID = f"tokens@{DOMAIN}", "tokens", "bench-client-tokens"
DIRECT_CLIENT_ID = "bench-direct"  # the direct clients' own app, so their token is counted apart
CLIENT_TIMEOUT = 30  # a session that takes longer counts as failed
FAILURES: dict[tuple[str, str], int] = {}  # (workload, target) -> sessions that failed
CPU_MS: dict[tuple[str, str], list[float]] = {}  # (workload, proxy) -> its CPU ms per message, per rep
EMAILPROXY_VENV = ROOT / "bench" / ".venv-emailproxy"
EMAILPROXY_VERSION = "emailproxy==2026.7.3"
PROFILE_VENV = ROOT / "bench" / ".venv-profile"
PYSPY_VERSION = "py-spy==0.4.3"
# Dovecot must hold 1,000 IDLE sessions of one user from one address (plus the other targets')
DOVECOT_LIMITS = """
default_process_limit = 1500
default_client_limit = 6000
protocol imap {
  mail_max_userip_connections = 5000
}
service imap-login {
  service_count = 0
  client_limit = 3000
  process_limit = 4
}
service imap {
  process_limit = 3000
}
"""


def count_issued_tokens(idp: FakeIdP) -> Counter:
    """Count the access tokens the identity platform issues, by (mailbox, client id) for delegated
    tokens and by client id for app-only tokens (which name no mailbox). The platform runs in this process;
this
    wraps its one place where a token is made, so every successful grant of every flow counts."""
    issued: Counter = Counter()
    make = idp._new_access_token

    def counted(mailbox, client_id, scopes):
        issued[(mailbox, client_id) if mailbox else client_id] += 1
        return make(mailbox, client_id, scopes)

    idp._new_access_token = counted
    return issued


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


class EmailProxy:
    """email-oauth2-proxy in its own venv, in front of the same upstream."""

    def __init__(self, workdir: Path, world) -> None:
        if not (EMAILPROXY_VENV / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(EMAILPROXY_VENV)], check=True)
        subprocess.run([str(EMAILPROXY_VENV / "bin" / "pip"), "install", "-q",
                        "--disable-pip-version-check", EMAILPROXY_VERSION], check=True)
        self.imap_port, self.smtp_port, self.pop3_port = free_port(), free_port(), free_port()
        self.config = workdir / "emailproxy.config"
        idp = world.idp.url
        self.config.write_text(f"""\
[IMAP-{self.imap_port}]
server_address = 127.0.0.1
server_port = {world.upstream.imap_port}
local_address = 127.0.0.1

[POP-{self.pop3_port}]
server_address = 127.0.0.1
server_port = {world.upstream.pop3_port}
local_address = 127.0.0.1

[SMTP-{self.smtp_port}]
server_address = 127.0.0.1
server_port = {world.upstream.smtp_port}
server_starttls = True
local_address = 127.0.0.1

# client credentials: no permission_url (that would make it wait for an interactive sign-in)
[{MAILBOX}]
token_url = {idp}/bench/oauth2/v2.0/token
oauth2_scope = https://outlook.office365.com/.default
oauth2_flow = client_credentials
client_id = {CLIENT_ID}
client_secret = {SECRET}

[{TOK_MAILBOX}]
token_url = {idp}/bench/oauth2/v2.0/token
oauth2_scope = https://outlook.office365.com/.default
oauth2_flow = client_credentials
client_id = {TOK_CLIENT_ID}
client_secret = {SECRET}

[emailproxy]
delete_account_token_on_password_error = False
""")
        script = next((EMAILPROXY_VENV / "lib").glob("python*/site-packages/emailproxy.py"))
        self.log = open(workdir / "emailproxy.log", "wb")
        env = {**os.environ, "SSL_CERT_FILE": str(world.pki.ca_file)}
        env.pop("REQUESTS_CA_BUNDLE", None)
        self.proc = subprocess.Popen(
            [str(EMAILPROXY_VENV / "bin" / "python"), str(script), "--no-gui", "--config-file",
             str(self.config), "--log-file", str(workdir / "emailproxy-own.log")],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        for port in (self.imap_port, self.smtp_port, self.pop3_port):
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        raise SystemExit(
                            f"emailproxy did not start; see {workdir / 'emailproxy.log'}") from None
                    time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class World:
    def __init__(self, workdir: Path, emailproxy: bool = True, *, dovecot_extra: str = DOVECOT_LIMITS,
                 max_connections: int = 5000) -> None:
        self.workdir = workdir
        self.pki = make_pki(workdir / "pki")
        self.idp = FakeIdP(self.pki.cert_file, self.pki.key_file).start()
        # app-only tokens of this client may open the bench mailbox (emailproxy's client_credentials)
        self.idp.add_client(CLIENT_ID, secret=SECRET, app_mailboxes=[MAILBOX])
        self.idp.add_client(TOK_CLIENT_ID, secret=SECRET, app_mailboxes=[TOK_MAILBOX])
        self.idp.add_client(DIRECT_CLIENT_ID, secret=SECRET)
        self.issued = count_issued_tokens(self.idp)
        self.upstream = MailUpstream(workdir / "upstream", self.pki, f"{self.idp.url}/introspect",
                                     grant_url=f"{self.idp.url}/grant", domain=DOMAIN,
                                     dovecot_extra=dovecot_extra)
        self.upstream.start()
        self.tls = ssl.create_default_context(cafile=str(self.pki.ca_file))
        self._direct_token: str | None = None
        config = {
            "state_dir": str(workdir / "state"), "log": {"level": "info", "format": "json"},
            "apps": {"default": {"tenant": "bench", "client_id": CLIENT_ID, "client_secret": SECRET,
                                 "authority": self.idp.url, "ca_file": str(self.pki.ca_file)}},
            "upstream": {"smtp": {"host": "127.0.0.1", "port": self.upstream.smtp_port, "tls": "starttls"},
                         "imap": {"host": "127.0.0.1", "port": self.upstream.imap_port, "tls": "implicit"},
                         "pop3": {"host": "127.0.0.1", "port": self.upstream.pop3_port, "tls": "implicit"},
                         "ca_file": str(self.pki.ca_file)},
            "accounts": [{"mailbox": MAILBOX, "refresh_token": self.idp.issue_refresh_token(MAILBOX)},
                         {"mailbox": TOK_MAILBOX,
                          "refresh_token": self.idp.issue_refresh_token(TOK_MAILBOX)}],
            "users": [{"username": USER, "password_hash": hash_password(PASSWORD), "mailbox": MAILBOX},
                      {"username": TOK_USER, "password_hash": hash_password(PASSWORD),
                       "mailbox": TOK_MAILBOX}],
            "smtp": {"listen": ["127.0.0.1:0"]},
            "pop3": {"listen": ["127.0.0.1:0"]},
            "limits": {"max_connections": max_connections, "max_connections_per_ip": max_connections},
        }
        try:
            import relay365.imap.core  # noqa: F401

            config["imap"] = {"listen": ["127.0.0.1:0"]}
        except ImportError:
            pass
        self.relay = RelayProcess(workdir, config).start()
        self.emailproxy = EmailProxy(workdir, self) if emailproxy else None

    def direct_token(self) -> str:
        if self._direct_token is None:
            rt = self.idp.issue_refresh_token(MAILBOX, client_id=DIRECT_CLIENT_ID)
            r = requests.post(f"{self.idp.url}/bench/oauth2/v2.0/token", verify=str(self.pki.ca_file),
                              data={"grant_type": "refresh_token", "refresh_token": rt,
                                    "client_id": DIRECT_CLIENT_ID, "client_secret": SECRET,
                                    "scope": " ".join(f"https://outlook.office.com/{s}" for s in (
                                        "SMTP.Send", "IMAP.AccessAsUser.All", "POP.AccessAsUser.All"))})
            self._direct_token = r.json()["access_token"]
        return self._direct_token

    def pid(self, target: str) -> int:
        return self.relay.proc.pid if target == "relay" else self.emailproxy.pid

    def close(self) -> None:
        if self.emailproxy is not None:
            self.emailproxy.close()
        self.relay.stop()
        self.upstream.stop()
        self.idp.stop()


# -- clients ---------------------------------------------------------------------------------

def smtp_session(world: World, target: str) -> smtplib.SMTP:
    if target == "direct":
        s = smtplib.SMTP("127.0.0.1", world.upstream.smtp_port, timeout=CLIENT_TIMEOUT)
        s.starttls(context=world.tls)
        s.auth("XOAUTH2", lambda challenge=None: xoauth2_string(MAILBOX, world.direct_token()),
               initial_response_ok=True)
        return s
    if target == "emailproxy":
        s = smtplib.SMTP("127.0.0.1", world.emailproxy.smtp_port, timeout=CLIENT_TIMEOUT)
        s.login(MAILBOX, PASSWORD)  # emailproxy: the mailbox and a password that keys its token cache
        return s
    s = smtplib.SMTP("127.0.0.1", world.relay.smtp_port, timeout=CLIENT_TIMEOUT)
    s.login(USER, PASSWORD)
    return s


def imap_session(world: World, target: str) -> imaplib.IMAP4:
    if target == "direct":
        imap = imaplib.IMAP4_SSL("127.0.0.1", world.upstream.imap_port, ssl_context=world.tls,
                                 timeout=CLIENT_TIMEOUT)
        imap.authenticate("XOAUTH2", lambda _: xoauth2_string(MAILBOX, world.direct_token()).encode())
        return imap
    if target == "emailproxy":
        imap = imaplib.IMAP4("127.0.0.1", world.emailproxy.imap_port, timeout=CLIENT_TIMEOUT)
        imap.login(MAILBOX, PASSWORD)
        return imap
    imap = imaplib.IMAP4("127.0.0.1", world.relay.imap_port, timeout=CLIENT_TIMEOUT)
    imap.login(USER, PASSWORD)
    return imap


def message(size: int) -> bytes:
    body = ("z" * 998 + "\r\n") * max(1, size // 1000)
    return (f"From: {MAILBOX}\r\nTo: sink@{DOMAIN}\r\nSubject: bench\r\n"
            f"Message-ID: <{uuid.uuid4()}@b>\r\n\r\n{body}").encode()


# -- workloads: each returns one number ------------------------------------------------------

def smtp_rate(world, target, *, concurrency: int, per_worker: int, size: int, long: bool,
              name: str = "") -> float:
    """Messages per second that went through; failed sessions are counted in FAILURES."""
    data = message(size)

    def worker(_) -> int:
        done = 0
        try:
            if long:
                s = smtp_session(world, target)
                for _ in range(per_worker):
                    s.sendmail(MAILBOX, [f"sink@{DOMAIN}"], data)
                    done += 1
                s.quit()
            else:
                for _ in range(per_worker):
                    s = smtp_session(world, target)
                    s.sendmail(MAILBOX, [f"sink@{DOMAIN}"], data)
                    s.quit()
                    done += 1
        except (OSError, smtplib.SMTPException):
            FAILURES[(name, target)] = FAILURES.get((name, target), 0) + per_worker - done
        return done

    pid = None if target == "direct" else world.pid(target)
    cpu0 = cpu_seconds(pid) if pid else 0.0
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        sent = sum(pool.map(worker, range(concurrency)))
    elapsed = time.perf_counter() - started
    if pid and sent:
        CPU_MS.setdefault((name, target), []).append((cpu_seconds(pid) - cpu0) / sent * 1000)
    return sent / elapsed


def smtp_latency(world, target, *, n: int) -> list[float]:
    s = smtp_session(world, target)
    data = message(10_000)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        s.sendmail(MAILBOX, [f"sink@{DOMAIN}"], data)
        out.append(time.perf_counter() - t)
    s.quit()
    return out


def imap_logins(world, target, *, concurrency: int, per_worker: int, name: str = "") -> float:
    def worker(_) -> int:
        done = 0
        try:
            for _ in range(per_worker):
                imap = imap_session(world, target)
                imap.select("INBOX", readonly=True)
                imap.logout()
                done += 1
        except (OSError, imaplib.IMAP4.error):
            FAILURES[(name, target)] = FAILURES.get((name, target), 0) + per_worker - done
        return done

    pid = None if target == "direct" else world.pid(target)
    cpu0 = cpu_seconds(pid) if pid else 0.0
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        done = sum(pool.map(worker, range(concurrency)))
    elapsed = time.perf_counter() - started
    if pid and done:
        CPU_MS.setdefault((name, target), []).append((cpu_seconds(pid) - cpu0) / done * 1000)
    return done / elapsed


def imap_fetch_mbps(world, target, *, count: int) -> float:
    imap = imap_session(world, target)
    imap.select("INBOX", readonly=True)
    started = time.perf_counter()
    total = 0
    for i in range(1, count + 1):
        _typ, data = imap.fetch(str(i), "(BODY.PEEK[])")
        total += len(data[0][1])
    elapsed = time.perf_counter() - started
    imap.logout()
    return total / elapsed / 1e6


def login_latency(world, target, *, n: int) -> list[float]:
    """One IMAP login (LOGIN to tagged OK) with a warm token, n times."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        imap = imap_session(world, target)
        out.append(time.perf_counter() - t)
        imap.logout()
    return out


def held_sessions(world, target, *, n: int, idle_seconds: float = 10.0) -> tuple[float, float, int]:
    """n IMAP sessions logged in and in IDLE: (KB of the proxy's RSS per session, % of one CPU the
    proxy used while they idled, sessions established)."""
    import asyncio

    pid = world.pid(target)
    port = world.relay.imap_port if target == "relay" else world.emailproxy.imap_port
    user = USER if target == "relay" else MAILBOX

    async def one(held: list) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, limit=2**20), CLIENT_TIMEOUT)
        except (TimeoutError, OSError):
            return
        try:
            async def login() -> None:
                await reader.readline()
                writer.write(f"a LOGIN {user} {PASSWORD}\r\n".encode())
                while not (line := await reader.readline()).startswith(b"a "):
                    if not line:
                        raise ConnectionError("closed")
                if not line.startswith(b"a OK"):
                    raise ConnectionError(line)
                writer.write(b"b SELECT INBOX\r\n")
                while not (line := await reader.readline()).startswith(b"b "):
                    if not line:
                        raise ConnectionError("closed")
                writer.write(b"c IDLE\r\n")
                while not (line := await reader.readline()).startswith(b"+"):
                    if not line or line.startswith(b"c "):
                        raise ConnectionError(line)

            await asyncio.wait_for(login(), CLIENT_TIMEOUT)
            held.append((reader, writer))
        except (TimeoutError, OSError, ConnectionError) as exc:
            key = (f"{n} idle IMAP sessions", target)
            FAILURES[key] = FAILURES.get(key, 0) + 1
            if FAILURES[key] <= 3:  # the first few say why; the count is in the table's footer
                print(f"  held session failed ({target}): {exc!r}"[:200], file=sys.stderr)
            writer.close()

    async def run() -> tuple[float, float, int]:
        rss0 = rss_kb(pid)
        held: list = []
        for i in range(0, n, 50):  # in waves, so the logins themselves are not the test
            await asyncio.gather(*(one(held) for _ in range(min(50, n - i))))
        await asyncio.sleep(2)
        rss1 = rss_kb(pid)
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(idle_seconds)
        cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) * 100
        for _reader, writer in held:
            writer.write(b"DONE\r\nd LOGOUT\r\n")
            writer.close()
        await asyncio.sleep(1)
        return (rss1 - rss0) / max(1, len(held)), cpu, len(held)

    return asyncio.run(run())


def token_counts(world, proxies, scale) -> tuple[str, str, dict[str, float]]:
    """Token endpoint requests per 1,000 IMAP logins (LOGIN + LOGOUT) of an account used by nothing
    else, counted from the relay's start, so the first request is in the count. emailproxy does
    ~4 logins/s, so it gets fewer logins and the count is scaled to 1,000."""
    logins = {"relay": max(20, int(1000 * scale)), "emailproxy": max(20, int(200 * scale))}
    key = {"relay": (TOK_MAILBOX, CLIENT_ID), "emailproxy": TOK_CLIENT_ID}
    counts = {}
    for t in proxies:
        port = world.relay.imap_port if t == "relay" else world.emailproxy.imap_port
        user = TOK_USER if t == "relay" else TOK_MAILBOX
        done = 0
        for _ in range(logins[t]):
            try:
                imap = imaplib.IMAP4("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
                imap.login(user, PASSWORD)
                imap.logout()
                done += 1
            except (OSError, imaplib.IMAP4.error):
                FAILURES[("token requests", t)] = FAILURES.get(("token requests", t), 0) + 1
        counts[t] = world.issued[key[t]] * 1000 / max(1, done)
    return ("Token requests per 1,000 logins of one account, first incl.",
            "requests", counts)


def big_messages(world, target, *, n: int, size: int) -> tuple[float, float, float]:
    """n clients each send one `size`-byte message at once: (seconds for all, growth of the
    proxy's peak RSS in MiB, proxy CPU seconds). Peak RSS is the kernel's VmHWM, reset first
    (/proc/PID/clear_refs), so a short spike between samples is not missed."""
    pid = None if target == "direct" else world.pid(target)
    if pid is not None:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        base, cpu0 = rss_kb(pid), cpu_seconds(pid)
    data = message(size)

    def one(_) -> None:
        s = smtp_session(world, target)
        s.sock.settimeout(600)  # 16 x 20 MiB into one Postfix and Dovecot takes a while
        s.sendmail(MAILBOX, [f"sink@{DOMAIN}"], data)
        s.quit()

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        list(pool.map(one, range(n)))
    seconds = time.perf_counter() - started
    if pid is None:
        return seconds, float("nan"), float("nan")
    return seconds, (peak_kb(pid) - base) / 1024, cpu_seconds(pid) - cpu0


def big_rows(world, targets, reps, scale) -> list:
    n, size = (4, 5 * 2**20) if scale < 1 else (16, 20 * 2**20)
    name = f"{n} concurrent {size >> 20} MiB messages"
    res = interleaved(targets, reps, lambda t: big_messages(world, t, n=n, size=size))
    rows = []
    for i, (what, unit) in enumerate(((f"{name}: all sent in", "s"),
                                      (f"{name}: proxy peak RSS growth", "MiB"),
                                      (f"{name}: proxy CPU", "s"))):
        rows.append((what, unit, {t: statistics.median(v[i] for v in vals)
                                  for t, vals in res.items() if i == 0 or t != "direct"}))
    progress(name)
    return rows


def peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def burst(world, target, *, n: int) -> tuple[int, float]:
    port = {"direct": world.upstream.smtp_port, "relay": world.relay.smtp_port,
            "emailproxy": world.emailproxy.smtp_port if world.emailproxy else 0}[target]
    ok = 0
    started = time.perf_counter()

    def one(_) -> bool:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=2 * CLIENT_TIMEOUT) as s:
                return s.noop()[0] == 250
        except (OSError, smtplib.SMTPException):
            return False

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        ok = sum(pool.map(one, range(n)))
    return ok, time.perf_counter() - started


# -- the run ---------------------------------------------------------------------------------

NOTES = {
    "proxy": "no proxy process in a direct connection: nothing to measure",
    "tokens": "a direct client has no token cache of its own; emailproxy does a fifth as many "
              "logins (~4/s), scaled to 1,000",
}


def interleaved(targets, reps, fn) -> dict[str, list]:
    """A B C A B C ...: each repetition runs every target once, so drift hits all of them."""
    results = {t: [] for t in targets}
    for _ in range(reps):
        for t in targets:
            results[t].append(fn(t))
    return results


RAW: dict[str, dict[str, list[float]]] = {}  # workload -> target -> one value per repetition


def med(res, name: str) -> dict[str, float]:
    RAW[name] = res
    return {t: statistics.median(v) for t, v in res.items()}


def smtp_rows(world, targets, reps, scale, burst_n) -> list:
    rows = []
    for conc, per in ((1, 40), (16, 8), (64, 3), (256, 1)):
        per = max(1, int(per * scale))
        for long in (False, True):
            name = f"SMTP 10 KB msgs/s, {conc} senders, {'one long session' if long else 'session per msg'}"
            res = interleaved(targets, reps, lambda t: smtp_rate(
                world, t, concurrency=conc, per_worker=per * (5 if long else 1), size=10_000,
                long=long, name=name))
            rows.append((name, "msg/s", med(res, name)))
            rows.append((f"  proxy CPU per message, {conc} senders, "
                         f"{'long session' if long else 'session per msg'}", "ms",
                         {t: statistics.median(CPU_MS[(name, t)]) for t in targets
                          if (name, t) in CPU_MS}))
            progress(name)
    name = "SMTP 5 MB msgs/s, 4 senders"
    res = interleaved(targets, reps, lambda t: smtp_rate(
        world, t, concurrency=4, per_worker=max(1, int(2 * scale)), size=5_000_000, long=False, name=name))
    rows.append((name, "msg/s", med(res, name)))
    lat = interleaved(targets, 1, lambda t: smtp_latency(world, t, n=max(20, int(200 * scale))))
    for q, label in ((50, "p50"), (99, "p99")):
        rows.append((f"SMTP transaction latency {label} (warm token)", "ms", {
            t: statistics.quantiles(v[0], n=100)[q - 1] * 1000 for t, v in lat.items()}))
    res = interleaved(targets, 1, lambda t: burst(world, t, n=burst_n))
    rows.append((f"Burst of {burst_n} SMTP connections: completed", "conns",
                 {t: v[0][0] for t, v in res.items()}))
    rows.append((f"Burst of {burst_n} SMTP connections: last done after", "s",
                 {t: v[0][1] for t, v in res.items()}))
    progress("SMTP")
    return rows


def imap_rows(world, targets, reps, scale) -> list:
    rows = []
    for conc, per in ((1, 40), (32, 4)):
        per = max(1, int(per * scale))
        name = f"IMAP logins/s (LOGIN+SELECT+LOGOUT), {conc} clients"
        res = interleaved(targets, reps, lambda t: imap_logins(
            world, t, concurrency=conc, per_worker=per, name=name))
        rows.append((name, "login/s", med(res, name)))
        rows.append((f"  proxy CPU per login, {conc} clients", "ms",
                     {t: statistics.median(CPU_MS[(name, t)]) for t in targets
                      if (name, t) in CPU_MS}))
    lat = interleaved(targets, 1, lambda t: login_latency(world, t, n=max(20, int(200 * scale))))
    for q, label in ((50, "p50"), (99, "p99")):
        rows.append((f"IMAP login latency {label} (warm token)", "ms", {
            t: statistics.quantiles(v[0], n=100)[q - 1] * 1000 for t, v in lat.items()}))
    count = fill_mailbox(world, scale)
    res = interleaved(targets, reps, lambda t: imap_fetch_mbps(world, t, count=count))
    name = f"IMAP FETCH {count} x 1 MB"
    rows.append((name, "MB/s", med(res, name)))
    progress("IMAP")
    return rows


def fill_mailbox(world, scale) -> int:
    count = max(10, int(200 * scale))
    world.upstream.deliver_many(MAILBOX, [message(1_000_000) for _ in range(count)])
    return count


def held_rows(world, proxies, scale) -> list:
    n = max(50, int(1000 * scale))
    rows = []
    for t in proxies:
        kb, cpu, got = held_sessions(world, t, n=n, idle_seconds=10 if scale >= 1 else 5)
        rows.append((f"{n} idle IMAP sessions: established", "sessions", {t: got}, "proxy"))
        rows.append((f"{n} idle IMAP sessions: proxy RSS per session", "KB", {t: kb}, "proxy"))
        rows.append((f"{n} idle IMAP sessions: proxy CPU while idle", "% core", {t: cpu}, "proxy"))
    progress("held sessions")
    return merge(rows)


def progress(what: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} done: {what}", file=sys.stderr, flush=True)


def main() -> int:
    global CLIENT_TIMEOUT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="every workload, small: a smoke run of ~3 min")
    ap.add_argument("--only", choices=["pop3", "big", "smtp", "imap", "graph"],
                    help="run only these workloads (big: concurrent large messages, peak RSS and "
                    "CPU of each proxy; smtp: the SMTP rows; imap: IMAP logins, latency, FETCH and "
                    "held sessions; graph: one 20 MiB message via Microsoft Graph, relay CPU and "
                    "peak RSS)")
    ap.add_argument("--no-emailproxy", action="store_true", help="relay365 and direct only")
    ap.add_argument("--profile", metavar="DIR", type=Path,
                    help="profile relay365 with py-spy during FETCH, SMTP and IMAP logins, "
                         "instead of the table")
    args = ap.parse_args()
    reps = args.reps or (1 if args.quick else 3)
    raise_fd_limit()
    scale = 0.1 if args.quick else 1.0
    if args.quick:
        CLIENT_TIMEOUT = 10  # emailproxy drops connections beyond its backlog: don't wait 30 s each
    targets = ["direct", "relay"] + ([] if args.no_emailproxy or args.profile else ["emailproxy"])
    proxies = [t for t in targets if t != "direct"]
    started = time.monotonic()
    if args.only == "graph":  # relay365 alone, against the Graph stand-in: no Dovecot, no emailproxy
        from bench.graph import graph_rows

        with tempfile.TemporaryDirectory(prefix="relay365-bench-") as tmp:
            return print_table(graph_rows(Path(tmp), reps), ["relay"], reps) or 0
    with tempfile.TemporaryDirectory(prefix="relay365-bench-") as tmp:
        world = World(Path(tmp), emailproxy="emailproxy" in targets)
        try:
            if args.profile:
                return profile(world, args.profile, scale, only=args.only)
            for t in proxies:  # warm each proxy's token
                smtp_session(world, t).quit()
                imap_session(world, t).logout()
            if args.only == "pop3":
                rows = pop3_rows(world, targets, reps, scale, sys.modules[__name__])
                return print_table(rows, targets, reps) or 0
            if args.only == "big":
                return print_table(big_rows(world, targets, reps, scale), targets, reps) or 0
            if args.only == "imap":
                rows = imap_rows(world, targets, reps, scale) + held_rows(world, proxies, scale)
                return print_table(rows, targets, reps) or 0
            rows = smtp_rows(world, targets, reps, scale, burst_n=100 if args.quick else 500)
            if args.only == "smtp":
                return print_table(rows, targets, reps) or 0
            rows += big_rows(world, targets, reps, scale)
            rows += imap_rows(world, targets, reps, scale)
            rows += pop3_rows(world, targets, reps, scale, sys.modules[__name__])
            rows += held_rows(world, proxies, scale)
            rows.append((*token_counts(world, proxies, scale), "tokens"))
            rows.append(("Token requests in the whole run, main account", "requests",
                         {"direct": world.issued[(MAILBOX, DIRECT_CLIENT_ID)],
                          "relay": world.issued[(MAILBOX, CLIENT_ID)],
                          "emailproxy": world.issued[CLIENT_ID]}))
        finally:
            world.close()
    print_table(rows, targets, reps)
    print(f"\n(run took {(time.monotonic() - started) / 60:.1f} min)")
    if FAILURES:
        print(f"\nFailed sessions (timed out after {CLIENT_TIMEOUT} s or refused), all repetitions:")
        for (name, target), n in sorted(FAILURES.items()):
            print(f"  {target:10} {n:5}  {name}")
    return 0


def merge(rows):
    """Rows with the same name (one per target) become one row."""
    out: dict[str, tuple] = {}
    for name, unit, vals, *note in rows:
        if name in out:
            out[name][2].update(vals)
        else:
            out[name] = (name, unit, dict(vals), *note)
    return list(out.values())


def print_table(rows, targets, reps) -> None:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    print(f"\nrelay365 benchmark  {time.strftime('%Y-%m-%d')}  {os.cpu_count()} cores ({cpu})  "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2**30} GiB  "
          f"Python {sys.version.split()[0]}  relay loop: {os.environ.get('RELAY365_LOOP', 'uvloop')}  "
          f"medians of {reps}  load avg at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    ratios = [("relay", "direct")] + ([("relay", "emailproxy")] if "emailproxy" in targets else [])
    head = (f"{'workload':60} {'unit':9} " + " ".join(f"{t:>10}" for t in targets) + " "
            + " ".join(f"{a + '/' + b:>16}" for a, b in ratios) + f" {'relay/direct, each rep':>24}")
    print(head)
    print("-" * len(head))
    marks = {key: "*" * (i + 1) for i, key in enumerate(NOTES)}
    used = set()
    for name, unit, vals, *note in rows:
        na = f"n/a{marks[note[0]]}" if note else "n/a"
        used.update(note)
        cells = " ".join(f"{vals[t]:>10.1f}" if t in vals else f"{na:>10}" for t in targets)
        rs = " ".join(f"{vals[a] / vals[b]:>16.2f}" if a in vals and vals.get(b) else f"{'-':>16}"
                      for a, b in ratios)
        print(f"{name:60} {unit:9} {cells} {rs} {spread(name):>24}")
    for key in NOTES:
        if key in used:
            print(f"{marks[key]:>3} {NOTES[key]}")


def spread(name: str) -> str:
    """relay/direct of each repetition (interleaved, so each pair ran minutes apart at most)."""
    raw = RAW.get(name, {})
    if len(raw.get("relay", [])) < 2 or not all(raw.get("direct", [])):
        return ""
    return " ".join(f"{r / d:.2f}" for r, d in zip(raw["relay"], raw["direct"], strict=False))


# -- profile -------------------------------------------------------------------------------------

def pyspy() -> Path:
    exe = PROFILE_VENV / "bin" / "py-spy"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PROFILE_VENV)], check=True)
        subprocess.run([str(PROFILE_VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                        PYSPY_VERSION], check=True)
    return exe


def profile(world, outdir: Path, scale: float, only: str | None = None) -> int:
    """Sample the relay (py-spy, 100 Hz, idle frames dropped) while one workload runs against it
    alone; write <name>.txt (collapsed stacks) and print the top of each. `only="smtp"`: the SMTP
    workloads alone."""
    outdir.mkdir(parents=True, exist_ok=True)
    exe = pyspy()
    smtp_session(world, "relay").quit()
    imap_session(world, "relay").logout()
    count = fill_mailbox(world, scale) if only != "smtp" else 0
    jobs = {
        "fetch": lambda: [imap_fetch_mbps(world, "relay", count=count) for _ in range(3)],
        "smtp-long-1": lambda: smtp_rate(world, "relay", concurrency=1, per_worker=max(20, int(1000 * scale)),
                                         size=10_000, long=True),
        "smtp-long": lambda: smtp_rate(world, "relay", concurrency=16, per_worker=max(5, int(100 * scale)),
                                       size=10_000, long=True),
        "smtp-per-session": lambda: smtp_rate(world, "relay", concurrency=16,
                                              per_worker=max(2, int(30 * scale)), size=10_000, long=False),
        "imap-logins-32": lambda: imap_logins(world, "relay", concurrency=32,
                                              per_worker=max(2, int(10 * scale))),
        "smtp-5mb": lambda: smtp_rate(world, "relay", concurrency=4, per_worker=max(1, int(4 * scale)),
                                      size=5_000_000, long=False),
    }
    if only == "smtp":
        jobs = {name: job for name, job in jobs.items() if name.startswith("smtp")}
    for name, job in jobs.items():
        raw = outdir / f"{name}.txt"
        rec = subprocess.Popen([str(exe), "record", "-p", str(world.relay.proc.pid), "-r", "100",
                                "-f", "raw", "-o", str(raw)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
        time.sleep(1)
        cpu0, t0 = cpu_seconds(world.relay.proc.pid), time.monotonic()
        result = job()
        cpu = cpu_seconds(world.relay.proc.pid) - cpu0
        wall = time.monotonic() - t0
        rec.send_signal(signal.SIGINT)
        err = rec.communicate(timeout=60)[1].decode(errors="replace")
        if not raw.exists():
            print(f"{name}: py-spy wrote nothing: {err.strip()[-300:]}")
            continue
        per = (f"; ~{1000 * cpu / (result * wall):.2f} ms CPU per message"
               if name.startswith("smtp") and result else "")
        print(f"\n== {name}: relay used {cpu:.1f} s CPU in {wall:.1f} s ({100 * cpu / wall:.0f}% of a core); "
              f"result {result if not isinstance(result, list) else [round(r, 1) for r in result]}{per}")
        summarize(raw)
    return 0


def summarize(raw: Path, top: int = 18) -> None:
    """Self time by function and time including callees for the relay's own frames."""
    self_t: Counter = Counter()
    incl: Counter = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        n = int(n)
        total += n
        frames = stack.split(";")
        self_t[short(frames[-1])] += n
        for f in {short(f) for f in frames}:
            incl[f] += n
    print(f"   {total} samples; self time:")
    for f, n in self_t.most_common(top):
        print(f"   {100 * n / total:5.1f}%  {f}")
    print("   including callees (relay, aiosmtpd, aiosmtplib, asyncio streams, ssl):")
    mine = [(f, n) for f, n in incl.most_common()
            if any(k in f for k in ("relay/", "aiosmtp", "streams.py", "sslproto", "ssl.py"))]
    for f, n in mine[:top]:
        print(f"   {100 * n / total:5.1f}%  {f}")


def short(frame: str) -> str:
    """'fn (/long/path/site-packages/pkg/mod.py:123)' -> 'fn (pkg/mod.py)'"""
    fn, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3.11/", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{fn} ({path})"


if __name__ == "__main__":
    sys.exit(main())
