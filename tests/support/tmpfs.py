"""A real tmpfs for a test, when this process may mount one (root); the test is skipped otherwise."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(path: Path, options: str, *, why: str = "") -> Iterator[Path]:
    """Mount a tmpfs with `options` (e.g. "size=64k,ro") on `path` (made if missing); lazily
    unmounted after. `why` is added to the skip reason."""
    path.mkdir(exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True,
                       capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("cannot mount a tmpfs here (needs root)" + (f"; {why}" if why else ""))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True, timeout=10)
