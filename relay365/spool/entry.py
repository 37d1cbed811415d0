"""One spooled message's record: its envelope (`Entry`, stored as `envelope.json`), its id, errors.

`Entry.from_json` is the reader of the on-disk format; the spool worker and `relay365 queue` treat
any exception it raises as a damaged entry (set aside, never a crash). `crash_point` is the test
hook that kills the process at a named step of a queue change.
"""

from __future__ import annotations

import errno
import json
import os
import re
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

from .. import fsutil
from ..errors import RelayError

MESSAGE = "message.eml"
ENVELOPE = "envelope.json"
ENVELOPE_VERSION = 1
CRASH_ENV = "RELAY365_SPOOL_CRASH_AT"  # tests only: "<point>[:<nth time>]" -> SIGKILL there

STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
_ID = re.compile(r"\d{20}-\d+(\.\d+)*")
Where = Literal["queue", "failed"]


class SpoolError(RelayError):
    """The spool cannot take or change a message (the SMTP side answers `replies.SPOOL_ERROR`)."""


class SpoolFullError(SpoolError):
    """No room or no permission to write (ENOSPC, EDQUOT, EROFS, EACCES, ...): the SMTP side
    answers `replies.SPOOL_FULL`."""


class NotFound(SpoolError):
    pass


@dataclass(frozen=True)
class Entry:
    """One message's envelope as stored in `envelope.json`, plus where it lies (`path`)."""

    id: str
    mailbox: str
    mail_from: str
    rcpts: tuple[str, ...]
    received_at: float
    size: int
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str | None = None
    mail_options: tuple[str, ...] = ()
    lifetime_start: float | None = None  # set when an operator retries a dead letter
    notice: bool = False  # an admin notice about another message: never noticed about itself
    failed_at: float | None = None
    rcpt_errors: dict[str, str] = field(default_factory=dict)  # recipient -> upstream reply
    path: Path = field(default=Path(), compare=False, repr=False)

    @property
    def message_path(self) -> Path:
        return self.path / MESSAGE

    @property
    def started(self) -> float:
        """Where the lifetime counts from."""
        return self.received_at if self.lifetime_start is None else self.lifetime_start

    def to_json(self) -> bytes:
        data = asdict(self)
        del data["path"]
        data["rcpts"], data["mail_options"] = list(self.rcpts), list(self.mail_options)
        return json.dumps({"version": ENVELOPE_VERSION, **data}, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes, path: Path) -> Entry:
        """Read a stored envelope; ValueError when it is not one (damaged, hand-edited wrong)."""
        try:
            data = json.loads(raw)
        except RecursionError:  # "[[[[..." nests deeper than the parser goes
            raise ValueError("envelope nests too deep") from None
        if not isinstance(data, dict):
            raise ValueError("envelope is not a JSON object")
        known = {f.name for f in fields(cls)} - {"path"}
        data = {k: v for k, v in data.items() if k in known}
        data["id"] = path.name  # the directory's name is the id (a move may have renamed it)
        if not isinstance(data.get("rcpts"), list) or not isinstance(data.get("mail_options", []), list):
            raise ValueError("envelope rcpts and mail_options must be lists")
        data["rcpts"] = tuple(data["rcpts"])
        data["mail_options"] = tuple(data.get("mail_options", ()))
        entry = cls(**data, path=path)
        _check_types(entry)
        return entry


_NUMBER = (int, float)
_TYPES: dict[str, tuple[type, ...]] = {
    "mailbox": (str,), "mail_from": (str,), "received_at": _NUMBER, "size": (int,),
    "attempts": (int,), "next_attempt": _NUMBER, "last_error": (str, type(None)),
    "lifetime_start": (*_NUMBER, type(None)), "notice": (bool,), "failed_at": (*_NUMBER, type(None)),
    "rcpt_errors": (dict,),
}


def _check_types(e: Entry) -> None:
    """The worker sorts, compares and formats these: one wrong type in one hand-edited or damaged
    envelope would otherwise stop the whole queue, every loop, not just that message."""
    for name, types in _TYPES.items():
        value = getattr(e, name)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ValueError(f"envelope {name} has the wrong type ({type(value).__name__})")
    if not e.rcpts or not all(isinstance(r, str) for r in (*e.rcpts, *e.mail_options)):
        raise ValueError("envelope rcpts must be a non-empty list of addresses")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in e.rcpt_errors.items()):
        raise ValueError("envelope rcpt_errors must map addresses to replies")


# -- test hook, and ids --------------------------------------------------------------------------

def crash_point(name: str) -> None:
    """Kill this process here with SIGKILL if `$RELAY365_SPOOL_CRASH_AT` names this point."""
    fsutil.crash_point(CRASH_ENV, name)


_id_lock = threading.Lock()
_last_ns = 0


def new_id(now: float) -> str:
    """An id that sorts by arrival: the time in ns, made strictly increasing, and the pid."""
    global _last_ns
    with _id_lock:
        _last_ns = max(int(now * 1e9), _last_ns + 1)
        return f"{_last_ns:020d}-{os.getpid()}"


def valid_id(text: str) -> bool:
    return bool(_ID.fullmatch(text))
