"""Regression tests for what fuzzing found (fuzz/, RELIABILITY.md). One test per bug, named for
the symptom; each failed before its fix."""

from __future__ import annotations

import pytest

from relay365.smtp.data import DataError, DataReader

# -- DATA: the error a client hears must not depend on how TCP cut the stream ------------------

LONG_AND_BIG = b"x" * 150 + b"\r\n" + b"y" * 300 + b"\r\n.\r\n"  # max_line 200, max_size 400


@pytest.mark.parametrize("split", [None, 1, 7, 64, 201, 250])
def test_too_big_wins_over_a_long_line_in_any_chunking(split):
    """A long line that also takes DATA over SIZE is 552 (too big) whether the line arrived
    whole or in pieces; it was 500 (line too long) when the first piece came alone."""
    r = DataReader(400, 200)
    pieces = [LONG_AND_BIG] if split is None else [LONG_AND_BIG[i:i + split]
                                                   for i in range(0, len(LONG_AND_BIG), split)]
    for p in pieces:
        r.feed(p)
    assert r.done and r.error is DataError.TOO_BIG and r.size == 454


def test_a_long_line_within_size_stays_line_too_long():
    r = DataReader(10_000, 200)
    for i in range(0, 400, 3):
        r.feed((b"z" * 300 + b"\r\n.\r\n")[i:i + 3])
    assert r.done and r.error is DataError.LINE_TOO_LONG
