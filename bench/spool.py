"""Spool mode against direct mode: messages per second accepted, and how fast the spool drains.

    .venv/bin/python -m bench.spool [--reps 3] [--messages 200]

One relay365 in front of the integration tests' upstream (real Postfix submission with STARTTLS
and XOAUTH2 through Dovecot, the fake identity platform) with two local users: one `delivery:
direct`, one `delivery: spool`. Each sender opens its own session per message (login, 10 KB
message, quit), the way a scanner does; 1, 16 and 64 senders at once; direct and spool runs
interleaved, several repetitions, medians printed. "accepted/s" is what the clients see; "drained
in" is how long the spool then takes to hand everything to Postfix (per-mailbox rate limit lifted
for the run: Exchange's 30/minute would make it 2 s per message by design).
Numbers are for one machine at one time: quote them with the machine, never as a test.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import smtplib
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from relay365.passwords import hash_password  # noqa: E402
from relay365.standins.fakeidp import FakeIdP  # noqa: E402
from tests.support.pki import make_pki  # noqa: E402
from tests.support.relayproc import RelayProcess  # noqa: E402
from tests.support.upstream import MailUpstream  # noqa: E402

DOMAIN = "example.test"
MAILBOX = f"bench@{DOMAIN}"
PASSWORD = "bench-password"
CLIENT_ID, SECRET = "bench-client", "bench-secret"
SIZE = 10 * 1024


def message() -> bytes:
    body = ("x" * 98 + "\r\n") * (SIZE // 100)
    return (f"From: bench@lan\r\nTo: sink@{DOMAIN}\r\nSubject: bench {uuid.uuid4()}\r\n"
            f"\r\n{body}").encode()


def send_one(port: int, user: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as s:
        s.login(user, PASSWORD)
        s.sendmail("bench@lan", [f"sink@{DOMAIN}"], message())


def rate(port: int, user: str, concurrency: int, total: int) -> float:
    per = max(1, total // concurrency)
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: [send_one(port, user) for _ in range(per)], range(concurrency)))
    return per * concurrency / (time.perf_counter() - started)


def drained(relay: RelayProcess, timeout: float = 600) -> float:
    """Seconds until the spool is empty again."""
    queue = Path(relay.config["state_dir"]) / "spool" / "queue"
    started = time.perf_counter()
    while any(queue.iterdir()):
        if time.perf_counter() - started > timeout:
            raise SystemExit("the spool did not drain; see " + str(relay.log_path))
        time.sleep(0.02)
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--messages", type=int, default=192, help="per run (split among the senders)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="relay365-bench-spool-") as tmp:
        work = Path(tmp)
        pki = make_pki(work / "pki")
        idp = FakeIdP(pki.cert_file, pki.key_file).start()
        idp.add_client(CLIENT_ID, secret=SECRET)
        upstream = MailUpstream(work / "upstream", pki, f"{idp.url}/introspect", domain=DOMAIN)
        upstream.start()
        pw = hash_password(PASSWORD)
        config = {
            "state_dir": str(work / "state"), "log": {"level": "info", "format": "json"},
            "apps": {"default": {"tenant": "bench", "client_id": CLIENT_ID, "client_secret": SECRET,
                                 "authority": idp.url, "ca_file": str(pki.ca_file)}},
            "upstream": {"smtp": {"host": "127.0.0.1", "port": upstream.smtp_port, "tls": "starttls"},
                         "ca_file": str(pki.ca_file)},
            "accounts": [{"mailbox": MAILBOX, "refresh_token": idp.issue_refresh_token(MAILBOX)}],
            "users": [{"username": "direct", "password_hash": pw, "mailbox": MAILBOX},
                      {"username": "spool", "password_hash": pw, "mailbox": MAILBOX, "delivery": "spool"}],
            "smtp": {"listen": ["127.0.0.1:0"]},
            "spool": {"rate_per_minute": 1_000_000, "concurrency_per_mailbox": 3},
            "limits": {"max_connections": 5000, "max_connections_per_ip": 5000},
        }
        relay = RelayProcess(work, config).start()
        try:
            send_one(relay.smtp_port, "direct")  # warm the token
            rows = []
            for conc in (1, 16, 64):
                results: dict[str, list[float]] = {"direct": [], "spool": [], "drain": []}
                for _ in range(args.reps):
                    results["direct"].append(rate(relay.smtp_port, "direct", conc, args.messages))
                    results["spool"].append(rate(relay.smtp_port, "spool", conc, args.messages))
                    results["drain"].append(drained(relay))
                rows.append((conc, *(statistics.median(results[k]) for k in ("direct", "spool", "drain"))))
                print(f"  {conc} sender(s) done", file=sys.stderr)
        finally:
            relay.stop()
            upstream.stop()
            idp.stop()
    print(f"\n10 KB messages, one session per message, {args.messages} per run, median of {args.reps}")
    print(f"{'senders':>8} {'direct msg/s':>13} {'spool msg/s':>12} {'spool/direct':>13} "
          f"{'drained in s':>13}")
    for conc, d, s, drain in rows:
        print(f"{conc:>8} {d:>13.1f} {s:>12.1f} {s / d:>13.2f} {drain:>13.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
