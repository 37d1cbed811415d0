"""Soak: relay365 under steady mixed load for a long time, with reloads and an upstream restart.

    .venv/bin/python -m bench.soak [--minutes 60] [--held 1000] [--devices 8] [--rate 6]

Not a test (it runs for an hour by default); RELIABILITY.md quotes its output. The world is the
integration tests' (real Postfix submission + Dovecot IMAP with XOAUTH2, the fake identity
platform) with an access-token lifetime of `--token-lifetime` (5 minutes by default, so the relay
refreshes tokens, and the platform rotates refresh tokens, all through the run). Meanwhile:

- `--held` IMAP sessions sit in IDLE through the relay; one that is dropped (the upstream
  restart) logs in again, as a mail client would;
- `--devices` SMTP "devices" each send `--rate` 10 KB messages a minute, one session per message,
  half of them `delivery: direct` (a 4xx makes the device try the same message again 10 s later)
  and half `delivery: spool` (printers); every message carries a unique id in its Subject;
- SIGHUP every `--hup-every` seconds; Postfix and Dovecot stopped for `--outage` seconds at the
  half-way mark, then started again on the same ports with the same mail.

With `--tracemalloc` the relay traces its Python allocations (bench/heaptrace) and the report
ends with the lines whose memory grew most between the first snapshot after warm-up and the
last, beside what RSS gained meanwhile: growth that tracemalloc does not see is outside Python.

Every 30 s it samples the relay's RSS, open fds and CPU. At the end it waits for the spool to
drain, then counts the messages in the real mailbox by id: sent (a 250 was heard) vs delivered
must be equal, with no id twice. Printed: the samples, slopes after warm-up, and errors by kind.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import email
import os
import signal
import smtplib
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import DOVECOT_LIMITS, cpu_seconds, raise_fd_limit, rss_kb  # noqa: E402
from relay365.passwords import hash_password  # noqa: E402
from relay365.standins.fakeidp import FakeIdP  # noqa: E402
from tests.support.pki import make_pki  # noqa: E402
from tests.support.relayproc import RelayProcess  # noqa: E402
from tests.support.upstream import MailUpstream  # noqa: E402

DOMAIN = "example.test"
MAILBOX = f"soak@{DOMAIN}"
SINK = f"sink@{DOMAIN}"
PASSWORD = "soak-password"
CLIENT_ID, SECRET = "soak-client", "soak-secret"


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: set[str] = set()
        self.errors: collections.Counter[str] = collections.Counter()
        self.imap_logins = 0
        self.imap_drops = 0

    def error(self, kind: str) -> None:
        with self.lock:
            self.errors[kind] += 1


def device(port: int, user: str, rate: float, stop: threading.Event, tally: Tally) -> None:
    """One device: a message every 60/rate s; a 4xx or a lost connection: the same one again."""
    pending: str | None = None
    while not stop.is_set():
        msg_id = pending or uuid.uuid4().hex
        body = ("x" * 98 + "\r\n") * 100
        raw = (f"From: {user}@lan\r\nTo: {SINK}\r\nSubject: soak {msg_id}\r\n\r\n{body}").encode()
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=120) as s:
                s.login(user, PASSWORD)
                s.sendmail(f"{user}@lan", [SINK], raw)
            with tally.lock:
                tally.sent.add(msg_id)
            pending = None
            stop.wait(60 / rate)
        except smtplib.SMTPResponseException as exc:
            tally.error(f"smtp {user} {exc.smtp_code}")
            pending = msg_id if 400 <= exc.smtp_code < 500 else None
            stop.wait(10)
        except (OSError, smtplib.SMTPException) as exc:
            tally.error(f"smtp {user} {type(exc).__name__}")
            pending = msg_id
            stop.wait(10)


async def hold(port: int, n: int, stop: threading.Event, tally: Tally) -> None:
    async def session() -> None:
        while not stop.is_set():
            writer = None
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                await reader.readline()
                writer.write(f"a LOGIN idle {PASSWORD}\r\nb SELECT INBOX\r\nc IDLE\r\n".encode())
                while not (line := await asyncio.wait_for(reader.readline(), 60)).startswith(b"+"):
                    if not line or line[:4] in (b"a NO", b"b NO", b"a BA", b"c BA"):
                        raise ConnectionError(line[:80])
                tally.imap_logins += 1
                while not stop.is_set():  # IDLE: untagged EXISTS lines until the end
                    try:
                        line = await asyncio.wait_for(reader.readline(), 5)
                    except TimeoutError:
                        continue
                    if not line:
                        tally.imap_drops += 1
                        break
            except (OSError, ConnectionError, TimeoutError) as exc:
                tally.error(f"imap {type(exc).__name__}")
                await asyncio.sleep(5)
            finally:
                if writer is not None:
                    writer.close()

    tasks = []
    for i in range(0, n, 50):  # in waves, as in bench.run
        tasks += [asyncio.create_task(session()) for _ in range(min(50, n - i))]
        await asyncio.sleep(0.5)
    await asyncio.gather(*tasks)


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope(points: list[tuple[float, float]]) -> float:
    """Least squares, per hour."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx, my = sum(p[0] for p in points) / n, sum(p[1] for p in points) / n
    den = sum((p[0] - mx) ** 2 for p in points) or 1.0
    return sum((p[0] - mx) * (p[1] - my) for p in points) / den * 3600


