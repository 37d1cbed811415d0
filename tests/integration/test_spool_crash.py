"""The spool survives SIGKILL at every point that matters, with the real queue and worker.

A child process (this module run with `python -m`, see `child_main`) plays the SMTP side: it
submits messages to a real `SpoolWorker` and prints `ACCEPTED <tag> <id>` once each submit has
returned - the moment the SMTP side would answer 250. The worker delivers over real SMTP into a
small aiosmtpd sink on 127.0.0.1 that records what it accepted and can be told to stall, tempfail
or permfail. The child is killed with SIGKILL at the named points (by `$RELAY365_SPOOL_CRASH_AT`,
or by the test while the sink stalls in DATA), started again, and at the end every accepted
message has arrived exactly once - twice only when the kill fell between the upstream's 250 and
the removal of the queue entry.

The last test sends through the real `SmtpDeliverer` (STARTTLS + XOAUTH2) into Postfix.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAILBOX = "scanner@example.test"
BOB, GONE = "bob@example.test", "gone@example.test"


def message(tag: str) -> bytes:
    return (f"From: {MAILBOX}\r\nTo: {BOB}\r\nSubject: spool {tag}\r\nX-Tag: {tag}\r\n"
            f"Message-ID: <{tag}.{time.time_ns()}@lan>\r\n\r\npage {tag}\r\n").encode()


# -- the sink: an aiosmtpd server in a thread of its own ---------------------------------------

class Sink:
    def __init__(self) -> None:
        self.received: list[tuple[str, tuple[str, ...]]] = []
        self.stall_tags: set[str] = set()
        self.tempfail_once: set[str] = set()
        self.permfail_tags: set[str] = set()
        self.stalled = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="smtp-sink", daemon=True)
        self.port = 0

    def __enter__(self) -> Sink:
        self._thread.start()
        assert self._ready.wait(10), "sink did not start"
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def tags(self) -> Counter:
        with self._lock:
            return Counter(tag for tag, _ in self.received)

    def _serve(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        from aiosmtpd.smtp import SMTP

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await self._loop.create_server(lambda: SMTP(self, hostname="sink"), "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()
        await server.wait_closed()

    async def handle_RCPT(self, server, session, envelope, address, options) -> str:
        if address == GONE:
            return "550 5.1.1 User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        tag = email.message_from_bytes(envelope.original_content)["X-Tag"]
        if tag in self.stall_tags:
            self.stalled.set()
            while not self.release.is_set():
                await asyncio.sleep(0.02)
            return "451 4.3.0 Stalled"
        if tag in self.tempfail_once:
            self.tempfail_once.discard(tag)
            return "451 4.3.0 Try again later"
        if tag in self.permfail_tags:
            return "554 5.6.0 Message rejected"
        with self._lock:
            self.received.append((tag, tuple(envelope.rcpt_tos)))
        return "250 2.0.0 OK queued"


# -- the child ---------------------------------------------------------------------------------

def sink_deliverer(port: int):
    """Plain SMTP into the sink; errors translated as relay365.delivery.smtp does."""
    import aiosmtplib

    from relay365.delivery import Refusal
    from relay365.errors import UpstreamError

    async def deliver(entry):
        data = await asyncio.to_thread(entry.message_path.read_bytes)
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=10)
        try:
            await smtp.connect()
        except (OSError, aiosmtplib.SMTPException) as exc:
            raise UpstreamError(f"cannot reach upstream: {type(exc).__name__}") from None
        try:
            await smtp.mail(entry.mail_from)
            refusals = []
            for rcpt in entry.rcpts:
                try:
                    await smtp.rcpt(rcpt)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    refusals.append(Refusal(rcpt, exc.code, exc.message, exc.code < 500))
            if len(refusals) < len(entry.rcpts):
                await smtp.data(data)
            return refusals
        except aiosmtplib.SMTPResponseException as exc:
            raise UpstreamError("refused", code=exc.code, text=exc.message,
                                transient=exc.code < 500) from None
        finally:
            smtp.close()

    return deliver


async def child(args) -> None:
    from relay365.config import SpoolConfig
    from relay365.spool.queue import SpoolQueue
    from relay365.spool.worker import SpoolWorker

    cfg = SpoolConfig(retry_base=0.1, retry_cap=0.3, rescan_interval=0.2, rate_per_minute=60_000,
                      min_free_space=0)
    worker = SpoolWorker(SpoolQueue(Path(args.state)), sink_deliverer(args.port), cfg)
    if not args.deliver_after_send:
        await worker.start()
    for tag in filter(None, args.send.split(",")):
        rcpts = [BOB, GONE] if tag.startswith("partial") else [BOB]
        entry_id = await worker.submit(MAILBOX, MAILBOX, rcpts, message(tag))
        print(f"ACCEPTED {tag} {entry_id}", flush=True)
    if args.crash_after_accept:
        os.kill(os.getpid(), signal.SIGKILL)
    if args.deliver_after_send:
        await worker.start()
    while worker.stats()[0]:
        await asyncio.sleep(0.02)
    await worker.stop()
    print("IDLE", flush=True)


def child_main(argv: list[str]) -> None:
    from relay365.logs import configure

    p = argparse.ArgumentParser()
    p.add_argument("--state", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--send", default="")
    p.add_argument("--deliver-after-send", action="store_true")
    p.add_argument("--crash-after-accept", action="store_true")
    args = p.parse_args(argv)
    configure("info", "json", stream=sys.stderr)  # stdout is for ACCEPTED/IDLE
    asyncio.run(child(args))


# -- the parent --------------------------------------------------------------------------------

class Run:
    def __init__(self, tmp_path: Path, sink: Sink) -> None:
        self.state, self.sink, self.n = tmp_path / "state", sink, 0
        self.logs = tmp_path
        self.accepted: dict[str, str] = {}  # tag -> id

    def start(self, *flags: str, send: str = "", crash_at: str | None = None) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if k != "RELAY365_SPOOL_CRASH_AT"}
        if crash_at:
            env["RELAY365_SPOOL_CRASH_AT"] = crash_at
        self.n += 1
        stderr = open(self.logs / f"child{self.n}.log", "wb")
        with stderr:
            return subprocess.Popen(
                [sys.executable, "-m", "tests.integration.test_spool_crash", "--state",
                 str(self.state), "--port", str(self.sink.port), "--send", send, *flags],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr)

    def finish(self, proc: subprocess.Popen, expect_rc: int) -> list[str]:
        out, _ = proc.communicate(timeout=15)
        lines = out.decode().splitlines()
        for line in lines:
            if line.startswith("ACCEPTED "):
                _, tag, entry_id = line.split()
                self.accepted[tag] = entry_id
        log = (self.logs / f"child{self.n}.log").read_text()[-3000:]
        assert proc.returncode == expect_rc, f"child exited {proc.returncode}\n{log}"
        return lines

    def __call__(self, *flags: str, expect_rc: int = 0, **kw) -> list[str]:
        return self.finish(self.start(*flags, **kw), expect_rc)

    def spool(self, sub: str) -> list[str]:
        d = self.state / "spool" / sub
        return sorted(os.listdir(d)) if d.is_dir() else []


@pytest.fixture
def sink():
    with Sink() as s:
        yield s


@pytest.fixture
def run(tmp_path, sink) -> Run:
    return Run(tmp_path, sink)


KILLED = -signal.SIGKILL


def test_killed_while_receiving_leaves_no_entry_and_loses_nothing_accepted(run, sink):
    lines = run("--deliver-after-send", send="a,b,c", crash_at="enqueue_before_rename:2",
                expect_rc=KILLED)
    assert lines == [f"ACCEPTED a {run.accepted['a']}"]  # b was being written: never a 250
    assert run.spool("queue") == [run.accepted["a"]] and len(run.spool("tmp")) == 1
    assert run() == ["IDLE"]
    assert sink.tags() == Counter({"a": 1})
    assert run.spool("tmp") == run.spool("queue") == run.spool("failed") == []


def test_killed_after_accepting_delivers_everything_once(run, sink):
    run("--crash-after-accept", "--deliver-after-send", send="a,b,c", expect_rc=KILLED)
    assert sorted(run.accepted) == ["a", "b", "c"] and sink.tags() == Counter()
    assert run() == ["IDLE"]
    assert sink.tags() == Counter({"a": 1, "b": 1, "c": 1})
    assert run.spool("queue") == []


def test_killed_mid_delivery_is_retried_after_restart(run, sink):
    sink.stall_tags.add("b")
    proc = run.start("--deliver-after-send", send="a,b,c")
    assert sink.stalled.wait(10), "the delivery of b never reached DATA"
    proc.send_signal(signal.SIGKILL)
    run.finish(proc, KILLED)
    sink.stall_tags.clear()
    sink.release.set()
    assert sink.tags() == Counter({"a": 1})
    assert run.accepted["b"] in run.spool("queue")
    assert run() == ["IDLE"]
    assert sink.tags() == Counter({"a": 1, "b": 1, "c": 1})
    assert run.spool("queue") == [] and run.spool("tmp") == []


def test_killed_between_the_upstream_250_and_the_removal_delivers_twice_at_most(run, sink):
    run("--deliver-after-send", send="a,b,c", crash_at="after_upstream_250:2", expect_rc=KILLED)
    assert sink.tags() == Counter({"a": 1, "b": 1})
    assert run.spool("queue") == sorted([run.accepted["b"], run.accepted["c"]])
    assert run() == ["IDLE"]
    assert sink.tags() == Counter({"a": 1, "b": 2, "c": 1})  # b: the one named window
    assert run.spool("queue") == []


def test_tempfail_permfail_and_refused_recipients_through_the_real_worker(run, sink):
    from relay365.spool.queue import SpoolQueue

    sink.tempfail_once.add("t")
    sink.permfail_tags.add("p")
    assert run(send="t,p,partial")[-1] == "IDLE"
    assert sink.tags() == Counter({"t": 1, "partial": 1})
    assert ("partial", (BOB,)) in sink.received
    failed = {e.id: e for e in SpoolQueue(run.state).entries("failed")}
    assert set(failed) == {run.accepted["p"], run.accepted["partial"] + ".1"}
    assert failed[run.accepted["p"]].last_error == "554 5.6.0 Message rejected"
    split = failed[run.accepted["partial"] + ".1"]
    assert split.rcpts == (GONE,) and split.rcpt_errors == {GONE: "550 5.1.1 User unknown"}
    assert run.spool("queue") == []


# -- through the real upstream deliverer into Postfix ------------------------------------------

@pytest.mark.integration
def test_the_upstream_deliverer_into_postfix(tmp_path, pki, idp, upstream):
    import yaml

    from relay365.config import SpoolConfig, load_config
    from relay365.delivery import SmtpDeliverer
    from relay365.spool.handoff import make_token_hold, spool_deliver
    from relay365.spool.queue import SpoolQueue
    from relay365.spool.worker import SpoolWorker
    from relay365.tokens.manager import TokenManager
    from relay365.tokens.store import TokenStore
    from tests.integration.conftest import DOMAIN, relay_config
    from tests.integration.conftest import MAILBOX as ACCOUNT

    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(relay_config(tmp_path, pki, idp, upstream, smtp={})))
    config = load_config(path)
    tokens = TokenManager(config, TokenStore(config.state_dir))
    subject = f"spooled {time.time_ns()}"
    body = (f"From: {ACCOUNT}\r\nTo: bob@{DOMAIN}\r\nSubject: {subject}\r\n\r\nscan\r\n").encode()
    ok, gone, later = f"bob@{DOMAIN}", f"reject-me@{DOMAIN}", f"tempfail@{DOMAIN}"

    async def main():
        q = SpoolQueue(config.state_dir)
        worker = SpoolWorker(q, spool_deliver(SmtpDeliverer(config, tokens)),
                             SpoolConfig(retry_base=600, retry_cap=600, min_free_space=0),
                             held=make_token_hold(tokens))
        await worker.start()
        entry_id = await worker.submit(ACCOUNT, ACCOUNT, [ok, gone, later], body)
        deadline = time.monotonic() + 30
        while not (q.entries() and q.entries()[0].attempts == 1):
            assert time.monotonic() < deadline, upstream.log_tail()
            await asyncio.sleep(0.05)
        await worker.stop()
        return entry_id, q.entries(), q.entries("failed")

    entry_id, waiting, failed = asyncio.run(main())
    assert any(email.message_from_bytes(m)["Subject"] == subject
               for m in upstream.wait_for_messages(ok, 1))
    (split,) = failed
    assert split.id == f"{entry_id}.1" and split.rcpts == (gone,)
    assert split.rcpt_errors[gone].startswith("550 5.1.1")
    (retry,) = waiting
    assert retry.rcpts == (later,) and retry.last_error.startswith(f"{later}: 451 4.3.0")


if __name__ == "__main__":
    child_main(sys.argv[1:])
