"""Core dumps are off in the daemon: a core file would hold tokens, client secrets and passwords."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = """
import resource
from relay365.hardening import disable_core_dumps, dumpable
before = dumpable()
ok = disable_core_dumps()
print(before, ok, dumpable(), resource.getrlimit(resource.RLIMIT_CORE))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux")
def test_disable_core_dumps_sets_rlimit_core_zero_and_not_dumpable():
    # in a child: the test process itself keeps its limits
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         check=True, timeout=30).stdout.strip().split(maxsplit=3)
    assert out == ["True", "True", "False", "(0, 0)"]


def test_serve_disables_core_dumps_before_reading_the_config(tmp_path):
    """`relay365 serve` with a config that does not load still ran the hardening first."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("accounts: 5\n")
    probe = ("import resource, sys\n"
             "from relay365 import cli\n"
             "try:\n"
             "    cli.main(['serve', '-c', sys.argv[1]])\n"
             "except SystemExit:\n"
             "    pass\n"
             "print(resource.getrlimit(resource.RLIMIT_CORE))\n")
    out = subprocess.run([sys.executable, "-c", probe, str(bad)], capture_output=True, text=True,
                         timeout=30)
    assert out.stdout.strip() == "(0, 0)", out.stderr
