"""relay365 side by side with a direct connection (and email-oauth2-proxy, with --emailproxy).

    .venv/bin/python -m bench.run [--reps 3] [--quick] [--emailproxy]

Starts the integration tests' upstream (real Dovecot IMAPS + Postfix submission, XOAUTH2 through
the fake identity platform) on loopback, relay365 in front of it, and runs each workload against
each target, interleaved (direct, relay, [emailproxy], direct, relay, ...), several repetitions.
Prints a table of medians and the ratio relay/direct. Numbers are for one machine at one time:
quote them with the machine, never as a test.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import imaplib
import os
import smtplib
import ssl
import statistics
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
from tests.support.upstream import MailUpstream, xoauth2_string  # noqa: E402

DOMAIN = "example.test"
MAILBOX = f"bench@{DOMAIN}"
USER, PASSWORD = "bench", "bench-password"
CLIENT_ID, SECRET = "bench-client", "bench-secret"


class World:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.pki = make_pki(workdir / "pki")
        self.idp = FakeIdP(self.pki.cert_file, self.pki.key_file).start()
        self.idp.add_client(CLIENT_ID, secret=SECRET)
        self.upstream = MailUpstream(workdir / "upstream", self.pki, f"{self.idp.url}/introspect",
                                     domain=DOMAIN)
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

    def direct_token(self) -> str:
        if self._direct_token is None:
            rt = self.idp.issue_refresh_token(MAILBOX)
            r = requests.post(f"{self.idp.url}/bench/oauth2/v2.0/token", verify=str(self.pki.ca_file),
                              data={"grant_type": "refresh_token", "refresh_token": rt,
                                    "client_id": CLIENT_ID, "client_secret": SECRET,
                                    "scope": "https://outlook.office.com/SMTP.Send"})
            self._direct_token = r.json()["access_token"]
        return self._direct_token

    def close(self) -> None:
        self.relay.stop()
        self.upstream.stop()
        self.idp.stop()


# -- clients ---------------------------------------------------------------------------------

def smtp_session(world: World, target: str) -> smtplib.SMTP:
    if target == "direct":
        s = smtplib.SMTP("127.0.0.1", world.upstream.smtp_port, timeout=120)
        s.starttls(context=world.tls)
        s.auth("XOAUTH2", lambda challenge=None: xoauth2_string(MAILBOX, world.direct_token()),
               initial_response_ok=True)
        return s
    s = smtplib.SMTP("127.0.0.1", world.relay.smtp_port, timeout=120)
    s.login(USER, PASSWORD)
    return s


def imap_session(world: World, target: str) -> imaplib.IMAP4:
    if target == "direct":
        imap = imaplib.IMAP4_SSL("127.0.0.1", world.upstream.imap_port, ssl_context=world.tls, timeout=120)
        imap.authenticate("XOAUTH2", lambda _: xoauth2_string(MAILBOX, world.direct_token()).encode())
        return imap
    imap = imaplib.IMAP4("127.0.0.1", world.relay.imap_port, timeout=120)
    imap.login(USER, PASSWORD)
    return imap


def message(size: int) -> bytes:
    body = ("z" * 998 + "\r\n") * max(1, size // 1000)
    return (f"From: {MAILBOX}\r\nTo: sink@{DOMAIN}\r\nSubject: bench\r\n"
            f"Message-ID: <{uuid.uuid4()}@b>\r\n\r\n{body}").encode()


# -- workloads: each returns one number ------------------------------------------------------

def smtp_rate(world, target, *, concurrency: int, per_worker: int, size: int, long: bool) -> float:
    data = message(size)

    def worker(_) -> None:
        if long:
            s = smtp_session(world, target)
            for _ in range(per_worker):
                s.sendmail(MAILBOX, [f"sink@{DOMAIN}"], data)
            s.quit()
        else:
            for _ in range(per_worker):
                s = smtp_session(world, target)
                s.sendmail(MAILBOX, [f"sink@{DOMAIN}"], data)
                s.quit()

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    return concurrency * per_worker / (time.perf_counter() - started)


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


def imap_logins(world, target, *, concurrency: int, per_worker: int) -> float:
    def worker(_) -> None:
        for _ in range(per_worker):
            imap = imap_session(world, target)
            imap.select("INBOX", readonly=True)
            imap.logout()

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    return concurrency * per_worker / (time.perf_counter() - started)


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


def burst(world, target, *, n: int) -> tuple[int, float]:
    port = world.upstream.smtp_port if target == "direct" else world.relay.smtp_port
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
    args = ap.parse_args()
    scale = 0.25 if args.quick else 1.0
    targets = ["direct", "relay"]
    rows: list[tuple[str, str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="relay365-bench-") as tmp:
        world = World(Path(tmp))
        try:
            smtp_session(world, "relay").quit()  # warm the relay's token
            for conc, per in ((1, 40), (16, 8), (64, 3)):
                per = max(1, int(per * scale))
                for long in (False, True):
                    name = f"SMTP 10 KB msgs/s, {conc} senders, {'one long session' if long else 'session per msg'}"
                    res = interleaved(targets, args.reps, lambda t: smtp_rate(
                        world, t, concurrency=conc, per_worker=per * (5 if long else 1), size=10_000, long=long))
                    rows.append((name, "msg/s", {t: statistics.median(v) for t, v in res.items()}))
            res = interleaved(targets, args.reps, lambda t: smtp_rate(
                world, t, concurrency=4, per_worker=max(1, int(2 * scale)), size=5_000_000, long=False))
            rows.append(("SMTP 5 MB msgs/s, 4 senders", "msg/s", {t: statistics.median(v) for t, v in res.items()}))
            lat = interleaved(targets, 1, lambda t: smtp_latency(world, t, n=int(200 * scale)))
            for q, label in ((50, "p50"), (99, "p99")):
                rows.append((f"SMTP transaction latency {label}", "ms", {
                    t: statistics.quantiles(v[0], n=100)[q - 1] * 1000 for t, v in lat.items()}))
            res = interleaved(targets, 1, lambda t: burst(world, t, n=500))
            rows.append(("Burst of 500 connections: completed", "conns", {t: v[0][0] for t, v in res.items()}))
            rows.append(("Burst of 500 connections: all done after", "s", {t: v[0][1] for t, v in res.items()}))
            if "imap" in world.relay.ports:
                for conc, per in ((1, 40), (32, 4)):
                    per = max(1, int(per * scale))
                    res = interleaved(targets, args.reps, lambda t: imap_logins(
                        world, t, concurrency=conc, per_worker=per))
                    rows.append((f"IMAP logins/s (LOGIN+SELECT+LOGOUT), {conc} clients", "login/s",
                                 {t: statistics.median(v) for t, v in res.items()}))
                count = int(200 * scale)
                world.upstream.deliver_many(MAILBOX, [message(1_000_000) for _ in range(count)])
                res = interleaved(targets, args.reps, lambda t: imap_fetch_mbps(world, t, count=count))
                rows.append((f"IMAP FETCH {count} x 1 MB", "MB/s", {t: statistics.median(v) for t, v in res.items()}))
            before = world.idp.token_requests
            for _ in range(int(1000 * scale)):
                smtp_session(world, "relay").quit()
            rows.append((f"Token requests per {int(1000 * scale)} relay logins", "requests",
                         {"relay": world.idp.token_requests - before}))
        finally:
            world.close()
    print_table(rows, targets)
    return 0


def print_table(rows, targets) -> None:
    print(f"\nrelay365 benchmark  {time.strftime('%Y-%m-%d')}  cores={os.cpu_count()}  "
          f"mem={os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2**30} GiB")
    head = f"{'workload':62} {'unit':9} " + " ".join(f"{t:>10}" for t in targets) + f" {'relay/direct':>13}"
    print(head)
    print("-" * len(head))
    for name, unit, vals in rows:
        cells = " ".join(f"{vals[t]:>10.1f}" if t in vals else f"{'-':>10}" for t in targets)
        ratio = (f"{vals['relay'] / vals['direct']:>13.2f}" if "direct" in vals and vals["direct"]
                 else f"{'-':>13}")
        print(f"{name:62} {unit:9} {cells} {ratio}")


if __name__ == "__main__":
    sys.exit(main())
