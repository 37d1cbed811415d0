"""The short fuzz run of the suite: every target in fuzz/ for a few hundred inputs (its seeds,
then mutations, fixed random seed), in process. The long, coverage-guided runs are
`fuzz/run --inputs N` (RELIABILITY.md)."""

from __future__ import annotations

import os

import pytest

from fuzz import engine
from fuzz.targets import TARGETS, seeds, smtp_session

INPUTS = {"smtp_session": 150, "config": 200}  # the slow ones (a TCP session, a YAML load each)


@pytest.mark.parametrize("name", list(TARGETS))
def test_short_fuzz_run(name):
    corpus = seeds(name)
    assert corpus, f"fuzz/corpus/{name} is empty"
    result = engine.run(name, TARGETS[name], corpus, INPUTS.get(name, 600))
    assert not result.crashes, f"{name}: {result.crashes[0][1]}\ninput: {result.crashes[0][0]!r}"
    assert result.inputs == INPUTS.get(name, 600)


@pytest.mark.parametrize("line", [b"MAIL FROM:<", b"RCPT TO:<"])
def test_a_lone_angle_bracket_is_a_syntax_error(line, monkeypatch):
    monkeypatch.setitem(os.environ, "FUZZ_STRICT", "1")
    before = b"AUTH PLAIN AHNjYW5uZXIAcHc=\r\nMAIL FROM:<a@b>\r\n" if line.startswith(b"RCPT") else b""
    smtp_session.smtp_session(b"\x00EHLO x\r\n" + before + line + b"\r\nQUIT\r\n")
