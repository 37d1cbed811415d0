"""Where relay365's CPU goes per SMTP message: one long session of 10 KB messages, sampled by CPU time.

    .venv/bin/python -m bench.cpuprofile [--messages 2000] [--senders 1] [--size 10000] [--out FILE]
    .venv/bin/python -m bench.cpuprofile --size 5000000 --messages 100 --senders 4   # the 5 MB row

Starts the benchmark's world (real Postfix + Dovecot, the fake identity platform, relay365 under
uvloop) with bench/cpusampler on the relay's PYTHONPATH: its sitecustomize samples the relay's
Python stack per CPU time used (see there for what that does and does not see). After a warm-up
the counts are cleared, the messages are sent, the relay is stopped, and the collapsed stacks
(FILE, input for flamegraph.pl or speedscope) are summed up: CPU ms per message, the share of
each part of the relay, and the top frames by self time.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import run as bench  # noqa: E402

# a sample counts for a part when one of its frames matches (parts may overlap)
PARTS = {
    "aiosmtpd: MAIL/RCPT address parsing (_getaddr)": r"^_getaddr \(.*aiosmtpd",
    "logging (structlog, logging)": r"structlog/|/logging/__init__",
    "metrics (prometheus_client)": r"prometheus_client/",
    "aiosmtplib: mail(), rcpt(), execute_command()": r"^(mail|rcpt|execute_command) \(.*aiosmtplib",
    "pipelined exchange (delivery/exchange.py)": r"relay365/delivery/exchange\.py",
    "writes to the client (aiosmtpd push)": r"^push \(.*aiosmtpd",
    "ssl.py (TLS read/write)": r"/ssl\.py:",
    "DATA: smtp_DATA and all under it": r"^smtp_DATA \(",
    "the From rewrite (smtp/rewrite.py)": r"relay365/smtp/rewrite\.py",
    "the policy core (smtp/policy.py)": r"relay365/smtp/policy\.py",
    "asyncio.wait_for": r"^wait_for \(.*asyncio/tasks",
}


def short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3.11/", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def summarize(raw: Path, messages: int, cpu: float, top: int = 20) -> None:
    stacks = [(line.rpartition(" ")[0].split(";"), int(line.rpartition(" ")[2]))
              for line in raw.read_text().splitlines() if line.strip()]
    total = sum(n for _, n in stacks) or 1
    print(f"   {total} samples, {1000 * cpu / messages:.2f} ms relay CPU per message; share of samples:")
    for part, pattern in PARTS.items():
        rx = re.compile(pattern)
        n = sum(c for frames, c in stacks if any(rx.search(f) for f in frames))
        print(f"   {100 * n / total:5.1f}%  {part}")
    self_time: Counter = Counter()
    for frames, n in stacks:
        self_time[short(frames[-1])] += n
    print("   self time, top frames:")
    for frame, n in self_time.most_common(top):
        print(f"   {100 * n / total:5.1f}%  {frame}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--senders", type=int, default=1)
    ap.add_argument("--size", type=int, default=10_000, help="bytes per message (default 10000)")
    ap.add_argument("--out", type=Path, default=None, help="collapsed stacks (default: a temp file)")
    args = ap.parse_args()
    bench.raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="relay365-cpuprofile-") as tmp:
        out = (args.out or Path(tmp) / "samples.txt").resolve()
        # the relay's, not ours (a PYTHONPATH already set - other code to profile - stays after it)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT / "bench" / "cpusampler"), os.environ.get("PYTHONPATH")) if p)
        os.environ["RELAY365_CPU_SAMPLES"] = str(out)
        world = bench.World(Path(tmp), emailproxy=False)
        try:
            pid = world.relay.proc.pid
            bench.smtp_session(world, "relay").quit()
            bench.smtp_rate(world, "relay", concurrency=args.senders,
                            per_worker=max(2, 500_000 // args.size), size=args.size,
                            long=True)  # warm: token, pooled session, code paths
            os.kill(pid, signal.SIGUSR2)
            time.sleep(0.5)
            cpu0, t0 = bench.cpu_seconds(pid), time.monotonic()
            per = max(1, args.messages // args.senders)
            rate = bench.smtp_rate(world, "relay", concurrency=args.senders, per_worker=per,
                                   size=args.size, long=True)
            cpu, wall = bench.cpu_seconds(pid) - cpu0, time.monotonic() - t0
        finally:
            world.close()  # the relay writes its samples as it exits
        print(f"\n== {args.senders} sender(s), one long session, {per * args.senders} x {args.size:,} bytes: "
              f"{rate:.0f} msg/s; relay CPU {cpu:.2f} s in {wall:.1f} s; load average "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        summarize(out, per * args.senders, cpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
