"""Crash-safe files: atomic writes, directory fsync, and advisory locks shared between processes.

Everything relay365 keeps on disk - the token store, the spool, `accounts.json` - is changed with
the same two recipes, so they live here once:
- `write_atomic`: write a temp file beside the target, fsync it, rename it over the target, fsync
  the directory. A crash leaves the old file or the new one, never half of one.
- `locked` / `try_lock`: an exclusive `flock` on a lock file (created 0600), held by every process
  that does a read-modify-write (the daemon, `relay365 auth`, `relay365 queue`, a second daemon).
  flock locks belong to the open file, so they are released when the process dies. The file is
  opened read-only: a lock held for long (the spool worker's) must not keep the file system from
  being remounted read-only, and it still locks there.

Synchronous on purpose (fsync blocks): callers on the event loop run these in a thread.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import signal
from collections.abc import Callable, Iterator
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600,
                 before_rename: Callable[[], None] | None = None) -> None:
    """Write, fsync, rename over `path`, fsync the directory. `before_rename`: a test's crash
    point, between the fsynced temp file and the rename."""
    # unique per writer: two threads of one process may write the same file (outside any lock)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def _open_lock(path: Path, access: int = os.O_RDONLY) -> int:
    """A descriptor to flock `path` with, created 0600 if missing; read-only by default.

    flock needs no write access, and a descriptor open for writing would keep the file system
    from being remounted read-only ("busy") for as long as it is held - the spool worker holds
    its lock for the daemon's life. O_CREAT on a file that exists needs no write access either,
    so in a read-only state_dir an existing lock still locks."""
    try:
        return os.open(path, access | os.O_CREAT, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES):
            raise
        return os.open(path, access)


def _flock(fd: int, path: Path, flags: int) -> int:
    """flock `fd`; the descriptor that holds the lock (another one, opened for writing, where the
    file system wants one: NFS emulates flock with POSIX locks, and an exclusive POSIX lock on
    a read-only descriptor is EBADF)."""
    try:
        fcntl.flock(fd, flags)
        return fd
    except OSError as exc:
        if exc.errno != errno.EBADF:
            os.close(fd)
            raise
    os.close(fd)
    fd = _open_lock(path, os.O_RDWR)
    try:
        fcntl.flock(fd, flags)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def locked(path: Path, error: Callable[[OSError], Exception] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on the lock file `path` (waiting for it) for the `with` block.

    When the lock file cannot be opened, `error(exc)` is raised instead of the OSError (a caller's
    own error that names the file); errors inside the block pass through untouched."""
    try:
        fd = _open_lock(path)
    except OSError as exc:
        if error is None:
            raise
        raise error(exc) from None
    fd = _flock(fd, path, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(fd)


def try_lock(path: Path) -> int | None:
    """Take the lock on `path` without waiting: the open descriptor that holds it (close it to
    release), or None when another process holds it."""
    fd = _open_lock(path)
    try:
        return _flock(fd, path, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return None


_crash_hits: dict[str, int] = {}


def crash_point(env: str, name: str) -> None:
    """Tests only: SIGKILL this process here if `$env` is `name` or `name:<nth time>`."""
    want = os.environ.get(env)
    if not want:
        return
    point, _, nth = want.partition(":")
    if point != name:
        return
    _crash_hits[name] = _crash_hits.get(name, 0) + 1
    if _crash_hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
