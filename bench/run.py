"""relay365 side by side with a direct connection and with email-oauth2-proxy, in one run.

    .venv/bin/python -m bench.run [--reps 3] [--quick] [--no-emailproxy]

Starts the integration tests' upstream (real Dovecot IMAPS + Postfix submission, XOAUTH2 through
the fake identity platform) on loopback, relay365 in front of it, and email-oauth2-proxy (PyPI
`emailproxy`, installed into bench/.venv-emailproxy on first use, run with --no-gui and
`oauth2_flow = client_credentials` against the same identity platform, trusting the test CA through
SSL_CERT_FILE). Each workload runs against each target interleaved (direct, relay, emailproxy,
direct, ...), several repetitions; the table has medians and the ratios relay/direct and
relay/emailproxy. Numbers are for one machine at one time: quote them with the machine, never as
a test.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import imaplib
import os
import resource
import smtplib
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from relay.passwords import hash_password  # noqa: E402
from relay.testing.fakeidp import FakeIdP  # noqa: E402
from tests.support.pki import make_pki  # noqa: E402
from tests.support.relayproc import RelayProcess  # noqa: E402
from tests.support.upstream import MailUpstream, free_port, xoauth2_string  # noqa: E402

DOMAIN = "example.test"
MAILBOX = f"bench@{DOMAIN}"
USER, PASSWORD = "bench", "bench-password"
CLIENT_ID, SECRET = "bench-client", "bench-secret"
CLIENT_TIMEOUT = 30  # a session that takes longer counts as failed
FAILURES: dict[tuple[str, str], int] = {}  # (workload, target) -> sessions that failed
EMAILPROXY_VENV = ROOT / "bench" / ".venv-emailproxy"
EMAILPROXY_VERSION = "emailproxy==2026.7.3"
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


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


class EmailProxy:
    """email-oauth2-proxy in its own venv, in front of the same upstream."""

    def __init__(self, workdir: Path, world) -> None:
        if not (EMAILPROXY_VENV / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(EMAILPROXY_VENV)], check=True)
        subprocess.run([str(EMAILPROXY_VENV / "bin" / "pip"), "install", "-q",
                        "--disable-pip-version-check", EMAILPROXY_VERSION], check=True)
        self.imap_port, self.smtp_port = free_port(), free_port()
        self.config = workdir / "emailproxy.config"
        idp = world.idp.url
        self.config.write_text(f"""\
[IMAP-{self.imap_port}]
server_address = 127.0.0.1
server_port = {world.upstream.imap_port}
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
        for port in (self.imap_port, self.smtp_port):
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        raise SystemExit(f"emailproxy did not start; see {workdir / 'emailproxy.log'}")
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
    def __init__(self, workdir: Path, emailproxy: bool = True) -> None:
        self.workdir = workdir
        self.pki = make_pki(workdir / "pki")
        self.idp = FakeIdP(self.pki.cert_file, self.pki.key_file).start()
        # app-only tokens of this client may open the bench mailbox (emailproxy's client_credentials)
        self.idp.add_client(CLIENT_ID, secret=SECRET, app_mailboxes=[MAILBOX])
        self.upstream = MailUpstream(workdir / "upstream", self.pki, f"{self.idp.url}/introspect",
                                     grant_url=f"{self.idp.url}/grant", domain=DOMAIN,
                                     dovecot_extra=DOVECOT_LIMITS)
        self.upstream.start()
        self.tls = ssl.create_default_context(cafile=str(self.pki.ca_file))
        self._direct_token: str | None = None
        config = {
            "state_dir": str(workdir / "state"), "log": {"level": "info", "format": "json"},
            "apps": {"default": {"tenant": "bench", "client_id": CLIENT_ID, "client_secret": SECRET,
                                 "authority": self.idp.url, "ca_file": str(self.pki.ca_file)}},
            "upstream": {"smtp": {"host": "127.0.0.1", "port": self.upstream.smtp_port, "tls": "starttls"},
                         "imap": {"host": "127.0.0.1", "port": self.upstream.imap_port, "tls": "implicit"},
                         "ca_file": str(self.pki.ca_file)},
            "accounts": [{"mailbox": MAILBOX, "refresh_token": self.idp.issue_refresh_token(MAILBOX)}],
            "users": [{"username": USER, "password_hash": hash_password(PASSWORD), "mailbox": MAILBOX}],
            "smtp": {"listen": ["127.0.0.1:0"]},
            "limits": {"max_connections": 5000, "max_connections_per_ip": 5000},
        }
        try:
            import relay.imap.core  # noqa: F401

            config["imap"] = {"listen": ["127.0.0.1:0"]}
        except ImportError:
            pass
        self.relay = RelayProcess(workdir, config).start()
        self.emailproxy = EmailProxy(workdir, self) if emailproxy else None

    def direct_token(self) -> str:
        if self._direct_token is None:
            rt = self.idp.issue_refresh_token(MAILBOX)
            r = requests.post(f"{self.idp.url}/bench/oauth2/v2.0/token", verify=str(self.pki.ca_file),
                              data={"grant_type": "refresh_token", "refresh_token": rt,
                                    "client_id": CLIENT_ID, "client_secret": SECRET,
                                    "scope": "https://outlook.office.com/SMTP.Send"})
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
        imap = imaplib.IMAP4_SSL("127.0.0.1", world.upstream.imap_port, ssl_context=world.tls, timeout=CLIENT_TIMEOUT)
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

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        sent = sum(pool.map(worker, range(concurrency)))
    return sent / (time.perf_counter() - started)


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

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        done = sum(pool.map(worker, range(concurrency)))
    return done / (time.perf_counter() - started)


