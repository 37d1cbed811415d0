"""Targets for what relay365 reads from disk: the config file and the spool's envelope records."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from relay365.config import Config, load_config
from relay365.errors import ConfigError
from relay365.spool.queue import ENVELOPE, MESSAGE, Entry, SpoolQueue

_tmp: Path | None = None


def _dir() -> Path:
    global _tmp
    if _tmp is None:
        base = "/dev/shm" if Path("/dev/shm").is_dir() else None
        _tmp = Path(tempfile.mkdtemp(prefix="relay365-fuzz-", dir=base))
        atexit.register(shutil.rmtree, _tmp, True)
    return _tmp


def config(data: bytes) -> None:
    """`relay365.config.load_config` on any text. Oracle: a Config or a ConfigError (which lists
    problems as text), never another exception."""
    text = data.decode("utf-8", "replace")
    try:
        result = load_config(_dir() / "relay365.yaml", text=text)
    except ConfigError as exc:
        if not exc.problems or not all(isinstance(p, str) for p in exc.problems):
            raise AssertionError(f"ConfigError without problems: {exc!r}") from None
        str(exc)
        return
    if not isinstance(result, Config):
        raise AssertionError(f"load_config gave {result!r}")


_ID = "00000000001700000000-1"


def spool_record(data: bytes) -> None:
    """A damaged `envelope.json` in `queue/` (`SpoolQueue.scan`, what the worker reads). Oracle:
    the entry is reported as damaged, or read as an Entry whose every field has its type - the
    worker sorts, compares and formats them, and one bad entry must not stop the queue."""
    root = _dir() / "state"
    entry_dir = root / "spool" / "queue" / _ID
    if not entry_dir.is_dir():
        entry_dir.mkdir(parents=True)
        (entry_dir / MESSAGE).write_bytes(b"Subject: x\r\n\r\nx\r\n")
    (entry_dir / ENVELOPE).write_bytes(data)
    entries, damaged = SpoolQueue(root).scan()
    if damaged:
        if damaged != [_ID] or entries:
            raise AssertionError(f"scan: {entries!r} {damaged!r}")
        return
    if len(entries) != 1:
        raise AssertionError(f"scan gave {entries!r}")
    check_entry(entries[0])


def check_entry(e: Entry) -> None:
    def want(name: str, value: object, *types: type) -> None:
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise AssertionError(f"Entry.{name} is {value!r}")

    want("id", e.id, str)
    for name in ("mailbox", "mail_from"):
        want(name, getattr(e, name), str)
    want("rcpts", e.rcpts, tuple)
    if not e.rcpts:
        raise AssertionError("Entry without recipients")
    for r in e.rcpts:
        want("rcpts[]", r, str)
    for o in e.mail_options:
        want("mail_options[]", o, str)
    for name in ("received_at", "next_attempt"):
        want(name, getattr(e, name), int, float)
    want("size", e.size, int)
    want("attempts", e.attempts, int)
    want("last_error", e.last_error, str, type(None))
    want("lifetime_start", e.lifetime_start, int, float, type(None))
    want("failed_at", e.failed_at, int, float, type(None))
    want("notice", e.notice, bool)
    want("rcpt_errors", e.rcpt_errors, dict)
    for k, v in e.rcpt_errors.items():
        want("rcpt_errors key", k, str)
        want("rcpt_errors value", v, str)
    sorted([e, e], key=lambda x: (x.next_attempt, x.id))  # what the worker does with them
    e.to_json()
