"""The on-disk queue: what is on disk after each operation, and what a failure leaves behind."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from relay365.spool import queue as queue_mod
from relay365.spool.entry import ENVELOPE, MESSAGE, NotFound, SpoolError, SpoolFullError, valid_id
from relay365.spool.queue import SpoolQueue
from tests.support.tmpfs import tmpfs

NOW = 1_700_000_000.0
MSG = b"From: scanner@example.test\r\nSubject: scan\r\n\r\nbody\r\n"


@pytest.fixture
def q(tmp_path) -> SpoolQueue:
    return SpoolQueue(tmp_path / "state")


def put(q: SpoolQueue, n: int = 0, now: float = NOW, rcpts=("bob@example.test",),
        mailbox: str = "scanner@example.test") -> str:
    return q.enqueue(mailbox, mailbox, list(rcpts), MSG + b"#%d\r\n" % n, now)


def listing(d: Path) -> list[str]:
    return sorted(os.listdir(d)) if d.is_dir() else []


# -- enqueue -----------------------------------------------------------------------------------

def test_enqueue_writes_a_whole_entry_into_queue(q):
    entry_id = q.enqueue("Scanner@example.test", "printer@lan", ["a@x.test", "b@x.test"], MSG, NOW,
                         mail_options=("BODY=8BITMIME",))
    assert valid_id(entry_id)
    assert listing(q.queue) == [entry_id] and listing(q.tmp) == [] and listing(q.failed) == []
    assert listing(q.queue / entry_id) == [ENVELOPE, MESSAGE]
    assert (q.queue / entry_id / MESSAGE).read_bytes() == MSG
    env = json.loads((q.queue / entry_id / ENVELOPE).read_bytes())
    assert env == {"version": 1, "id": entry_id, "mailbox": "Scanner@example.test",
                   "mail_from": "printer@lan", "rcpts": ["a@x.test", "b@x.test"], "received_at": NOW,
                   "size": len(MSG), "attempts": 0, "next_attempt": NOW, "last_error": None,
                   "mail_options": ["BODY=8BITMIME"], "lifetime_start": None, "notice": False,
                   "failed_at": None, "rcpt_errors": {}}
    assert oct((q.queue / entry_id / MESSAGE).stat().st_mode & 0o777) == "0o600"


def test_ids_sort_by_arrival_even_within_one_clock_tick(q):
    ids = [put(q, i, now=NOW) for i in range(50)] + [put(q, 99, now=NOW - 10)]  # clock went back
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert [e.id for e in q.entries()] == ids
    assert all(i.endswith(f"-{os.getpid()}") for i in ids)


def test_a_message_needs_a_recipient(q):
    with pytest.raises(ValueError):
        q.enqueue("a@x.test", "a@x.test", [], MSG, NOW)


# -- storage failures during enqueue -----------------------------------------------------------

def _failing_write(monkeypatch, err: int, after: int = 10):
    real = os.write

    def write(fd, data):
        if len(data) > after:
            real(fd, bytes(data[:after]))
            raise OSError(err, os.strerror(err))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES])
def test_storage_errors_raise_spool_full_and_leave_nothing_behind(q, monkeypatch, err):
    earlier = [put(q, i) for i in range(3)]
    with monkeypatch.context() as m:
        _failing_write(m, err)
        with pytest.raises(SpoolFullError, match=errno.errorcode[err]):
            put(q, 3)
    assert listing(q.tmp) == []
    assert [e.id for e in q.entries()] == earlier
    assert [(q.queue / i / MESSAGE).read_bytes() for i in earlier] == [MSG + b"#%d\r\n" % i
                                                                       for i in range(3)]


def test_other_io_errors_are_a_plain_spool_error(q, monkeypatch):
    with monkeypatch.context() as m:
        _failing_write(m, errno.EIO)
        with pytest.raises(SpoolError) as info:
            put(q)
    assert not isinstance(info.value, SpoolFullError)
    assert listing(q.tmp) == [] and listing(q.queue) == []


def test_no_permission_for_the_directory(q, monkeypatch):
    q.ensure_dirs()

    def mkdir(path, mode=0o777):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(os, "mkdir", mkdir)
    with pytest.raises(SpoolFullError, match="EACCES"):
        put(q)


def test_if_the_queue_directory_cannot_be_synced_the_entry_is_taken_back(q, monkeypatch):
    earlier = put(q)
    real = queue_mod.fsync_dir

    def fsync_dir(path):
        if path == q.queue:
            raise OSError(errno.EIO, "I/O error")
        real(path)

    monkeypatch.setattr(queue_mod, "fsync_dir", fsync_dir)
    with pytest.raises(SpoolError):
        put(q, 1)
    assert listing(q.queue) == [earlier] and listing(q.tmp) == []


def test_min_free_space_refuses_before_writing(q):
    q.min_free_space = 2**62
    with pytest.raises(SpoolFullError, match="min_free_space"):
        put(q)
    assert listing(q.tmp) == [] and listing(q.queue) == []


@pytest.fixture
def tiny_fs(tmp_path):
    """A real 64 KiB file system (tmpfs), when we may mount one."""
    with tmpfs(tmp_path / "tiny", "size=64k", why="the injected failures cover this") as mnt:
        yield mnt


def test_a_really_full_disk(tiny_fs):
    q = SpoolQueue(tiny_fs)
    bodies, accepted = [], []
    with pytest.raises(SpoolFullError, match="ENOSPC"):
        for i in range(100):
            body = MSG + os.urandom(3000).hex().encode()
            accepted.append(q.enqueue("a@x.test", "a@x.test", ["b@x.test"], body, NOW + i))
            bodies.append(body)
    assert 2 <= len(accepted) < 100
    assert listing(q.tmp) == []
    assert [(q.queue / i / MESSAGE).read_bytes() for i in accepted] == bodies
    assert [e.id for e in q.entries()] == accepted
    q.complete(accepted[0])  # room again: the next one is taken
    q.enqueue("a@x.test", "a@x.test", ["b@x.test"], MSG, NOW + 200)


def test_a_read_only_file_system(tiny_fs):
    q = SpoolQueue(tiny_fs)
    first = put(q)
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True, capture_output=True)
    with pytest.raises(SpoolFullError) as refused:
        put(q, 1)
    assert str(refused.value) == (f"cannot queue the message in {tiny_fs / 'spool'}: "
                                  "EROFS (Read-only file system)")  # the directory to fix
    assert [e.id for e in q.entries()] == [first]


def test_the_worker_lock_lets_the_spool_turn_read_only_and_still_locks(tiny_fs):
    """The worker holds spool/worker.lock for the daemon's life. Held through a descriptor open
    for writing, it kept the kernel from remounting the spool read-only ("busy") - the way an
    operator or a failing disk makes it read-only."""
    q = SpoolQueue(tiny_fs)
    q.lock_worker()
    first = put(q)
    ro = subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], capture_output=True, text=True)
    assert ro.returncode == 0, ro.stderr
    with pytest.raises(SpoolError, match="another relay365"):
        SpoolQueue(tiny_fs).lock_worker()  # still one worker per spool
    with q.locked():  # and the queue's own lock still locks
        assert [e.id for e in q.entries()] == [first]
    subprocess.run(["mount", "-o", "remount,rw", str(tiny_fs)], check=True, capture_output=True)
    assert q.complete(first)
    q.unlock_worker()


# -- after a delivery attempt ------------------------------------------------------------------

def test_defer_rewrites_the_envelope_atomically(q):
    entry_id = put(q, rcpts=("a@x.test", "b@x.test"))
    e = q.defer(entry_id, now=NOW + 1, next_attempt=NOW + 31, error="451 4.3.0 later")
    assert (e.attempts, e.next_attempt, e.last_error) == (1, NOW + 31, "451 4.3.0 later")
    e = q.defer(entry_id, now=NOW + 2, next_attempt=NOW + 90, error="451 again", rcpts=("b@x.test",))
    assert q.read(q.queue / entry_id) == e
    assert (e.attempts, e.rcpts) == (2, ("b@x.test",))
    assert listing(q.queue / entry_id) == [ENVELOPE, MESSAGE]  # no temp file left over
    assert q.defer("00000000000000000001-1", now=NOW, next_attempt=NOW, error="x") is None


def test_complete_removes_the_entry(q):
    a, b = put(q, 0), put(q, 1)
    assert q.complete(a) is True
    assert q.complete(a) is False
    assert listing(q.queue) == [b] and listing(q.tmp) == []


def test_fail_moves_the_entry_to_failed_with_its_reason(q):
    entry_id = put(q)
    assert q.fail(entry_id, "550 5.7.60 SendAs denied", NOW + 5) == entry_id
    assert listing(q.queue) == [] and listing(q.failed) == [entry_id]
    (e,) = q.entries("failed")
    assert (e.last_error, e.failed_at) == ("550 5.7.60 SendAs denied", NOW + 5)
    assert q.fail(entry_id, "again", NOW) is None  # not in queue/ any more


def test_refused_recipients_are_split_off_with_the_message_linked(q):
    entry_id = put(q, rcpts=("ok@x.test", "gone@x.test", "nope@x.test"))
    split = q.fail_recipients(entry_id, {"gone@x.test": "550 5.1.1 unknown"}, NOW + 1)
    split2 = q.fail_recipients(entry_id, {"nope@x.test": "550 5.1.1 unknown"}, NOW + 2)
    assert (split, split2) == (f"{entry_id}.1", f"{entry_id}.2")
    f1 = q.read(q.failed / split)
    assert f1.rcpts == ("gone@x.test",) and f1.rcpt_errors == {"gone@x.test": "550 5.1.1 unknown"}
    assert f1.last_error == "gone@x.test: 550 5.1.1 unknown" and f1.failed_at == NOW + 1
    assert f1.message_path.stat().st_ino == (q.queue / entry_id / MESSAGE).stat().st_ino
    assert q.read(q.queue / entry_id).rcpts == ("ok@x.test", "gone@x.test", "nope@x.test")
    q.complete(entry_id)
    assert f1.message_path.read_bytes() == MSG + b"#0\r\n"  # the link outlives the original
    assert valid_id(split) and listing(q.tmp) == []


# -- operator actions --------------------------------------------------------------------------

def test_retry_in_the_queue_makes_it_due_now(q):
    entry_id = put(q)
    q.defer(entry_id, now=NOW, next_attempt=NOW + 3600, error="451 x")
    e = q.retry(entry_id, NOW + 10)
    assert (e.next_attempt, e.attempts) == (NOW + 10, 1)


def test_retry_of_a_dead_letter_brings_it_back_with_a_fresh_lifetime(q):
    entry_id = put(q)
    q.defer(entry_id, now=NOW, next_attempt=NOW + 60, error="451 x")
    q.fail(entry_id, "gave up", NOW + 100)
    e = q.retry(entry_id, NOW + 200)
    assert listing(q.failed) == [] and listing(q.queue) == [entry_id]
    assert (e.attempts, e.next_attempt, e.lifetime_start, e.failed_at) == (0, NOW + 200, NOW + 200,
                                                                           None)
    assert e.started == NOW + 200 and e.received_at == NOW
    with pytest.raises(NotFound):
        q.retry("00000000000000000001-1", NOW)


def test_delete_from_either_place(q):
    a, b = put(q, 0), put(q, 1)
    q.fail(b, "x", NOW)
    assert q.delete(a) == "queue" and q.delete(b) == "failed"
    assert listing(q.queue) == listing(q.failed) == listing(q.tmp) == []
    with pytest.raises(NotFound):
        q.delete(a)


def test_find_by_unique_prefix(q):
    a, b = put(q, 0), put(q, 1)
    common = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    assert q.find(a) == ("queue", q.read(q.queue / a))
    assert q.find(b[:common + 1])[1].id == b
    with pytest.raises(NotFound, match="ambiguous"):
        q.find(a[:common])
    with pytest.raises(NotFound, match="no such message"):
        q.find("9")


# -- what the worker sees ----------------------------------------------------------------------

def test_scan_sees_changes_made_by_another_process(q, tmp_path):
    entry_id = put(q)
    q.defer(entry_id, now=NOW, next_attempt=NOW + 3600, error="451 x")
    (before,), _ = q.scan()
    other = SpoolQueue(tmp_path / "state")  # the operator tool
    other.retry(entry_id, NOW + 5)
    (after,), _ = q.scan()
    assert (before.next_attempt, after.next_attempt) == (NOW + 3600, NOW + 5)


def test_scan_reports_damaged_entries_and_skips_strays(q):
    good, bad = put(q, 0), put(q, 1)
    (q.queue / bad / ENVELOPE).write_text("{not json")
    (q.queue / "README").write_text("not an entry")
    entries, damaged = q.scan()
    assert [e.id for e in entries] == [good] and damaged == [bad]


def test_recover_sweeps_what_a_crash_left_in_tmp(q):
    q.ensure_dirs()
    (q.tmp / "00000000000000000001-1").mkdir()
    (q.tmp / "00000000000000000001-1" / MESSAGE).write_bytes(b"half")
    (q.tmp / "stray").write_bytes(b"")
    assert q.recover() == 2 and listing(q.tmp) == []


def test_one_worker_per_spool(q, tmp_path):
    q.lock_worker()
    other = SpoolQueue(tmp_path / "state")
    with pytest.raises(SpoolError, match="another relay365"):
        other.lock_worker()
    q.unlock_worker()
    other.lock_worker()
    other.unlock_worker()


def test_unknown_envelope_keys_from_a_newer_version_are_ignored(q):
    entry_id = put(q)
    path = q.queue / entry_id / ENVELOPE
    env = json.loads(path.read_bytes())
    env["from_the_future"] = str(uuid.uuid4())
    path.write_text(json.dumps(env))
    assert q.read(q.queue / entry_id).id == entry_id
