"""The on-disk queue under `state_dir/spool/`: tmp/, queue/, failed/, in maildir's manner.

Theory of operation. One message is one directory `<id>/` with `message.eml` (the bytes to send) and
`envelope.json` (mailbox, sender, recipients, times, attempts, last error). It is built in `tmp/`,
every file fsynced, then renamed into `queue/` in one step and `queue/` fsynced; only then does
`enqueue` return and the client hear 250. A crash before the rename leaves debris in `tmp/` (swept
at the next start) and no entry; after it, a whole entry. Every later change is atomic too:
- the envelope is rewritten with `write_atomic` (temp file, fsync, rename, fsync of the directory);
- dead letters and retries move the whole directory between `queue/` and `failed/` by rename;
- removal renames the directory into `tmp/` first, so a crash mid-`rmtree` leaves no half entry.

Ids are `<arrival time in ns, 20 digits>-<pid>`, strictly increasing within a process, so sorting
ids sorts by arrival. Recipients refused permanently while others were accepted are split off into
`failed/<id>.<n>/` (the message hard-linked, not copied).

Changes that read and rewrite an entry hold an exclusive `flock` on `spool/lock`, shared with the
operator tools (`relay365 queue`), which may run while the daemon does. One worker per spool: it
holds `spool/worker.lock` as long as it runs.

This module is synchronous (the worker runs it in threads) and takes time as `now`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..delivery.message import Message
from ..fsutil import fsync_dir, locked, try_lock, write_atomic
from .entry import (
    ENVELOPE,
    MESSAGE,
    STORAGE_ERRNOS,
    Entry,
    NotFound,
    SpoolError,
    SpoolFullError,
    Where,
    crash_point,
    new_id,
    valid_id,
)

# -- small file-system helpers -------------------------------------------------------------------

def _write_file(path: Path, data: bytes | Message) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for chunk in (data,) if isinstance(data, bytes) else data.chunks():
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def storage_error(exc: OSError, what: str, where: Path) -> SpoolError:
    """`what` failed in the spool at `where`: the operator's log line names the directory to fix."""
    name = errno.errorcode.get(exc.errno or 0, "EIO")
    cls = SpoolFullError if exc.errno in STORAGE_ERRNOS else SpoolError
    return cls(f"{what} in {where}: {name} ({exc.strerror})")


def _free_name(directory: Path, entry_id: str) -> str:
    """`entry_id`, or `entry_id.N` when that name is taken in `directory`."""
    name, n = entry_id, 0
    while (directory / name).exists():
        n += 1
        name = f"{entry_id}.{n}"
    return name


def _split_name(q: SpoolQueue, entry_id: str) -> str:
    """`<id>.N`, free in both `failed/` and `queue/` (a retried dead letter keeps its name)."""
    n = 1
    while (q.failed / f"{entry_id}.{n}").exists() or (q.queue / f"{entry_id}.{n}").exists():
        n += 1
    return f"{entry_id}.{n}"


