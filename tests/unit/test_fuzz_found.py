"""Regression tests for what fuzzing found (fuzz/, RELIABILITY.md). One test per bug, named for
the symptom; each failed before its fix."""

from __future__ import annotations

import asyncio
import json

import pytest
from structlog.testing import capture_logs

from relay365.config import SpoolConfig
from relay365.smtp.data import DataError, DataReader
from relay365.spool.entry import ENVELOPE, Entry
from relay365.spool.queue import SpoolQueue
from relay365.spool.worker import SpoolWorker

# -- DATA: the error a client hears must not depend on how TCP cut the stream ------------------

LONG_AND_BIG = b"x" * 150 + b"\r\n" + b"y" * 300 + b"\r\n.\r\n"  # max_line 200, max_size 400


@pytest.mark.parametrize("split", [None, 1, 7, 64, 201, 250])
def test_too_big_wins_over_a_long_line_in_any_chunking(split):
    """A long line that also takes DATA over SIZE is 552 (too big) whether the line arrived
    whole or in pieces; it was 500 (line too long) when the first piece came alone."""
    r = DataReader(400, 200)
    pieces = [LONG_AND_BIG] if split is None else [LONG_AND_BIG[i:i + split]
                                                   for i in range(0, len(LONG_AND_BIG), split)]
    for p in pieces:
        r.feed(p)
    assert r.done and r.error is DataError.TOO_BIG and r.size == 454


def test_a_long_line_within_size_stays_line_too_long():
    r = DataReader(10_000, 200)
    for i in range(0, 400, 3):
        r.feed((b"z" * 300 + b"\r\n.\r\n")[i:i + 3])
    assert r.done and r.error is DataError.LINE_TOO_LONG


# -- the spool's record reader: a damaged envelope is set aside, never a worker crash ---------

GOOD = json.loads(Entry("x", "a@b.test", "dev@lan", ("bob@x.test",), 1.0, 10).to_json())
DAMAGED = {
    "null": b"null",
    "a list": b"[]",
    "nested too deep": b"[" * 5000,
    "mailbox a number": json.dumps({**GOOD, "mailbox": 5}).encode(),
    "rcpts a string": json.dumps({**GOOD, "rcpts": "bob@x.test"}).encode(),
    "no recipients": json.dumps({**GOOD, "rcpts": []}).encode(),
    "next_attempt a string": json.dumps({**GOOD, "next_attempt": "soon"}).encode(),
    "attempts a float": json.dumps({**GOOD, "attempts": 1.5}).encode(),
    "rcpt_errors a list": json.dumps({**GOOD, "rcpt_errors": []}).encode(),
    "notice a string": json.dumps({**GOOD, "notice": "yes"}).encode(),
}


def _store(q: SpoolQueue, raw: bytes) -> str:
    entry_id = q.enqueue("a@b.test", "dev@lan", ["bob@x.test"], b"Subject: x\r\n\r\nx\r\n", 1.0)
    (q.queue / entry_id / ENVELOPE).write_bytes(raw)
    return entry_id


@pytest.mark.parametrize("name", list(DAMAGED))
def test_a_damaged_envelope_is_reported_not_raised(tmp_path, name):
    """`null`, a list or deep nesting raised AttributeError/RecursionError out of scan() (the
    worker did not start); a wrong type passed scan and raised TypeError in every dispatch."""
    q = SpoolQueue(tmp_path)
    bad = _store(q, DAMAGED[name])
    good = q.enqueue("a@b.test", "dev@lan", ["bob@x.test"], b"Subject: y\r\n\r\ny\r\n", 2.0)
    entries, damaged = q.scan()
    assert damaged == [bad] and [e.id for e in entries] == [good]
    assert [e.id for e in q.entries()] == [good]


def test_one_damaged_envelope_does_not_stop_the_queue(tmp_path):
    """The worker starts with a damaged entry in queue/, logs it, and delivers the others."""
    q = SpoolQueue(tmp_path)
    bad = _store(q, DAMAGED["next_attempt a string"])
    _store(q, DAMAGED["null"])
    good = q.enqueue("a@b.test", "dev@lan", ["bob@x.test"], b"Subject: y\r\n\r\ny\r\n", 2.0)
    delivered: list[str] = []

    async def deliver(entry):
        delivered.append(entry.id)

    async def main():
        w = SpoolWorker(q, deliver, SpoolConfig(retry_base=0.05, rescan_interval=0.1, min_free_space=0))
        with capture_logs() as logs:
            await w.start()
            for _ in range(100):
                if delivered:
                    break
                await asyncio.sleep(0.02)
            await w.stop(1)
        return logs

    logs = asyncio.run(main())
    assert delivered == [good]
    assert any(e["event"] == "spool_entry_damaged" and e["id"] == bad for e in logs)
    assert not [e for e in logs if e.get("log_level") == "error"]


# -- config: a path the system refuses to look at is "no such file", not an OSError -------------

@pytest.mark.parametrize("name", ["n" * 300, "ca\0.pem"], ids=["too-long", "nul"])
def test_an_unusable_ca_file_path_is_a_config_error_naming_the_key(tmp_path, name):
    """Found by the config target (fuzz/findings/config-name-too-long): a 300-character file
    name raised OSError (ENAMETOOLONG) out of the config check instead of a ConfigError."""
    from relay365.config import load_config
    from relay365.errors import ConfigError

    text = (f"state_dir: {tmp_path}\nupstream:\n  ca_file: {json.dumps(name)}\n"
            "apps: {default: {tenant: t.test, client_id: c, client_secret: s}}\n"
            "accounts: [{mailbox: a@t.test, refresh_token: x}]\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "relay.yaml", text)
    assert "upstream.ca_file: no such file" in str(err.value)
