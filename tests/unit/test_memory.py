"""malloc_trim hands the free pages in the middle of glibc's heap back; the interval is read safely."""

from __future__ import annotations

import subprocess
import sys

import pytest

from relay365.memory import DEFAULT_EVERY, MIN_FREE, Trimmer, heap_free, interval

# In a child, so this process's heap is not the one measured: 40 MiB of 2 KiB blocks (malloc,
# not Python's small-object allocator), every tenth kept so the heap cannot shrink from the top;
# the other 36 MiB are free in the middle of the heap, which only malloc_trim gives back.
CHILD = """
import gc
from relay365.memory import Trimmer, rss_bytes
blocks = [bytes(2048) for _ in range(20_000)]
kept = blocks[::10]
del blocks
gc.collect()
before = rss_bytes()
trimmer = Trimmer(60)
worth = trimmer.worth_it()
released = trimmer.trim()
print(before - rss_bytes(), released, len(kept), worth)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trim_gives_back_the_free_middle_of_the_heap():
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          check=True, timeout=60)
    out = proc.stdout.splitlines()[-1].split()
    dropped, released, worth = int(out[0]), int(out[1]), out[3]
    assert worth == "True"  # mallinfo2 saw the 36 MiB free
    assert dropped > 20 * 2**20, out  # most of the 36 MiB freed in the middle came back
    assert released > 20 * 2**20, out


@pytest.mark.parametrize(("raw", "expected"), [
    ("", DEFAULT_EVERY), ("30", 30.0), ("0", 0.0), ("0.5", 0.5), ("soon", DEFAULT_EVERY)])
def test_interval_from_the_environment(raw, expected):
    assert interval({"RELAY365_MALLOC_TRIM": raw}) == expected


def test_interval_zero_turns_it_off():
    assert not Trimmer(0).available


def test_a_small_heap_is_not_worth_a_trim():
    free = heap_free()
    if free is None:
        pytest.skip("no mallinfo2 (not glibc >= 2.33)")
    assert Trimmer(10).worth_it() == (free >= MIN_FREE)