class SpoolQueue:
    def __init__(self, state_dir: Path, *, min_free_space: int = 0) -> None:
        self.root = Path(state_dir) / "spool"
        self.tmp, self.queue, self.failed = self.root / "tmp", self.root / "queue", self.root / "failed"
        self.min_free_space = min_free_space
        self._scan_cache: dict[str, tuple[int, Entry]] = {}
        self._worker_lock: int | None = None

    def ensure_dirs(self) -> None:
        for d in (self.root, self.tmp, self.queue, self.failed):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The lock every read-modify-write holds, in this process and in the operator tools."""
        self.ensure_dirs()
        with locked(self.root / "lock"):
            yield

    def lock_worker(self) -> None:
        """Claim the spool for this process's worker; SpoolError if another one has it.

        The queue's own lock file is made now too: should the spool turn read-only later, the
        worker's changes then fail for that reason (EROFS), not for a lock file never made."""
        self.ensure_dirs()
        fd = try_lock(self.root / "worker.lock")
        if fd is None:
            raise SpoolError(f"another relay365 is delivering from {self.root}")
        self._worker_lock = fd
        with self.locked():
            pass

    def unlock_worker(self) -> None:
        fd, self._worker_lock = self._worker_lock, None
        if fd is not None:
            os.close(fd)

    def recover(self) -> int:
        """Sweep `tmp/`: what a crash left there was never accepted (or was being removed)."""
        self.ensure_dirs()
        swept = 0
        for p in self.tmp.iterdir():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            swept += 1
        return swept

    # -- accepting ---------------------------------------------------------------------------------

    def enqueue(self, mailbox: str, mail_from: str, rcpt_tos: list[str] | tuple[str, ...],
                data: bytes | Message, now: float, *, mail_options: tuple[str, ...] = (),
                notice: bool = False) -> str:
        """Store a message durably; returns its id only once it is safely in `queue/`.

        Raises SpoolFullError (no room, read-only, no permission) or SpoolError; either way
        nothing is left behind and nothing stored before is touched.
        """
        if not rcpt_tos:
            raise ValueError("a message needs at least one recipient")
        try:
            self.ensure_dirs()
        except OSError as exc:
            raise storage_error(exc, "cannot create the spool", self.root) from None
        size = len(data) if isinstance(data, bytes) else data.size
        self._check_free(size)
        entry_id = new_id(now)
        entry = Entry(entry_id, mailbox, mail_from, tuple(rcpt_tos), now, size,
                      next_attempt=now, mail_options=tuple(mail_options), notice=notice)
        tmp, final = self.tmp / entry_id, self.queue / entry_id
        committed = False
        try:
            os.mkdir(tmp, 0o700)
            _write_file(tmp / MESSAGE, data)
            _write_file(tmp / ENVELOPE, entry.to_json())
            fsync_dir(tmp)
            crash_point("enqueue_before_rename")
            os.rename(tmp, final)
            committed = True
            fsync_dir(self.queue)
        except OSError as exc:
            if committed:  # renamed but not known to be durable: take it back, the client retries
                with contextlib.suppress(OSError):
                    os.rename(final, tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            raise storage_error(exc, "cannot queue the message", self.root) from None
        return entry_id

    def _check_free(self, size: int) -> None:
        if not self.min_free_space:
            return
        try:
            st = os.statvfs(self.root)
        except OSError as exc:
            raise storage_error(exc, "cannot check free space", self.root) from None
        if st.f_bavail * st.f_frsize - size < self.min_free_space:
            raise SpoolFullError(f"less than min_free_space ({self.min_free_space} bytes) would be left")

    # -- reading -----------------------------------------------------------------------------------

    def read(self, path: Path) -> Entry:
        return Entry.from_json((path / ENVELOPE).read_bytes(), path)

    def entries(self, where: Where = "queue") -> list[Entry]:
        """Every readable entry in `queue/` or `failed/`, oldest first."""
        directory = self.queue if where == "queue" else self.failed
        out = []
        for name in sorted(os.listdir(directory)) if directory.is_dir() else []:
            if valid_id(name):
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    out.append(self.read(directory / name))
        return out

    def scan(self) -> tuple[list[Entry], list[str]]:
        """`queue/` for the worker: entries, and names that could not be read.

        Entries whose directory did not change since the last scan are not read again; an
        envelope rewrite (ours or an operator's) renames a file inside and so changes the mtime.
        """
        self.ensure_dirs()
        entries, damaged, cache = [], [], {}
        for name in sorted(os.listdir(self.queue)):
            if not valid_id(name):
                continue
            path = self.queue / name
            try:
                mtime = path.stat().st_mtime_ns
                hit = self._scan_cache.get(name)
                entry = hit[1] if hit and hit[0] == mtime else self.read(path)
            except FileNotFoundError:
                continue  # removed since listdir
            except (OSError, ValueError, KeyError, TypeError):
                damaged.append(name)
                continue
            cache[name] = (mtime, entry)
            entries.append(entry)
        self._scan_cache = cache
        return entries, damaged

    def find(self, prefix: str) -> tuple[Where, Entry]:
        """The entry whose id is `prefix` or starts with it (if only one does). NotFound else."""
        hits: list[tuple[Where, Path]] = []
        places: tuple[tuple[Where, Path], ...] = (("queue", self.queue), ("failed", self.failed))
        for where, directory in places:
            if directory.is_dir():
                hits += [(where, directory / n) for n in os.listdir(directory)
                         if valid_id(n) and (n == prefix or n.startswith(prefix))]
        exact = [h for h in hits if h[1].name == prefix]
        if len(exact) == 1 or len(hits) == 1:
            where, path = (exact or hits)[0]
            try:
                return where, self.read(path)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise NotFound(f"{path.name}: envelope unreadable ({exc})") from None
        raise NotFound(f"{prefix}: {'ambiguous' if hits else 'no such message'}")

    # -- changing ----------------------------------------------------------------------------------

    def _rewrite(self, path: Path, **changes: Any) -> Entry:
        entry = replace(self.read(path), **changes)
        write_atomic(path / ENVELOPE, entry.to_json())
        return entry

    def defer(self, entry_id: str, *, now: float, next_attempt: float, error: str | None,
              rcpts: tuple[str, ...] | None = None, count: bool = True) -> Entry | None:
        """Record a failed attempt. None if the entry is gone (an operator deleted it)."""
        with self.locked():
            path = self.queue / entry_id
            try:
                current = self.read(path)
                return self._rewrite(path, attempts=current.attempts + (1 if count else 0),
                                     next_attempt=next_attempt, last_error=error,
                                     rcpts=current.rcpts if rcpts is None else tuple(rcpts))
            except FileNotFoundError:
                return None

    def complete(self, entry_id: str) -> bool:
        """The message is delivered: remove its entry. False if it was already gone."""
        return self._remove(self.queue / entry_id)

    def fail(self, entry_id: str, reason: str, now: float,
             rcpt_errors: dict[str, str] | None = None) -> str | None:
        """Dead-letter: move the entry to `failed/` with `reason`. Returns the id it has there."""
        with self.locked():
            path = self.queue / entry_id
            try:
                current = self.read(path)
                self._rewrite(path, last_error=reason, failed_at=now,
                              rcpt_errors={**current.rcpt_errors, **(rcpt_errors or {})})
                name = _free_name(self.failed, entry_id)
                os.rename(path, self.failed / name)
            except FileNotFoundError:
                return None
            fsync_dir(self.failed)
            fsync_dir(self.queue)
            return name

    def fail_recipients(self, entry_id: str, rcpt_errors: dict[str, str], now: float) -> str | None:
        """Split refused recipients off into a dead letter of their own (the message hard-linked)."""
        with self.locked():
            src = self.queue / entry_id
            try:
                current = self.read(src)
            except FileNotFoundError:
                return None
            name = _split_name(self, entry_id)
            tmp = self.tmp / name
            reason = "; ".join(f"{r}: {e}" for r, e in rcpt_errors.items())
            entry = replace(current, id=name, rcpts=tuple(rcpt_errors), rcpt_errors=dict(rcpt_errors),
                            last_error=reason, failed_at=now, path=self.failed / name)
            try:
                os.mkdir(tmp, 0o700)
                try:
                    os.link(src / MESSAGE, tmp / MESSAGE)
                except OSError:
                    shutil.copyfile(src / MESSAGE, tmp / MESSAGE)
                _write_file(tmp / ENVELOPE, entry.to_json())
                fsync_dir(tmp)
                os.rename(tmp, self.failed / name)
                fsync_dir(self.failed)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            return name

    def retry(self, entry_id: str, now: float) -> Entry:
        """Due now. A dead letter goes back into `queue/` with a fresh lifetime and attempt count."""
        with self.locked():
            if (self.queue / entry_id).is_dir():
                return self._rewrite(self.queue / entry_id, next_attempt=now)
            src = self.failed / entry_id
            if not src.is_dir():
                raise NotFound(f"{entry_id}: no such message")
            self._rewrite(src, next_attempt=now, attempts=0, lifetime_start=now, failed_at=None)
            name = _free_name(self.queue, entry_id)
            os.rename(src, self.queue / name)
            fsync_dir(self.queue)
            fsync_dir(self.failed)
            return self.read(self.queue / name)

    def delete(self, entry_id: str) -> Where:
        """Remove a message from `queue/` or `failed/`; says which. NotFound if in neither."""
        for where, directory in (("queue", self.queue), ("failed", self.failed)):
            if self._remove(directory / entry_id):
                return where  # type: ignore[return-value]
        raise NotFound(f"{entry_id}: no such message")

    def _remove(self, path: Path) -> bool:
        """Rename into tmp/ (atomic), then delete at leisure."""
        self.ensure_dirs()
        grave = self.tmp / f"{path.name}.removed.{os.getpid()}.{threading.get_ident()}"
        with self.locked():
            try:
                os.rename(path, grave)
            except FileNotFoundError:
                return False
            fsync_dir(path.parent)
        shutil.rmtree(grave, ignore_errors=True)
        return True