def imap_fetch_mbps(world, target, *, count: int) -> float:
    imap = imap_session(world, target)
    imap.select("INBOX", readonly=True)
    started = time.perf_counter()
    total = 0
    for i in range(1, count + 1):
        typ, data = imap.fetch(str(i), "(BODY.PEEK[])")
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
        except (OSError, asyncio.TimeoutError):
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
        except (OSError, ConnectionError, asyncio.TimeoutError) as exc:
            FAILURES[(f"{n} idle IMAP sessions", target)] = FAILURES.get(
                (f"{n} idle IMAP sessions", target), 0) + 1
            if len(FAILURES) < 50:
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
        for reader, writer in held:
            writer.write(b"DONE\r\nd LOGOUT\r\n")
            writer.close()
        await asyncio.sleep(1)
        return (rss1 - rss0) / max(1, len(held)), cpu, len(held)

    return asyncio.run(run())


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
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
                return s.noop()[0] == 250
        except (OSError, smtplib.SMTPException):
            return False

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        ok = sum(pool.map(one, range(n)))
    return ok, time.perf_counter() - started


# -- the run ---------------------------------------------------------------------------------

def interleaved(targets, reps, fn) -> dict[str, list]:
    results = {t: [] for t in targets}
    for _ in range(reps):
        for t in targets:
            results[t].append(fn(t))
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smaller workloads, for a smoke run")
    ap.add_argument("--no-emailproxy", action="store_true", help="relay365 and direct only")
    args = ap.parse_args()
    raise_fd_limit()
    scale = 0.25 if args.quick else 1.0
    targets = ["direct", "relay"] + ([] if args.no_emailproxy else ["emailproxy"])
    proxies = [t for t in targets if t != "direct"]
    rows: list[tuple[str, str, dict[str, float]]] = []

    def med(res) -> dict[str, float]:
        return {t: statistics.median(v) for t, v in res.items()}

    with tempfile.TemporaryDirectory(prefix="relay365-bench-") as tmp:
        world = World(Path(tmp), emailproxy=not args.no_emailproxy)
        try:
            for t in proxies:  # warm each proxy's token
                smtp_session(world, t).quit()
                imap_session(world, t).logout()
            for conc, per in ((1, 40), (16, 8), (64, 3)):
                per = max(1, int(per * scale))
                for long in (False, True):
                    name = f"SMTP 10 KB msgs/s, {conc} senders, {'one long session' if long else 'session per msg'}"
                    res = interleaved(targets, args.reps, lambda t: smtp_rate(
                        world, t, concurrency=conc, per_worker=per * (5 if long else 1), size=10_000,
                        long=long, name=name))
                    rows.append((name, "msg/s", med(res)))
                    print(f"  done: {name}", file=sys.stderr)
            res = interleaved(targets, args.reps, lambda t: smtp_rate(
                world, t, concurrency=4, per_worker=max(1, int(2 * scale)), size=5_000_000, long=False,
                name="SMTP 5 MB msgs/s, 4 senders"))
            rows.append(("SMTP 5 MB msgs/s, 4 senders", "msg/s", med(res)))
            lat = interleaved(targets, 1, lambda t: smtp_latency(world, t, n=int(200 * scale)))
            for q, label in ((50, "p50"), (99, "p99")):
                rows.append((f"SMTP transaction latency {label} (warm token)", "ms", {
                    t: statistics.quantiles(v[0], n=100)[q - 1] * 1000 for t, v in lat.items()}))
            res = interleaved(targets, 1, lambda t: burst(world, t, n=500))
            rows.append(("Burst of 500 connections: completed", "conns", {t: v[0][0] for t, v in res.items()}))
            rows.append(("Burst of 500 connections: all done after", "s", {t: v[0][1] for t, v in res.items()}))
            print("  done: SMTP", file=sys.stderr)
            for conc, per in ((1, 40), (32, 4)):
                per = max(1, int(per * scale))
                name = f"IMAP logins/s (LOGIN+SELECT+LOGOUT), {conc} clients"
                res = interleaved(targets, args.reps, lambda t: imap_logins(
                    world, t, concurrency=conc, per_worker=per, name=name))
                rows.append((name, "login/s", med(res)))
            lat = interleaved(targets, 1, lambda t: login_latency(world, t, n=int(200 * scale)))
            for q, label in ((50, "p50"), (99, "p99")):
                rows.append((f"IMAP login latency {label} (warm token)", "ms", {
                    t: statistics.quantiles(v[0], n=100)[q - 1] * 1000 for t, v in lat.items()}))
            count = int(200 * scale)
            world.upstream.deliver_many(MAILBOX, [message(1_000_000) for _ in range(count)])
            res = interleaved(targets, args.reps, lambda t: imap_fetch_mbps(world, t, count=count))
            rows.append((f"IMAP FETCH {count} x 1 MB", "MB/s", med(res)))
            print("  done: IMAP", file=sys.stderr)
            n_held = int(1000 * scale)
            for t in proxies:
                kb, cpu, got = held_sessions(world, t, n=n_held)
                rows.append((f"{n_held} idle IMAP sessions: established", "sessions", {t: got}))
                rows.append((f"{n_held} idle IMAP sessions: proxy RSS per session", "KB", {t: kb}))
                rows.append((f"{n_held} idle IMAP sessions: proxy CPU while idle", "% core", {t: cpu}))
            rows[:] = merge(rows)
            print("  done: held sessions", file=sys.stderr)
            logins = {"relay": int(1000 * scale), "emailproxy": int(200 * scale)}
            counts = {}
            for t in proxies:
                before = world.idp.token_requests
                for _ in range(logins[t]):
                    smtp_session(world, t).quit()
                counts[t] = (world.idp.token_requests - before) * 1000 / logins[t]
            rows.append(("Token requests per 1,000 logins (after the first)", "requests", counts))
            rows.append(("Token requests in the whole run, all workloads", "requests",
                         {"relay": sum(1 for r in world.idp.request_log if r.grant_type == "refresh_token"),
                          "emailproxy": sum(1 for r in world.idp.request_log
                                            if r.grant_type == "client_credentials")} if "emailproxy" in targets
                         else {"relay": world.idp.token_requests}))
        finally:
            world.close()
    print_table(rows, targets)
    if FAILURES:
        print("\nFailed sessions (timed out after %d s or refused), all repetitions:" % CLIENT_TIMEOUT)
        for (name, target), n in sorted(FAILURES.items()):
            print(f"  {target:10} {n:5}  {name}")
    return 0


