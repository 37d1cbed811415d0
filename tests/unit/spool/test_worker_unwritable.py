"""The worker on a spool that turns read-only while it runs: a real tmpfs remounted `ro` (root).

What an attempt decided must hold although the queue refuses to record it: a message delivered
but not removed is not sent again (before: every rescan found it due and sent it again), a
dead letter is not tried again, a deferral keeps its backoff; all of it is written once the spool
is writable again, without a restart.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from relay365.config import SpoolConfig
from relay365.delivery import Refusal
from relay365.errors import UpstreamError
from relay365.spool import outcome
from relay365.spool.entry import SpoolError, SpoolFullError
from relay365.spool.queue import SpoolQueue
from relay365.spool.worker import SpoolWorker
from tests.support.tmpfs import tmpfs
from tests.unit.spool.test_worker import A, Deliverer, eventually, put, run

FAST = SpoolConfig(retry_base=0.05, retry_cap=0.2, rate_per_minute=60_000, rescan_interval=0.05,
                   min_free_space=0)
SLOW_RETRY = SpoolConfig(retry_base=2, retry_cap=2, rate_per_minute=60_000, rescan_interval=0.05,
                         min_free_space=0)
TEMPFAIL = UpstreamError("refused", code=451, text="4.3.0 Try again later", transient=True)
PERMFAIL = UpstreamError("refused", code=550, text="5.7.1 Not allowed", transient=False)


@pytest.fixture
def spool_fs(tmp_path, monkeypatch):
    """A 4 MiB tmpfs as state_dir; `mode("ro")` / `mode("rw")` remounts it."""
    with tmpfs(tmp_path / "state", "size=4m") as mnt:
        monkeypatch.setattr(outcome, "WRITE_RETRY", 0.1)
        yield mnt


def mode(mnt: Path, how: str) -> None:
    done = subprocess.run(["mount", "-o", f"remount,{how}", str(mnt)], capture_output=True,
                          text=True, timeout=10)
    assert done.returncode == 0, done.stderr


class Gated(Deliverer):
    """Each call waits for `go` (set from the test), then does what `script` says."""

    def __init__(self, script=None) -> None:
        super().__init__(script)
        self.go = asyncio.Event()

    async def __call__(self, entry):
        await self.go.wait()
        return await super().__call__(entry)


def events(logs, name):
    return [e for e in logs if e["event"] == name]


async def read_only_while_one_attempt_ends(w: SpoolWorker, d: Gated, mnt: Path) -> None:
    """Start the worker; its first attempt ends (as `d` says) once the spool is read-only."""
    await w.start()
    await eventually(lambda: w._inflight)
    await asyncio.to_thread(mode, mnt, "ro")
    d.go.set()
    await eventually(lambda: len(d.calls) == 1)


def test_delivered_but_not_removed_is_not_sent_again_and_removed_when_writable(spool_fs):
    q = SpoolQueue(spool_fs)
    entry_id = put(q, 1)
    d = Gated()

    async def main():
        w = SpoolWorker(q, d, FAST)
        with capture_logs() as logs:
            await read_only_while_one_attempt_ends(w, d, spool_fs)
            await eventually(lambda: events(logs, "spool_write_failed"))
            await asyncio.sleep(0.6)  # a dozen rescans and write retries
            calls_while_read_only = len(d.calls)
            assert (q.queue / entry_id).is_dir() and w.stats()[0] == 0
            await asyncio.to_thread(mode, spool_fs, "rw")
            await eventually(lambda: events(logs, "spool_write_recovered"))
            await asyncio.sleep(0.3)
            await w.stop()
        return logs, calls_while_read_only

    logs, calls_while_read_only = run(main())
    assert calls_while_read_only == 1 and d.ids() == [entry_id]
    assert q.entries() == [] and q.entries("failed") == []
    (failed,) = events(logs, "spool_write_failed")
    assert failed["log_level"] == "error" and failed["step"] == "remove"
    assert failed["error"] == "EROFS (Read-only file system)"
    assert failed["path"] == str(q.queue / entry_id)
    assert "will not send it again" in failed["action"] and "restart" in failed["action"]
    assert events(logs, "spool_delivered")[0]["id"] == entry_id
    assert events(logs, "spool_write_recovered")[0]["steps"] == ["remove"]


def test_a_deferral_the_spool_refuses_keeps_its_backoff_and_is_written_later(spool_fs):
    q = SpoolQueue(spool_fs)
    entry_id = put(q, 1)

    def script(entry, n):
        raise TEMPFAIL

    d = Gated(script)

    async def main():
        w = SpoolWorker(q, d, SLOW_RETRY)  # the retry comes after 1-2 s, rescans every 50 ms
        with capture_logs() as logs:
            await read_only_while_one_attempt_ends(w, d, spool_fs)
            await eventually(lambda: events(logs, "spool_deferred"))
            await asyncio.sleep(0.5)
            assert len(d.calls) == 1  # before: the envelope still said "due", so every rescan
            await asyncio.to_thread(mode, spool_fs, "rw")
            await eventually(lambda: events(logs, "spool_write_recovered"))
            await w.stop()
        return logs

    logs = run(main())
    (failed,) = events(logs, "spool_write_failed")
    assert failed["step"] == "defer" and "kept in memory" in failed["action"]
    stored = json.loads((q.queue / entry_id / "envelope.json").read_bytes())
    assert stored["attempts"] == 1 and stored["last_error"] == "451 4.3.0 Try again later"
    assert stored["next_attempt"] > time.time() - 5


def test_a_dead_letter_the_spool_refuses_is_not_tried_again_and_moved_later(spool_fs):
    q = SpoolQueue(spool_fs)
    entry_id = put(q, 1)

    def script(entry, n):
        raise PERMFAIL

    d = Gated(script)

    async def main():
        w = SpoolWorker(q, d, FAST)
        with capture_logs() as logs:
            await read_only_while_one_attempt_ends(w, d, spool_fs)
            await eventually(lambda: events(logs, "spool_write_failed"))
            await asyncio.sleep(0.5)
            assert len(d.calls) == 1 and w.stats()[0] == 0
            await asyncio.to_thread(mode, spool_fs, "rw")
            await eventually(lambda: events(logs, "spool_write_recovered"))
            await w.stop()
        return logs

    logs = run(main())
    assert events(logs, "spool_write_failed")[0]["step"] == "dead_letter"
    (dead,) = q.entries("failed")
    assert dead.id == entry_id and dead.last_error == "550 5.7.1 Not allowed"
    assert events(logs, "spool_failed")[0]["failed_id"] == entry_id
    assert q.entries() == []


def test_refused_recipients_split_off_later_and_the_accepted_one_is_not_sent_again(spool_fs):
    q = SpoolQueue(spool_fs)
    entry_id = put(q, 1, rcpts=("ok@x.test", "gone@x.test"))

    def script(entry, n):
        return [Refusal("gone@x.test", 550, "5.1.1 User unknown", False)]

    d = Gated(script)

    async def main():
        w = SpoolWorker(q, d, FAST)
        with capture_logs() as logs:
            await read_only_while_one_attempt_ends(w, d, spool_fs)
            await eventually(lambda: events(logs, "spool_write_failed"))
            await asyncio.sleep(0.5)
            assert len(d.calls) == 1
            await asyncio.to_thread(mode, spool_fs, "rw")
            await eventually(lambda: events(logs, "spool_write_recovered"))
            await w.stop()
        return logs

    logs = run(main())
    assert [e["step"] for e in events(logs, "spool_write_failed")] == ["split_off"]
    (dead,) = q.entries("failed")
    assert dead.id == f"{entry_id}.1" and dead.rcpts == ("gone@x.test",)
    assert q.entries() == []  # and the entry itself removed, behind the split


def test_what_is_still_unwritten_at_stop_is_said(spool_fs):
    q = SpoolQueue(spool_fs)
    entry_id = put(q, 1)
    d = Gated()

    async def main():
        w = SpoolWorker(q, d, FAST)
        with capture_logs() as logs:
            await read_only_while_one_attempt_ends(w, d, spool_fs)
            await eventually(lambda: events(logs, "spool_write_failed"))
            await w.stop()
        await asyncio.to_thread(mode, spool_fs, "rw")
        return logs

    logs = run(main())
    (left,) = events(logs, "spool_unwritten_at_stop")
    assert left["ids"] == [entry_id] and "sent again after the restart" in left["action"]
    assert (q.queue / entry_id).is_dir()  # the next start sends it again: the window, as said


def test_a_spool_read_only_at_start_is_refused_then_taken_up_when_writable(spool_fs):
    """Read-only before the worker starts: it starts anyway, `submit` refuses with the reason
    (the SMTP side answers 452), one error line says what to do, it tries again every
    WRITE_RETRY and at each rescan (SIGHUP), never in a spin; writable again, it claims the spool
    and delivers, no restart."""
    q = SpoolQueue(spool_fs)
    mode(spool_fs, "ro")
    d = Deliverer()
    tries = 0
    claim = q.ensure_dirs

    def counted() -> None:
        nonlocal tries
        tries += 1
        claim()

    q.ensure_dirs = counted  # type: ignore[method-assign]

    async def main():
        w = SpoolWorker(q, d, FAST)
        with capture_logs() as logs:
            await w.start()
            with pytest.raises(SpoolFullError) as refused:
                await w.submit(A, A, ["bob@example.test"], b"Subject: s\r\n\r\nx\r\n")
            await asyncio.sleep(0.5)
            timed = tries
            for _ in range(20):  # SIGHUPs while it waits: each one tries at once, no more
                w.rescan()
                await asyncio.sleep(0.02)
            tries_read_only = (timed, tries - timed)
            await asyncio.to_thread(mode, spool_fs, "rw")
            await eventually(lambda: events(logs, "spool_writable"))
            entry_id = await w.submit(A, A, ["bob@example.test"], b"Subject: s\r\n\r\nx\r\n")
            await eventually(lambda: d.ids() == [entry_id])
            await w.stop()
        return logs, str(refused.value), tries_read_only

    logs, refused, tries_read_only = run(main())
    assert refused == f"cannot queue the message in {q.root}: EROFS (Read-only file system)"
    (unwritable,) = events(logs, "spool_unwritable")
    assert unwritable["log_level"] == "error" and unwritable["error"] == refused
    assert unwritable["action"].startswith(f"make {q.root} writable")
    timed, woken = tries_read_only
    assert 4 <= timed <= 8, timed  # at start, then every 0.1 s (WRITE_RETRY here) for 0.5 s
    assert 20 <= woken <= 25, woken
    assert [e["event"] for e in logs if e["event"].startswith("spool_worker")] == [
        "spool_worker_started", "spool_worker_stopped"]


def test_a_spool_claimed_by_another_relay_later_is_waited_out(spool_fs, monkeypatch):
    """Read-only at start, and by the time it is writable another worker holds it: this one keeps
    refusing (it must not deliver beside the other) and keeps running; it claims the spool once
    the other lets go."""
    q = SpoolQueue(spool_fs)
    mode(spool_fs, "ro")
    monkeypatch.setattr(outcome, "WRITE_RETRY", 30)  # it tries only when woken by a rescan

    async def main():
        w = SpoolWorker(q, Deliverer(), FAST)
        await w.start()
        await asyncio.to_thread(mode, spool_fs, "rw")
        other = SpoolQueue(spool_fs)
        other.lock_worker()
        try:
            with capture_logs() as logs:
                w.rescan()
                await eventually(lambda: isinstance(w._claim.refusal, SpoolError)
                                 and "another relay365" in str(w._claim.refusal))
            with pytest.raises(SpoolError, match="another relay365 is delivering"):
                await w.submit(A, A, ["bob@example.test"], b"Subject: s\r\n\r\nx\r\n")
            assert w._task is not None and not w._task.done()
            assert not events(logs, "spool_worker_started")
        finally:
            other.unlock_worker()
        w.rescan()
        await eventually(lambda: w._claim.refusal is None)
        await w.submit(A, A, ["bob@example.test"], b"Subject: s\r\n\r\nx\r\n")
        await w.stop()

    run(main())
