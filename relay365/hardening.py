"""Process hardening at start: no core dumps, so no secret ever lands in a core file.

A core dump of relay365 would hold what its memory holds: refresh and access tokens, the apps'
client secrets, the store key and the passwords clients just sent. `disable_core_dumps()` sets
RLIMIT_CORE to 0 (soft and hard, so nothing later in the process raises it again) and marks the
process not dumpable (`prctl(PR_SET_DUMPABLE, 0)`, Linux): that also stops a core being written
through a `core_pattern` pipe (which ignores RLIMIT_CORE) and keeps other processes of the same
user from ptrace-attaching and reading its memory. `relay365 serve` and `relay365 auth` call it
first thing. Best effort on systems without prctl: the rlimit alone is what POSIX offers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import sys

PR_SET_DUMPABLE = 4  # <linux/prctl.h>
PR_GET_DUMPABLE = 3


def libc() -> ctypes.CDLL | None:
    """The C library on Linux (None elsewhere, or where it does not load); shared with `memory`."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def disable_core_dumps() -> bool:
    """RLIMIT_CORE 0 and not dumpable; True when both held (False: only what the OS allowed)."""
    ok = True
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        ok = False
    lib = libc()
    if lib is None or lib.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        ok = False
    return ok


def dumpable() -> bool | None:
    """This process's PR_GET_DUMPABLE (None where prctl is not available)."""
    lib = libc()
    return None if lib is None else bool(lib.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))