def merge(rows):
    """Rows with the same name (one per target) become one row."""
    out: dict[str, tuple[str, str, dict]] = {}
    for name, unit, vals in rows:
        if name in out:
            out[name][2].update(vals)
        else:
            out[name] = (name, unit, dict(vals))
    return list(out.values())


def print_table(rows, targets) -> None:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "?")
    print(f"\nrelay365 benchmark  {time.strftime('%Y-%m-%d')}  {os.cpu_count()} cores ({cpu})  "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2**30} GiB  "
          f"Python {sys.version.split()[0]}  relay loop: {os.environ.get('RELAY365_LOOP', 'uvloop')}")
    ratios = [("relay", "direct")] + ([("relay", "emailproxy")] if "emailproxy" in targets else [])
    head = (f"{'workload':58} {'unit':9} " + " ".join(f"{t:>10}" for t in targets) + " "
            + " ".join(f"{a + '/' + b:>16}" for a, b in ratios))
    print(head)
    print("-" * len(head))
    for name, unit, vals in rows:
        cells = " ".join(f"{vals[t]:>10.1f}" if t in vals else f"{'-':>10}" for t in targets)
        rs = " ".join(f"{vals[a] / vals[b]:>16.2f}" if a in vals and vals.get(b) else f"{'-':>16}"
                      for a, b in ratios)
        print(f"{name:58} {unit:9} {cells} {rs}")


if __name__ == "__main__":
    sys.exit(main())
