"""How relay365's cost grows with load: held IMAP sessions and concurrent SMTP senders.

    .venv/bin/python -m bench.scale [--held 100,1000,3000,6000,9000] [--senders 1,16,64,256]

Not a test; BENCHMARKS.md quotes its tables. The world is bench.run's (real Postfix submission and
Dovecot IMAPS with XOAUTH2, the fake identity platform), with Dovecot's limits raised so that it
is not the first thing to give (imap processes serve 50 sessions each; imap-login holds the TLS of
5,000 sessions per process) and the relay's connection limits raised to match.

Held sessions: the sessions are added in waves of 50 (LOGIN, SELECT INBOX, IDLE, as a mail client
parks itself) up to each level, and held; at each level it prints the relay's RSS, the RSS per
session since the start, the marginal KiB per session since the level before, the relay's CPU
while all of them idle (10 s), and the relay CPU per login of that level's wave (login, SELECT
and IDLE, the token from cache). A session counts only while it is still open at the measurement
(a dropped upstream closes it); where a level cannot be reached it says what refused or closed.

SMTP senders: N threads each send 10 KB messages through relay365 and, interleaved, straight to
Postfix; twice: one long session per sender, and a session per message (AUTH each time, as a
printer does). Printed: messages/s each way, the ratio, and the relay's CPU ms per message.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import run as B  # noqa: E402

DOVECOT_SCALE = """
default_process_limit = 1500
default_client_limit = 15000
protocol imap {
  mail_max_userip_connections = 30000
}
service imap-login {
  service_count = 0
  client_limit = 5000
  process_limit = 6
  vsz_limit = 0
}
service imap {
  service_count = 0
  client_limit = 50
  process_limit = 600
}
"""


async def _park(port: int, held: list, why: list) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
    except (TimeoutError, OSError) as exc:
        why.append(f"connect: {exc!r}")
        return
    try:
        async def step(send: bytes, done: bytes) -> None:
            if send:
                writer.write(send)
            while not (line := await reader.readline()).startswith(done):
                if not line or line[:2] in (b"a ", b"b ", b"c "):
                    raise ConnectionError(line[:120] or "closed")
        await asyncio.wait_for(reader.readline(), 30)
        await asyncio.wait_for(step(f"a LOGIN {B.USER} {B.PASSWORD}\r\n".encode(), b"a OK"), 30)
        await asyncio.wait_for(step(b"b SELECT INBOX\r\n", b"b OK"), 30)
        await asyncio.wait_for(step(b"c IDLE\r\n", b"+"), 30)
        held.append((reader, writer))
    except (TimeoutError, OSError, ConnectionError) as exc:
        why.append(repr(exc)[:160])
        writer.close()


async def held_curve(world: B.World, levels: list[int]) -> list[tuple]:
    pid, port = world.relay.proc.pid, world.relay.imap_port
    held: list = []
    rows = []
    rss_start = prev_rss = B.rss_kb(pid)
    prev_n = 0
    for level in levels:
        why: list[str] = []
        cpu0, logins0 = B.cpu_seconds(pid), len(held)
        while len(held) < level and len(why) < 50:
            await asyncio.gather(*(_park(port, held, why) for _ in range(min(50, level - len(held)))))
        login_ms = (B.cpu_seconds(pid) - cpu0) / max(1, len(held) - logins0) * 1000
        await asyncio.sleep(3)
        rss = B.rss_kb(pid)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        c0, t0 = B.cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(10)
        idle = (B.cpu_seconds(pid) - c0) / (time.monotonic() - t0) * 100
        alive = [(r, w) for r, w in held if not r.at_eof() and not w.is_closing()]
        if len(alive) < len(held):  # the relay closed some: the upstream dropped them
            why.extend(["closed while held"] * (len(held) - len(alive)))
            held[:] = alive
        n = len(held)
        rows.append((level, n, fds, rss / 1024, (rss - rss_start) / max(1, n),
                     (rss - prev_rss) / max(1, n - prev_n), idle, login_ms, len(why),
                     _relay_reasons(world) if why else ""))
        print(f"  {time.strftime('%H:%M:%S')} held {n}/{level}: {fds} fds, RSS {rss / 1024:.1f} MiB, "
              f"idle CPU {idle:.2f}%, login {login_ms:.2f} ms" + (f"; refused: {why[:2]}" if why else ""),
              file=sys.stderr, flush=True)
        prev_rss, prev_n = rss, n
        if why:
            print(f"  the reasons so far: {rows[-1][-1]}", file=sys.stderr, flush=True)
        if n < level:
            break
    for _, writer in held:
        writer.write(b"DONE\r\nd LOGOUT\r\n")
        writer.close()
    await asyncio.sleep(2)
    return rows


def _relay_reasons(world: B.World) -> str:
    """What the relay logged at warning or worse, by event and error, most frequent first."""
    seen = collections.Counter(
        f"{e.get('event')}: {str(e.get('error') or e.get('reason') or '')[:160]}"
        for e in world.relay.events() if e.get("level", e.get("log_level")) in ("warning", "error"))
    relay = "; ".join(f"{n} x {what}" for what, n in seen.most_common(4)) or "none logged"
    dovecot = world.upstream.logdir / "dovecot.log" if world.upstream.logdir else None
    lines = dovecot.read_text(errors="replace").splitlines() if dovecot and dovecot.exists() else []
    said = collections.Counter(line.split(": ", 2)[-1][:160] for line in lines
                               if any(w in line for w in ("Warning", "Error", "Fatal")))
    return relay + " | Dovecot: " + ("; ".join(f"{n} x {w}" for w, n in said.most_common(3)) or "nothing")


def sender_rows(world: B.World, senders: list[int], reps: int) -> list[tuple]:
    rows = []
    for long in (True, False):
        for n in senders:
            per = max(3, (400 if long else 150) // n)
            name = f"{n} {'long' if long else 'per-message'}"
            res = B.interleaved(["direct", "relay"], reps, lambda t, n=n, per=per, name=name: B.smtp_rate(
                world, t, concurrency=n, per_worker=per, size=10_000, long=long, name=name))
            cpu = sorted(B.CPU_MS.get((name, "relay"), [0.0]))
            d, r = statistics.median(res["direct"]), statistics.median(res["relay"])
            rows.append(("long session" if long else "session per message", n, d, r, r / d if d else 0,
                         cpu[len(cpu) // 2], cpu[0], cpu[-1]))
            print(f"  {time.strftime('%H:%M:%S')} {name}: direct {d:.1f}/s relay {r:.1f}/s, relay "
                  f"{cpu[len(cpu) // 2]:.2f} ms CPU/msg", file=sys.stderr, flush=True)
    return rows


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=ROOT, check=False).stdout.strip() or "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--held", default="100,1000,3000,6000,9000", help="levels of held IMAP sessions")
    ap.add_argument("--senders", default="1,16,64,256", help="concurrent SMTP senders")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions of each SMTP row")
    args = ap.parse_args()
    levels = [int(x) for x in args.held.split(",") if x]
    senders = [int(x) for x in args.senders.split(",") if x]
    B.raise_fd_limit()
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    with tempfile.TemporaryDirectory(prefix="relay365-scale-") as tmp:
        world = B.World(Path(tmp), emailproxy=False, dovecot_extra=DOVECOT_SCALE,
                        max_connections=max(levels + senders) + 500)
        try:
            B.smtp_session(world, "relay").quit()  # the tokens into the cache
            B.imap_session(world, "relay").logout()
            rest = B.rss_kb(world.relay.proc.pid) / 1024
            held = asyncio.run(held_curve(world, levels)) if levels else []
            smtp = sender_rows(world, senders, args.reps) if senders else []
        finally:
            world.close()
    print(f"\nbench.scale {time.strftime('%Y-%m-%d %H:%M')}, commit {_commit()}, "
          f"relay RSS at rest {rest:.1f} MiB, RLIMIT_NOFILE {nofile[0]}/{nofile[1]} (the relay uses 2 per "
          f"spliced session)")
    if held:
        print("\n| held IMAP sessions | still open | relay fds | relay RSS MiB | KiB/session (all) | "
              "KiB/session (this step) | relay CPU idle, % core | relay CPU ms per login | "
              "logins refused on the way "
              "(tried again) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for level, n, fds, rss, per, step, idle, login, refused, _ in held:
            print(f"| {level:,} | {n:,} | {fds:,} | {rss:.1f} | {per:.1f} | {step:.1f} | {idle:.2f} | "
                  f"{login:.2f} | {refused} |")
        for level, *_, refused, reasons in held:
            if refused:
                print(f"\nrefused up to {level:,}: {reasons}")
    if smtp:
        print("\n| SMTP 10 KB messages | senders | direct msg/s | relay msg/s | relay/direct | relay CPU "
              "ms/msg (median, min-max) |")
        print("|---|---|---|---|---|---|")
        for kind, n, d, r, ratio, cpu, lo, hi in smtp:
            print(f"| {kind} | {n} | {d:.1f} | {r:.1f} | {ratio:.2f}x | {cpu:.2f} ({lo:.2f}-{hi:.2f}) |")
    if B.FAILURES:
        print("\nfailed sessions:", {f"{t} {n}": c for (n, t), c in sorted(B.FAILURES.items())})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
