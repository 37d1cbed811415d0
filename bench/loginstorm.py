"""Login storm: many IMAP clients logging in at once while Office 365 is unreachable.

    .venv/bin/python -m bench.loginstorm [--rounds 10] [--logins 2000] [--concurrency 200]

What the upstream restart of the soak (`bench.soak`) does to the relay, alone and repeatable: a
cold relay (no verified login remembered yet), its IMAP upstream on a closed port, and rounds of
`--logins` LOGINs with the right password, `--concurrency` at a time, each answered `NO
[UNAVAILABLE]`. Printed per round: the relay's RSS, its CPU so far and the round's wall time, so a
leak (RSS climbing per round) and a thundering herd (the first round's cost) both show.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import cpu_seconds, raise_fd_limit, rss_kb  # noqa: E402
from relay365.passwords import hash_password  # noqa: E402
from relay365.standins.fakeidp import FakeIdP  # noqa: E402
from tests.support.pki import make_pki  # noqa: E402
from tests.support.relayproc import RelayProcess  # noqa: E402
from tests.support.upstream import free_port  # noqa: E402

MAILBOX = "storm@example.test"


async def attempt(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await reader.readline()
        writer.write(b"a LOGIN storm pw\r\n")
        return (await reader.readline())[:4]
    finally:
        writer.close()


async def one_round(port: int, logins: int, concurrency: int) -> collections.Counter[bytes]:
    gate, replies = asyncio.Semaphore(concurrency), collections.Counter[bytes]()

    async def one() -> None:
        async with gate:
            replies[await attempt(port)] += 1

    await asyncio.gather(*(one() for _ in range(logins)))
    return replies


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--logins", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=200)
    args = ap.parse_args()
    raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="relay365-storm-") as tmp:
        work = Path(tmp)
        pki = make_pki(work / "pki")
        idp = FakeIdP(pki.cert_file, pki.key_file).start()
        idp.add_client("storm", secret="s")
        config = {
            "state_dir": str(work / "state"), "log": {"level": "info", "format": "json"},
            "apps": {"default": {"tenant": "t", "client_id": "storm", "client_secret": "s",
                                 "authority": idp.url, "ca_file": str(pki.ca_file)}},
            # a free port nobody listens on: Office 365 is down
            "upstream": {"imap": {"host": "127.0.0.1", "port": free_port(), "tls": "implicit"},
                         "ca_file": str(pki.ca_file)},
            "accounts": [{"mailbox": MAILBOX, "refresh_token": idp.issue_refresh_token(MAILBOX)}],
            "users": [{"username": "storm", "password_hash": hash_password("pw"), "mailbox": MAILBOX}],
            "imap": {"listen": ["127.0.0.1:0"]},
            "limits": {"max_connections": 5000, "max_connections_per_ip": 5000},
        }
        relay = RelayProcess(work, config).start()
        try:
            pid, port = relay.proc.pid, relay.ports["imap"][0]
            print(f"{args.logins} logins x {args.rounds} rounds, {args.concurrency} at a time; "
                  f"relay RSS at start {rss_kb(pid) / 1024:.1f} MiB, CPU {cpu_seconds(pid):.1f} s")
            for i in range(args.rounds):
                started = time.monotonic()
                replies = asyncio.run(one_round(port, args.logins, args.concurrency))
                took = time.monotonic() - started
                time.sleep(1)
                print(f"round {i}: RSS {rss_kb(pid) / 1024:6.1f} MiB  CPU {cpu_seconds(pid):6.1f} s  "
                      f"{took:5.1f} s  {dict(replies)}", flush=True)
        finally:
            relay.stop()
            idp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
