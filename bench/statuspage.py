"""What the status page costs: render time with a full queue, and whether it slows the relay.

    .venv/bin/python -m bench.statuspage [--queued 1000] [--seconds 10]

One relay365 (spool mode) whose Office 365 is unreachable (a closed port on 127.0.0.1), so
everything it accepts waits in the spool, as in the outage an operator opens the page for. The
run fills the queue with `--queued` 10 KB messages through SMTP (one session each, so the page's
200 recent sessions are full too), then:

1. times `GET /` and the JSON APIs, one request at a time (median, p95, max, size);
2. SMTP load (8 senders, session per message, into the spool) for `--seconds`, alternately
   without and with a browser-like poller loading `/` every second, twice each: accepted/s in each
   phase, and the page's load times while the load runs.

Numbers are for one machine at one time: quote them with the machine, never as a test.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import smtplib
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from relay365.passwords import hash_password  # noqa: E402
from relay365.standins.fakeidp import FakeIdP  # noqa: E402
from tests.support.pki import make_pki  # noqa: E402
from tests.support.relayproc import RelayProcess  # noqa: E402
from tests.support.upstream import free_port  # noqa: E402

DOMAIN = "example.test"
MAILBOX = f"bench@{DOMAIN}"
PASSWORD = "bench-password"
CLIENT_ID, SECRET = "bench-client", "bench-secret"
SIZE = 10 * 1024
SENDERS = 8


def message() -> bytes:
    body = ("x" * 98 + "\r\n") * (SIZE // 100)
    return (f"From: printer@lan\r\nTo: sink@{DOMAIN}\r\nSubject: scan {uuid.uuid4()}\r\n"
            f"\r\n{body}").encode()


def send_one(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as s:
        s.login("printer", PASSWORD)
        s.sendmail("printer@lan", [f"sink@{DOMAIN}"], message())


def fill(port: int, n: int) -> None:
    with concurrent.futures.ThreadPoolExecutor(SENDERS) as pool:
        list(pool.map(lambda _: send_one(port), range(n)))


def fetch(url: str) -> tuple[float, int]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        size = len(r.read())
    return time.perf_counter() - started, size


def timings(url: str, n: int) -> tuple[list[float], int]:
    got = [fetch(url) for _ in range(n)]
    return [t for t, _ in got], got[-1][1]


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.95) - 1)]


def load(port: int, seconds: float, poll_url: str | None) -> tuple[float, list[float]]:
    """SMTP sends for `seconds`; with `poll_url`, a poller loads the page every second meanwhile."""
    stop = time.perf_counter() + seconds
    sent = [0] * SENDERS
    page: list[float] = []

    def sender(i: int) -> None:
        while time.perf_counter() < stop:
            send_one(port)
            sent[i] += 1

    def poller() -> None:
        while time.perf_counter() < stop:
            page.append(fetch(poll_url)[0])  # type: ignore[arg-type]
            time.sleep(max(0.0, 1.0 - page[-1]))

    started = time.perf_counter()
    threads = [threading.Thread(target=sender, args=(i,)) for i in range(SENDERS)]
    if poll_url:
        threads.append(threading.Thread(target=poller))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(sent) / (time.perf_counter() - started), page


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queued", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="relay365-bench-page-") as tmp:
        work = Path(tmp)
        pki = make_pki(work / "pki")
        idp = FakeIdP(pki.cert_file, pki.key_file).start()
        idp.add_client(CLIENT_ID, secret=SECRET)
        config = {
            "state_dir": str(work / "state"), "log": {"level": "info", "format": "json"},
            "apps": {"default": {"tenant": "bench", "client_id": CLIENT_ID, "client_secret": SECRET,
                                 "authority": idp.url, "ca_file": str(pki.ca_file)}},
            "upstream": {"smtp": {"host": "127.0.0.1", "port": free_port(), "tls": "starttls"},
                         "ca_file": str(pki.ca_file), "connect_timeout": 2},
            "accounts": [{"mailbox": MAILBOX, "refresh_token": idp.issue_refresh_token(MAILBOX)}],
            "users": [{"username": "printer", "password_hash": hash_password(PASSWORD),
                       "mailbox": MAILBOX, "delivery": "spool"}],
            "smtp": {"listen": ["127.0.0.1:0"]},
            "http": {"listen": "127.0.0.1:0", "show_subjects": True},
            "limits": {"max_connections": 5000, "max_connections_per_ip": 5000},
        }
        relay = RelayProcess(work, config).start()
        try:
            base = f"http://127.0.0.1:{relay.ports['http'][0]}"
            started = time.perf_counter()
            fill(relay.smtp_port, args.queued)
            print(f"  {args.queued} messages queued in {time.perf_counter() - started:.1f} s",
                  file=sys.stderr)
            quiet = {path: timings(base + path, 20)
                     for path in ("/", "/api/queue", "/api/sessions", "/api/accounts")}
            phases: dict[str, list[float]] = {"without the page": [], "with the page": []}
            polled: list[float] = []
            for _ in range(2):
                phases["without the page"].append(load(relay.smtp_port, args.seconds, None)[0])
                rate, page = load(relay.smtp_port, args.seconds, base + "/")
                phases["with the page"].append(rate)
                polled += page
            depth = len(list((Path(config["state_dir"]) / "spool" / "queue").iterdir()))
        finally:
            relay.stop()
            idp.stop()
    print(f"\nstatus page with {args.queued} queued messages and 200 recent sessions "
          f"(one request at a time, 20 each)")
    print(f"{'request':<16} {'median ms':>10} {'p95 ms':>8} {'max ms':>8} {'KiB':>7}")
    for path, (ts, size) in quiet.items():
        print(f"{path:<16} {statistics.median(ts) * 1000:>10.1f} {p95(ts) * 1000:>8.1f} "
              f"{max(ts) * 1000:>8.1f} {size / 1024:>7.1f}")
    print(f"\nSMTP into the spool, {SENDERS} senders, {args.seconds:.0f} s phases, alternating "
          f"(queue at the end: {depth})")
    for name, rates in phases.items():
        print(f"  {name:<18} accepted/s {statistics.median(rates):7.1f}  "
              f"({' '.join(f'{r:.1f}' for r in rates)})")
    if polled:
        print(f"  page load under that load: median {statistics.median(polled) * 1000:.0f} ms, "
              f"max {max(polled) * 1000:.0f} ms over {len(polled)} loads")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