def delivered(upstream: MailUpstream) -> collections.Counter[str]:
    ids: collections.Counter[str] = collections.Counter()
    for raw in upstream.messages(SINK):
        subject = email.message_from_bytes(raw).get("Subject", "")
        if subject.startswith("soak "):
            ids[subject.split()[1]] += 1
    return ids


def world(work: Path, args: argparse.Namespace) -> tuple[FakeIdP, MailUpstream, RelayProcess]:
    pki = make_pki(work / "pki")
    idp = FakeIdP(pki.cert_file, pki.key_file, access_token_lifetime=args.token_lifetime).start()
    idp.add_client(CLIENT_ID, secret=SECRET)
    upstream = MailUpstream(work / "upstream", pki, f"{idp.url}/introspect",
                            grant_url=f"{idp.url}/grant", domain=DOMAIN, dovecot_extra=DOVECOT_LIMITS)
    upstream.start()
    pw = hash_password(PASSWORD)
    users = [{"username": "idle", "password_hash": pw, "mailbox": MAILBOX}]
    users += [{"username": f"dev{i}", "password_hash": pw, "mailbox": MAILBOX,
               "delivery": "spool" if i % 2 else "direct"} for i in range(args.devices)]
    config = {
        "state_dir": str(work / "state"), "log": {"level": "info", "format": "json"},
        "token_refresh_margin": args.token_lifetime // 3,
        "apps": {"default": {"tenant": "soak", "client_id": CLIENT_ID, "client_secret": SECRET,
                             "authority": idp.url, "ca_file": str(pki.ca_file)}},
        "upstream": {"smtp": {"host": "127.0.0.1", "port": upstream.smtp_port, "tls": "starttls"},
                     "imap": {"host": "127.0.0.1", "port": upstream.imap_port, "tls": "implicit"},
                     "ca_file": str(pki.ca_file)},
        "accounts": [{"mailbox": MAILBOX, "refresh_token": idp.issue_refresh_token(MAILBOX)}],
        "users": users,
        "smtp": {"listen": ["127.0.0.1:0"]}, "imap": {"listen": ["127.0.0.1:0"]},
        "spool": {"rate_per_minute": 10_000},
        "limits": {"max_connections": 5000, "max_connections_per_ip": 5000},
    }
    env = {}
    if args.tracemalloc:
        (work / "heap").mkdir()
        env = {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "bench" / "heaptrace"),
                                                        os.environ.get("PYTHONPATH")) if p),
               "RELAY365_HEAP_SNAPSHOTS": str(work / "heap"),
               "RELAY365_HEAP_EVERY": str(args.tracemalloc)}
    return idp, upstream, RelayProcess(work, config, env=env).start()


def run(args: argparse.Namespace) -> int:
    raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="relay365-soak-") as tmp:
        idp, upstream, relay = world(Path(tmp), args)
        pid, tally, stop = relay.proc.pid, Tally(), threading.Event()
        threads = [threading.Thread(target=device, args=(relay.smtp_port, f"dev{i}", args.rate, stop,
                                                         tally), daemon=True)
                   for i in range(args.devices)]
        threads.append(threading.Thread(target=lambda: asyncio.run(
            hold(relay.imap_port, args.held, stop, tally)), daemon=True))
        for t in threads:
            t.start()
        started = time.monotonic()
        end = started + args.minutes * 60
        samples: list[tuple[float, int, int, float]] = []
        next_hup, outage_done, cpu0 = started + args.hup_every, False, cpu_seconds(pid)
        try:
            while (now := time.monotonic()) < end:
                if now >= next_hup:
                    relay.proc.send_signal(signal.SIGHUP)
                    next_hup += args.hup_every
                if not outage_done and now >= started + args.minutes * 30:
                    outage_done = True
                    print(f"  {time.strftime('%H:%M:%S')} upstream down for {args.outage} s",
                          file=sys.stderr)
                    upstream.stop_daemon("postfix")
                    upstream.stop_daemon("dovecot")
                    time.sleep(args.outage)
                    upstream.start_daemon("postfix")
                    upstream.start_daemon("dovecot")
                if not samples or now - samples[-1][0] - started >= 30:
                    samples.append((now - started, rss_kb(pid), fds(pid), cpu_seconds(pid) - cpu0))
                    s = samples[-1]
                    print(f"  {s[0] / 60:6.1f} min  RSS {s[1] / 1024:6.1f} MiB  fds {s[2]:5}  "
                          f"cpu {s[3]:7.1f} s  sent {len(tally.sent):6}  imap logins "
                          f"{tally.imap_logins}", file=sys.stderr)
                time.sleep(1)
        finally:
            stop.set()
            for t in threads:
                t.join(150)
        queue = Path(relay.config["state_dir"]) / "spool" / "queue"
        deadline = time.monotonic() + 300
        while any(queue.iterdir()) and time.monotonic() < deadline:
            time.sleep(1)
        time.sleep(3)
        got = delivered(upstream)
        relay_errors = collections.Counter(e.get("event") for e in relay.events()
                                           if e.get("level") in ("error", "critical"))
        relay.stop()
        upstream.stop()
        idp.stop()
        report(args, samples, tally, got, relay_errors)
        if args.tracemalloc:
            heap_report(Path(tmp) / "heap", args, samples)
    return 0 if set(got) >= tally.sent and max(got.values(), default=1) == 1 else 1


