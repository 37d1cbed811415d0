"""The delivery worker against a real on-disk queue, with a fake deliverer that records calls.

The code under test is the worker; the deliverer is the injection point for upstream behaviour.
Timings are scaled down (retry_base 50 ms) but real: nothing here patches the clock.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import io
import threading
import time

import pytest
from structlog.testing import capture_logs

from relay365.config import SpoolConfig
from relay365.delivery import Refusal
from relay365.errors import TokenError, UpstreamError
from relay365.spool import worker as worker_mod
from relay365.spool.cli import queue_retry
from relay365.spool.entry import Entry, SpoolError
from relay365.spool.handoff import describe
from relay365.spool.notice import render_notice
from relay365.spool.queue import SpoolQueue
from relay365.spool.worker import SpoolWorker

FAST = SpoolConfig(retry_base=0.05, retry_cap=0.2, throttle_pause=0.3, rate_per_minute=60_000,
                   rescan_interval=0.1, min_free_space=0)
A, B = "scanner@example.test", "copier@example.test"


def msg(n: int) -> bytes:
    return f"From: {A}\r\nSubject: scan {n}\r\nMessage-ID: <{n}@lan>\r\n\r\npage {n}\r\n".encode()


class Deliverer:
    """Records (time, entry); `script(entry, n_calls_for_this_entry)` may raise or return refusals."""

    def __init__(self, script=None) -> None:
        self.calls: list[tuple[float, object]] = []
        self.script = script

    async def __call__(self, entry):
        n = sum(1 for _, e in self.calls if e.id == entry.id)
        self.calls.append((time.monotonic(), entry))
        if self.script is not None:
            result = self.script(entry, n)
            if asyncio.iscoroutine(result):
                result = await result
            return result
        return None

    def ids(self) -> list[str]:
        return [e.id for _, e in self.calls]


async def eventually(pred, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def put(q: SpoolQueue, n: int, mailbox: str = A, rcpts=("bob@example.test",), now=None) -> str:
    return q.enqueue(mailbox, mailbox, list(rcpts), msg(n), time.time() if now is None else now)


@pytest.fixture
def q(tmp_path) -> SpoolQueue:
    return SpoolQueue(tmp_path / "state")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


# -- order, waking, bookkeeping ----------------------------------------------------------------

def test_delivers_each_mailbox_in_order_of_arrival(q):
    ids = [put(q, i, mailbox=(A, B)[i % 2]) for i in range(8)]
    d = Deliverer()

    async def main():
        w = SpoolWorker(q, d, FAST)
        await w.start()
        await eventually(lambda: len(d.calls) == 8)
        await eventually(lambda: w.stats()[0] == 0)
        await w.stop()

    run(main())
    assert sorted(d.ids()) == ids
    assert [i for i in d.ids() if i in ids[0::2]] == ids[0::2]
    assert [i for i in d.ids() if i in ids[1::2]] == ids[1::2]
    assert q.entries() == [] and q.entries("failed") == []


def test_submit_wakes_the_worker_at_once(q):
    d = Deliverer()

    async def main():
        w = SpoolWorker(q, d, SpoolConfig(rescan_interval=60, min_free_space=0))
        await w.start()
        with capture_logs() as logs:
            entry_id = await w.submit(A, A, ["bob@example.test"], msg(1), mail_options=["BODY=8BITMIME"])
            assert (q.queue / entry_id).is_dir()  # on disk before submit returns
            started = time.monotonic()
            await eventually(lambda: len(d.calls) == 1, timeout=2.0)
            assert time.monotonic() - started < 1.0  # not the 60 s rescan
            await eventually(lambda: w.stats() == (0, 0.0))
        await w.stop()
        return entry_id, logs

    entry_id, logs = run(main())
    entry = d.calls[0][1]
    assert (entry.id, entry.mail_options, entry.message_path.name) == (entry_id, ("BODY=8BITMIME",),
                                                                      "message.eml")
    events = [e["event"] for e in logs]
    assert events == ["spool_enqueued", "spool_delivered"]
    assert logs[1]["id"] == entry_id and logs[1]["attempts"] == 1


def test_stats_give_depth_and_the_oldest_age(q):
    put(q, 1, now=time.time() - 100)
    put(q, 2)

    async def main():
        w = SpoolWorker(q, Deliverer(), FAST, held=lambda mailbox: True)
        await w.start()
        depth, age = w.stats()
        await w.stop()
        return depth, age

    depth, age = run(main())
    assert depth == 2 and 99 < age < 110


def test_waiting_comes_from_the_index_oldest_first_and_note_updates_it_at_once(q, monkeypatch):
    """The status page lists the queue from here: no envelope is read for it, and its own retry or
    delete shows on the next load, not after the next rescan."""
    old, new = put(q, 1, now=time.time() - 50), put(q, 2, now=time.time() - 100)

    async def main():
        w = SpoolWorker(q, Deliverer(), SpoolConfig(rescan_interval=60, min_free_space=0),
                        held=lambda mailbox: True)
        await w.start()
        try:
            reads = []
            monkeypatch.setattr(q, "read", lambda path: reads.append(path))
            first = [e.id for e in w.waiting()]
            monkeypatch.undo()
            entry = q.retry(old, 12345.0)
            w.note(old, entry)
            due = {e.id: e.next_attempt for e in w.waiting()}
            q.delete(new)
            w.note(new, None)
            return reads, first, due, [e.id for e in w.waiting()]
        finally:
            await w.stop()

    reads, first, due, after = run(main())
    assert reads == [] and first == [new, old]
    assert due[old] == 12345.0
    assert after == [old]


def test_one_worker_per_spool(q, tmp_path):
    async def main():
        w = SpoolWorker(q, Deliverer(), FAST)
        await w.start()
        try:
            with pytest.raises(SpoolError, match="another relay365"):
                await SpoolWorker(SpoolQueue(tmp_path / "state"), Deliverer(), FAST).start()
        finally:
            await w.stop()

    run(main())


def test_tmp_is_swept_at_start(q):
    q.ensure_dirs()
    (q.tmp / "00000000000000000001-1").mkdir()

    async def main():
        w = SpoolWorker(q, Deliverer(), FAST)
        with capture_logs() as logs:
            await w.start()
            await w.stop()
        return logs

    logs = run(main())
    assert list(q.tmp.iterdir()) == []
    assert logs[0]["event"] == "spool_worker_started" and logs[0]["swept"] == 1


# -- failures ----------------------------------------------------------------------------------

def test_a_4xx_defers_only_that_message(q):
    first, second = put(q, 1), put(q, 2)

    def script(entry, n):
        if entry.id == first and n < 2:
            raise UpstreamError("refused", code=451, text="4.3.0 Try again later", transient=True)

    d = Deliverer(script)

    async def main():
        w = SpoolWorker(q, d, FAST)
        with capture_logs() as logs:
            await w.start()
            await eventually(lambda: w.stats()[0] == 0)
            await w.stop()
        return logs

    logs = run(main())
    assert d.ids() == [first, second, first, first]
    (t0, _), _, (t1, _), (t2, _) = d.calls
    assert t1 - t0 >= 0.025 and t2 - t1 >= 0.05  # 25-50 ms, then 50-100 ms
    deferred = [e for e in logs if e["event"] == "spool_deferred"]
    assert [(e["attempts"], e["verdict"], e["error"]) for e in deferred] == [
        (1, "defer", "451 4.3.0 Try again later"), (2, "defer", "451 4.3.0 Try again later")]


def test_a_session_failure_pauses_the_mailbox_and_keeps_the_order(q):
    first, second = put(q, 1), put(q, 2)
    other = put(q, 3, mailbox=B)

    def script(entry, n):
        if entry.id == first and n == 0:
            raise UpstreamError("cannot reach upstream: ConnectionRefusedError")

    d = Deliverer(script)

    async def main():
        w = SpoolWorker(q, d, FAST)
        await w.start()
        await eventually(lambda: w.stats()[0] == 0)
        await w.stop()

    run(main())
    assert [i for i in d.ids() if i != other] == [first, first, second]
    assert d.ids().index(other) < 2  # the other mailbox did not wait


def test_a_5xx_is_a_dead_letter_with_the_reason(q):
    entry_id = put(q, 1)

    def script(entry, n):
        raise UpstreamError("refused", code=550, text="5.7.60 SMTP; Client does not have "
                            "permissions to send as this sender", transient=False)

    async def main():
        w = SpoolWorker(q, Deliverer(script), FAST)
        with capture_logs() as logs:
            await w.start()
            await eventually(lambda: w.stats()[0] == 0)
            await w.stop()
        return logs

    logs = run(main())
    (dead,) = q.entries("failed")
    assert dead.id == entry_id and dead.last_error.startswith("550 5.7.60 SMTP; Client does not")
    assert dead.attempts == 0 and dead.failed_at is not None
    assert next(e for e in logs if e["event"] == "spool_failed")["id"] == entry_id


def test_the_lifetime_ends_in_a_dead_letter(q):
    put(q, 1)
    called_at: list[float] = []

    def script(entry, n):
        called_at.append(time.time())
        raise UpstreamError("refused", code=451, text="4.4.0 still no", transient=True)

    d = Deliverer(script)
    cfg = SpoolConfig(retry_base=0.05, retry_cap=0.1, max_lifetime=0.4, rescan_interval=0.1,
                      rate_per_minute=60_000, min_free_space=0)

    async def main():
        w = SpoolWorker(q, d, cfg)
        await w.start()
        await eventually(lambda: w.stats()[0] == 0)
        await w.stop()

    run(main())
    (dead,) = q.entries("failed")
    assert dead.last_error.startswith("gave up after 0s and ")
    assert dead.last_error.endswith("attempts: 451 4.4.0 still no")
    assert 2 <= len(d.calls) <= 12
    assert called_at[-1] >= dead.received_at + 0.4  # the last try came when the lifetime ended


def test_refused_recipients_are_dead_letters_and_the_rest_is_delivered_or_retried(q):
    entry_id = put(q, 1, rcpts=("ok@x.test", "gone@x.test", "later@x.test"))

    def script(entry, n):
        if n == 0:
            return [Refusal("gone@x.test", 550, "5.1.1 User unknown", False),
                    Refusal("later@x.test", 452, "4.2.2 Mailbox full", True)]
        return ()

    d = Deliverer(script)

    async def main():
        w = SpoolWorker(q, d, FAST)
        await w.start()
        await eventually(lambda: w.stats()[0] == 0)
        await w.stop()

    run(main())
    assert [e.rcpts for _, e in d.calls] == [("ok@x.test", "gone@x.test", "later@x.test"),
                                             ("later@x.test",)]
    (dead,) = q.entries("failed")
    assert dead.id == f"{entry_id}.1" and dead.rcpts == ("gone@x.test",)
    assert dead.rcpt_errors == {"gone@x.test": "550 5.1.1 User unknown"}
    assert d.calls[1][1].last_error == "later@x.test: 452 4.2.2 Mailbox full"


def test_every_recipient_refused_for_good_is_one_dead_letter(q):
    entry_id = put(q, 1, rcpts=("a@x.test", "b@x.test"))

    def script(entry, n):
        return [Refusal(r, 550, "5.1.1 User unknown", False) for r in entry.rcpts]

    async def main():
        w = SpoolWorker(q, Deliverer(script), FAST)
        await w.start()
        await eventually(lambda: w.stats()[0] == 0)
        await w.stop()

    run(main())
    (dead,) = q.entries("failed")
    assert dead.id == entry_id and set(dead.rcpt_errors) == {"a@x.test", "b@x.test"}


def test_a_bug_in_the_deliverer_keeps_the_message(q):
    put(q, 1)

    def script(entry, n):
        if n == 0:
            raise ValueError("oops")

    async def main():
        w = SpoolWorker(q, Deliverer(script), FAST)
        with capture_logs() as logs:
            await w.start()
            await eventually(lambda: w.stats()[0] == 0)
            await w.stop()
        return logs

    logs = run(main())
    bug = [e for e in logs if e["event"] == "spool_deliver_bug"]
    assert bug and bug[0]["error"] == "internal error: ValueError"
    assert "spool_delivered" in [e["event"] for e in logs]


# -- admin notices -----------------------------------------------------------------------------

def test_a_dead_letter_sends_a_notice_to_the_admin_never_to_the_sender(q):
    entry_id = q.enqueue(A, "printer@lan.local", ["gone@x.test"], msg(7), time.time())
    sent: list[bytes] = []

    def script(entry, n):
        if not entry.notice:
            raise UpstreamError("refused", code=550, text="5.1.1 User unknown", transient=False)
        sent.append(entry.message_path.read_bytes())

    d = Deliverer(script)
    cfg = SpoolConfig(**{**FAST.__dict__, "admin_bounce_to": "postmaster@example.test"})

    async def main():
        w = SpoolWorker(q, d, cfg)
        await w.start()
        await eventually(lambda: len(d.calls) == 2 and w.stats()[0] == 0)
        await w.stop()

    run(main())
    notice = d.calls[1][1]
    assert notice.notice and notice.rcpts == ("postmaster@example.test",)
    assert notice.mailbox == A and notice.mail_from == A  # sent as the mailbox, to the admin only
    parsed = email.message_from_bytes(sent[0], policy=email.policy.default)
    assert parsed["To"] == "postmaster@example.test"
    assert entry_id in parsed["Subject"] and "Subject: scan 7" in parsed.get_content()
    assert [e.id for e in q.entries("failed")] == [entry_id]


def test_a_notice_that_fails_is_not_noticed_again(q):
    put(q, 1)

    def script(entry, n):
        raise UpstreamError("refused", code=550, text="5.1.1 User unknown", transient=False)

    d = Deliverer(script)
    cfg = SpoolConfig(**{**FAST.__dict__, "admin_bounce_to": "postmaster@example.test"})

    async def main():
        w = SpoolWorker(q, d, cfg)
        await w.start()
        await eventually(lambda: len(q.entries("failed")) == 2)
        await asyncio.sleep(0.3)
        await w.stop()

    run(main())
    assert len(d.calls) == 2 and [e.notice for e in q.entries("failed")] == [False, True]


def test_render_notice():
    entry = Entry("00000000000000000042-7", A, "printer@lan.local", ("gone@x.test",), 1.7e9, 99,
                  attempts=3)
    head = b"Subject: =?utf-8?q?Scan_=C3=BCbersicht?=\r\nFrom: Printer <printer@lan>\r\n\r\nbody"
    raw = render_notice(entry, "550 5.1.1 User unknown", entry.id, "postmaster@example.test", head,
                        1.7e9 + 60)
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["From"] == f"relay365 <{A}>" and parsed["To"] == "postmaster@example.test"
    assert parsed["Auto-Submitted"] == "auto-generated" and parsed["Message-ID"]
    assert parsed["Subject"] == f"relay365: undeliverable message from {A} ({entry.id})"
    body = parsed.get_content()
    assert "Sender:     printer@lan.local" in body  # named in the text, never a recipient
    assert "Reason:     550 5.1.1 User unknown" in body and "Attempts:   4" in body
    assert "  Subject: Scan übersicht\r\n  From: Printer <printer@lan>\r\n" in body
    assert f"relay365 queue retry {entry.id}" in body and "body" not in body.split("headers:")[1]


# -- pacing ------------------------------------------------------------------------------------

def test_throttling_pauses_that_mailbox_only(q):
    a = put(q, 1)
    b = put(q, 2, mailbox=B)

    def script(entry, n):
        if entry.id == a and n == 0:
            raise UpstreamError("refused", code=432, text="4.3.2 STOREDRV.ClientSubmit; sender "
                                "thread limit exceeded", transient=True)

    d = Deliverer(script)
    cfg = SpoolConfig(**{**FAST.__dict__, "retry_cap": 1.0})

    async def main():
        w = SpoolWorker(q, d, cfg)
        with capture_logs() as logs:
            await w.start()
            await eventually(lambda: w.stats()[0] == 0)
            await w.stop()
        return logs

    logs = run(main())
    assert d.ids() == [a, b, a] or d.ids() == [b, a, a]
    times = [t for t, e in d.calls if e.id == a]
    assert times[1] - times[0] >= 0.15  # throttle_pause 0.3 s, jitter in its upper half
    (t,) = [e for e in logs if e["event"] == "spool_throttled"]
    assert t["mailbox"] == A and t["in_a_row"] == 1 and 0.15 <= t["pause"] <= 0.3


def test_rate_limit_paces_a_backlog(q):
    for i in range(4):
        put(q, i)
    d = Deliverer()
    cfg = SpoolConfig(**{**FAST.__dict__, "rate_per_minute": 600.0})  # one per 100 ms

    async def main():
        w = SpoolWorker(q, d, cfg)
        await w.start()
        await eventually(lambda: w.stats()[0] == 0)
        await w.stop()

    run(main())
    gaps = [b[0] - a[0] for a, b in zip(d.calls, d.calls[1:], strict=False)]
    assert len(gaps) == 3 and min(gaps) >= 0.09


@pytest.mark.parametrize("concurrency", [1, 2])
def test_concurrency_per_mailbox(q, concurrency):
    for i in range(5):
        put(q, i)
    now_running, most = 0, 0

    async def slow(entry, n):
        nonlocal now_running, most
        now_running += 1
        most = max(most, now_running)
        await asyncio.sleep(0.05)
        now_running -= 1

    cfg = SpoolConfig(**{**FAST.__dict__, "concurrency_per_mailbox": concurrency})

    async def main():
        w = SpoolWorker(q, Deliverer(slow), cfg)
        await w.start()
        await eventually(lambda: w.stats()[0] == 0)
        await w.stop()

    run(main())
    assert most == concurrency


# -- accounts that need re-authorisation -------------------------------------------------------

def test_needs_auth_holds_the_queue_without_burning_attempts(q):
    ids = [put(q, 1), put(q, 2)]
    state = {"held": True}
    d = Deliverer()

    async def main():
        w = SpoolWorker(q, d, FAST, held=lambda mailbox: state["held"] and mailbox == A.lower())
        with capture_logs() as logs:
            await w.start()
            await asyncio.sleep(0.4)
            assert d.calls == [] and w.stats()[0] == 2
            assert [e.attempts for e in q.entries()] == [0, 0]
            state["held"] = False
            w.rescan()
            await eventually(lambda: w.stats()[0] == 0, timeout=2)
            await w.stop()
        return logs

    logs = run(main())
    assert d.ids() == ids
    events = [e["event"] for e in logs]
    assert events.count("spool_held") == 1 and events.count("spool_resumed") == 1
    assert "spool_deferred" not in events


def test_a_needs_auth_error_from_delivery_holds_too(q, monkeypatch):
    monkeypatch.setattr(worker_mod, "HOLD_RECHECK", 0.2)
    put(q, 1)

    def script(entry, n):
        if n == 0:
            raise TokenError(account=A, error="invalid_grant", code=70008, transient=False,
                             action="run relay365 auth")

    d = Deliverer(script)

    async def main():
        w = SpoolWorker(q, d, FAST)
        with capture_logs() as logs:
            await w.start()
            await eventually(lambda: w.stats()[0] == 0)
            await w.stop()
        return logs

    logs = run(main())
    (t0, _e0), (t1, e1) = d.calls
    assert e1.attempts == 0 and t1 - t0 >= 0.2
    events = [e["event"] for e in logs]
    assert "spool_hold" in events and "spool_deferred" not in events


# -- operators and stopping --------------------------------------------------------------------

def test_an_operator_retry_is_noticed(q, tmp_path):
    entry_id = put(q, 1)
    d = Deliverer(lambda entry, n: (_ for _ in ()).throw(UpstreamError(
        "refused", code=451, text="4.3.0 later", transient=True)) if n == 0 else None)
    cfg = SpoolConfig(**{**FAST.__dict__, "retry_base": 600.0, "retry_cap": 600.0})

    async def main():
        w = SpoolWorker(q, d, cfg)
        await w.start()
        await eventually(lambda: q.entries() and q.entries()[0].attempts == 1)
        await asyncio.sleep(0.2)
        assert len(d.calls) == 1  # 5-10 minutes to wait
        assert queue_retry(tmp_path / "state", entry_id, out=io.StringIO()) == 0
        await eventually(lambda: w.stats()[0] == 0, timeout=2)
        await w.stop()

    run(main())
    assert len(d.calls) == 2


def test_a_message_deleted_under_the_worker_is_forgotten(q):
    put(q, 1)

    def script(entry, n):
        raise FileNotFoundError(str(entry.message_path))

    async def main():
        w = SpoolWorker(q, Deliverer(script), FAST)
        await w.start()
        await eventually(lambda: w.stats()[0] == 0)
        await w.stop()

    run(main())


def test_stop_lets_a_delivery_in_progress_finish(q):
    put(q, 1)

    async def slow(entry, n):
        await asyncio.sleep(0.3)

    async def main():
        w = SpoolWorker(q, Deliverer(slow), FAST)
        await w.start()
        await asyncio.sleep(0.05)
        with capture_logs() as logs:
            await w.stop(timeout=5)
        return logs

    logs = run(main())
    assert q.entries() == []
    assert logs[-1]["event"] == "spool_worker_stopped" and logs[-1]["cut"] == 0


def test_stop_cuts_a_delivery_that_takes_too_long_and_keeps_the_message(q):
    entry_id = put(q, 1)

    async def stuck(entry, n):
        await asyncio.sleep(60)

    async def main():
        w = SpoolWorker(q, Deliverer(stuck), FAST)
        await w.start()
        await asyncio.sleep(0.05)
        with capture_logs() as logs:
            started = time.monotonic()
            await w.stop(timeout=0.2)
            assert time.monotonic() - started < 1
        return logs

    logs = run(main())
    assert [e.id for e in q.entries()] == [entry_id] and q.entries()[0].attempts == 0
    assert logs[-1]["cut"] == 1


def test_a_delivery_finished_during_a_rescan_is_not_picked_up_again(q, monkeypatch):
    entry_id = put(q, 1)
    go, listed, release = asyncio.Event(), threading.Event(), threading.Event()

    async def gated(entry, n):
        await go.wait()

    d = Deliverer(gated)

    async def main():
        w = SpoolWorker(q, d, SpoolConfig(**{**FAST.__dict__, "rescan_interval": 60}))
        await w.start()
        await eventually(lambda: len(d.calls) == 1)
        real_scan = q.scan

        def stale_scan():
            result = real_scan()  # lists the entry while it is being delivered
            listed.set()
            release.wait(5)
            return result

        monkeypatch.setattr(q, "scan", stale_scan)
        w.rescan()
        await asyncio.to_thread(listed.wait, 5)
        go.set()  # the delivery finishes while the scan is out
        await eventually(lambda: not (q.queue / entry_id).exists())
        release.set()
        await asyncio.sleep(0.2)
        depth = w.stats()[0]
        await w.stop()
        return depth

    assert run(main()) == 0
    assert d.ids() == [entry_id]


def test_describe():
    assert describe(UpstreamError("x", code=451, text="4.3.0 a\r\n b")) == "451 4.3.0 a b"
    assert describe(UpstreamError("cannot reach upstream: OSError")) == "cannot reach upstream: OSError"
    assert describe(KeyError("secret")) == "internal error: KeyError"
