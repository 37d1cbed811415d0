"""Session churn: does memory come back after IMAP sessions end?

    .venv/bin/python -m bench.churn [--sessions 1000] logout logout drop ...
    RELAY_ENV=MALLOC_MMAP_THRESHOLD_=131072 .venv/bin/python -m bench.churn logout logout

The soak's world (`bench.soak.world`: real Dovecot with XOAUTH2, the fake identity platform).
Each round opens `--sessions` spliced sessions (LOGIN + SELECT through the relay), then ends them
all: `logout` by the client, `drop` by stopping Dovecot (started again after). The relay's RSS
is printed while each round's sessions are all open (held: what a session costs) and after they
ended; a steady climb per round is memory that ended sessions left behind.
`RELAY_ENV` (comma-separated NAME=VALUE) goes into the relay's environment, for allocator or
loop settings (`RELAY365_LOOP=asyncio`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import soak  # noqa: E402
from bench.run import cpu_seconds, raise_fd_limit, rss_kb  # noqa: E402
from tests.support.relayproc import RelayProcess  # noqa: E402
from tests.support.upstream import MailUpstream  # noqa: E402

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _open(port: int) -> Conn:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()
    writer.write(f"a LOGIN idle {soak.PASSWORD}\r\nb SELECT INBOX\r\n".encode())
    while not (line := await reader.readline()).startswith(b"b "):
        if not line:
            raise ConnectionError("closed before SELECT finished")
    return reader, writer


async def one_round(port: int, n: int, mode: str, upstream: MailUpstream, pid: int) -> float:
    """One round; returns the relay's RSS in MiB while all `n` sessions were open."""
    conns: list[Conn] = []
    for i in range(0, n, 50):  # in waves of 50, as the soak opens them
        conns += await asyncio.gather(*(_open(port) for _ in range(min(50, n - i))))
    await asyncio.sleep(2)
    held = rss_kb(pid) / 1024
    if mode == "drop":
        await asyncio.to_thread(upstream.stop_daemon, "dovecot")
    else:
        for _, writer in conns:
            writer.write(b"c LOGOUT\r\n")
    for reader, writer in conns:
        await reader.read()
        writer.close()
    if mode == "drop":
        await asyncio.to_thread(upstream.start_daemon, "dovecot")
    return held


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rounds", nargs="+", choices=("logout", "drop"))
    ap.add_argument("--sessions", type=int, default=1000)
    args = ap.parse_args()
    extra = dict(kv.split("=", 1) for kv in os.environ.get("RELAY_ENV", "").split(",") if kv)
    start = RelayProcess.__init__

    def with_env(self: RelayProcess, workdir: Path, config: dict, env: dict | None = None,
                 name: str = "relay") -> None:
        start(self, workdir, config, env={**(env or {}), **extra}, name=name)

    RelayProcess.__init__ = with_env  # type: ignore[method-assign]
    raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="relay365-churn-") as tmp:
        idp, upstream, relay = soak.world(Path(tmp), argparse.Namespace(token_lifetime=3600, devices=0))
        try:
            pid = relay.proc.pid
            print(f"relay env {extra or 'as is'}; RSS at start {rss_kb(pid) / 1024:.1f} MiB")
            for mode in args.rounds:
                started = time.monotonic()
                held = asyncio.run(one_round(relay.imap_port, args.sessions, mode, upstream, pid))
                time.sleep(2)
                print(f"{mode:7} x {args.sessions}: held {held:6.1f} MiB, "
                      f"after RSS {rss_kb(pid) / 1024:6.1f} MiB  "
                      f"CPU {cpu_seconds(pid):6.1f} s  {time.monotonic() - started:5.1f} s", flush=True)
        finally:
            relay.stop()
            upstream.stop()
            idp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
