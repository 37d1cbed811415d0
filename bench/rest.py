"""relay365's memory at rest and per idle IMAP session (issue 12, target 4).

    .venv/bin/python -m bench.rest [--reps 3] [--sessions 1000] [--settle 5]

The world of `bench.run` without emailproxy (real Dovecot and Postfix, the fake identity platform,
relay365 as `relay365 serve` with bench.run's config). Each repetition starts a fresh relay and
reads `/proc/PID/status` `settle` seconds after `relay_started` (the start-up token refreshes have
finished by then): that is "at rest". Then one IMAP login (so nothing the first session loads is
counted per session), then bench.run's `held_sessions`: `--sessions` logged in, SELECTed and in
IDLE, the relay's RSS growth divided by the sessions held. Medians and the spread (min-max) of the
repetitions are printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import World, held_sessions, imap_session, raise_fd_limit  # noqa: E402


def status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status we report, and the thread count."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "Threads"):
            out[key] = int(value.split()[0])
    return out


def one(world: World, sessions: int, settle: float) -> dict[str, float]:
    pid = world.relay.proc.pid
    time.sleep(settle)
    rest = status(pid)
    imap_session(world, "relay").logout()
    time.sleep(1)
    kib, _cpu, held = held_sessions(world, "relay", n=sessions, idle_seconds=2)
    return {"RSS at rest, MiB": rest["VmRSS"] / 1024, "  anonymous, MiB": rest["RssAnon"] / 1024,
            "  file-backed, MiB": rest["RssFile"] / 1024, "  threads": rest["Threads"],
            "idle IMAP sessions held": held, "per idle IMAP session, KiB": kib}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--settle", type=float, default=5.0, help="seconds after start-up before reading")
    args = ap.parse_args()
    raise_fd_limit()
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="relay365-rest-") as tmp:
        world = World(Path(tmp), emailproxy=False)
        try:
            for rep in range(args.reps):
                if rep:  # a fresh relay each time: at rest means just started
                    world.relay.stop()
                    world.relay.start()
                runs.append(one(world, args.sessions, args.settle))
                got = ", ".join(f"{k.strip()} {v:.1f}" for k, v in runs[-1].items())
                print(f"  rep {rep + 1} (relay pid {world.relay.proc.pid}): {got}", file=sys.stderr,
                      flush=True)
        finally:
            world.close()
    print(f"{'':48} {'median':>8} {'min':>8} {'max':>8}   (of {len(runs)})")
    for key in runs[0]:
        values = [r[key] for r in runs]
        print(f"{key:48} {statistics.median(values):8.1f} {min(values):8.1f} {max(values):8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