def report(args, samples, tally, got, relay_errors) -> None:
    warm = [s for s in samples if s[0] >= min(300, args.minutes * 60 / 4)]
    minutes = samples[-1][0] / 60 if samples else 0
    print(f"\nsoak {time.strftime('%Y-%m-%d')}: {minutes:.0f} min, {args.held} held IMAP sessions, "
          f"{args.devices} devices x {args.rate}/min, token lifetime {args.token_lifetime} s, "
          f"SIGHUP every {args.hup_every} s, upstream down {args.outage} s at half time")
    print(f"{'min':>6} {'RSS MiB':>8} {'fds':>6} {'CPU s':>7}")
    for t, rss, fd, cpu in samples[::max(1, len(samples) // 20)]:
        print(f"{t / 60:6.1f} {rss / 1024:8.1f} {fd:6} {cpu:7.1f}")
    print(f"after warm-up: RSS slope {slope([(s[0], s[1] / 1024) for s in warm]):+.1f} MiB/h, "
          f"fd slope {slope([(s[0], s[2]) for s in warm]):+.1f}/h, CPU "
          f"{(samples[-1][3] / samples[-1][0] * 100) if samples else 0:.1f}% of a core")
    # The line above runs through the outage's step (1,000 sessions replaced); each half apart:
    outage_at = args.minutes * 30
    halves = (("before the outage", [s for s in warm if s[0] < outage_at]),
              ("after the re-login", [s for s in samples if s[0] >= outage_at + args.outage + 60]))
    print("RSS by half: " + "; ".join(
        f"{name} {slope([(s[0], s[1] / 1024) for s in part]):+.1f} MiB/h "
        f"({part[0][1] / 1024:.1f} -> {part[-1][1] / 1024:.1f} MiB, {part[0][0] / 60:.0f}-"
        f"{part[-1][0] / 60:.0f} min), fds {min(s[2] for s in part)}-{max(s[2] for s in part)}"
        for name, part in halves if len(part) >= 2))
    lost = tally.sent - set(got)
    twice = [i for i, n in got.items() if n > 1]
    print(f"messages: sent (250 heard) {len(tally.sent)}, delivered {len(got)}, lost {len(lost)}, "
          f"delivered twice {len(twice)}, delivered without a 250 {len(set(got) - tally.sent)}")
    print(f"IMAP: {tally.imap_logins} logins, {tally.imap_drops} sessions dropped (the restart)")
    print("client-side errors by kind:", dict(tally.errors) or "none")
    print("relay error events by kind:", dict(relay_errors) or "none")


def heap_report(snaps: Path, args: argparse.Namespace, samples: list) -> None:
    import tracemalloc
    files = sorted(snaps.glob("*.snap"))
    warm = min(300, args.minutes * 60 / 4)
    first = next((f for f in files if int(f.stem) * args.tracemalloc >= warm), None)
    if first is None or first == files[-1]:
        print("tracemalloc: fewer than two snapshots after warm-up")
        return
    t0, t1 = int(first.stem) * args.tracemalloc, int(files[-1].stem) * args.tracemalloc
    old, new = tracemalloc.Snapshot.load(str(first)), tracemalloc.Snapshot.load(str(files[-1]))
    before, after = (sum(t.size for t in snap.traces) / 2**20 for snap in (old, new))
    traced = after - before
    rss = {round(s[0] / args.tracemalloc): s[1] for s in samples}
    gained = (rss.get(round(t1 / args.tracemalloc), 0) - rss.get(round(t0 / args.tracemalloc), 0)) / 1024
    print(f"\ntracemalloc {t0 / 60:.0f} -> {t1 / 60:.0f} min: traced Python memory {traced:+.2f} MiB, "
          f"({before:.2f} -> {after:.2f}), RSS {gained:+.1f} MiB (with tracing on)")
    for kind in ("lineno", "traceback"):
        print(f"grew most, by {kind}:")
        grew = [stat for stat in new.compare_to(old, kind) if stat.size_diff > 0]  # sorted by |diff|
        for stat in grew[:12 if kind == "lineno" else 4]:
            print(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7} blocks  "
                  + "\n      <- ".join(str(f) for f in reversed(list(stat.traceback))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--held", type=int, default=1000)
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--rate", type=float, default=6.0, help="messages per minute per device")
    ap.add_argument("--token-lifetime", type=int, default=300)
    ap.add_argument("--hup-every", type=float, default=300)
    ap.add_argument("--outage", type=float, default=30)
    ap.add_argument("--tracemalloc", type=float, default=0, metavar="SECONDS",
                    help="trace the relay's Python allocations, a snapshot every SECONDS")
    return run(ap.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
