"""Lock files: held through read-only descriptors, and where flock wants more, through one that
can write (NFS)."""

from __future__ import annotations

import errno
import fcntl
import os

import pytest

from relay365 import fsutil


def _access(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE


def test_a_held_lock_is_a_read_only_descriptor_and_excludes_the_next(tmp_path):
    lock = tmp_path / "worker.lock"
    fd = fsutil.try_lock(lock)
    assert fd is not None and _access(fd) == os.O_RDONLY
    assert (lock.stat().st_mode & 0o777) == 0o600
    assert fsutil.try_lock(lock) is None
    os.close(fd)
    again = fsutil.try_lock(lock)
    assert again is not None
    os.close(again)


@pytest.fixture
def nfs_like_flock(monkeypatch):
    """NFS emulates flock with POSIX locks: an exclusive one on a read-only descriptor is EBADF."""
    real = fcntl.flock

    def flock(fd: int, op: int) -> None:
        if _access(fd) == os.O_RDONLY and op & fcntl.LOCK_EX:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        real(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)


def test_where_flock_needs_a_writable_descriptor_the_lock_opens_one(tmp_path, nfs_like_flock):
    lock = tmp_path / "worker.lock"
    fd = fsutil.try_lock(lock)
    assert fd is not None and _access(fd) == os.O_RDWR
    assert fsutil.try_lock(lock) is None
    os.close(fd)
    with fsutil.locked(lock):
        assert fsutil.try_lock(lock) is None
    fd = fsutil.try_lock(lock)
    assert fd is not None
    os.close(fd)


def test_open_fds_are_not_leaked_when_the_lock_is_taken(tmp_path):
    lock = tmp_path / "worker.lock"
    held = fsutil.try_lock(lock)
    assert held is not None
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        assert fsutil.try_lock(lock) is None
    assert len(os.listdir("/proc/self/fd")) == before
    os.close(held)
