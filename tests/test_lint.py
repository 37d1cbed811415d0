"""mypy --strict and ruff are part of the suite: a type error or a lint finding fails the tests.

Both read their settings from pyproject.toml ([tool.mypy]: strict over the package; [tool.ruff]).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, check=False)


def test_mypy_strict_is_clean() -> None:
    result = _run("mypy", "--no-error-summary")
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert result.returncode == 0 and not errors, "\n".join(errors or [result.stdout, result.stderr])


def test_ruff_is_clean() -> None:
    result = _run("ruff", "check", "--no-fix", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr
