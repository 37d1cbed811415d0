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


@pytest.mark.parametrize("line", [b"MAIL FROM:<", b"RCPT TO:<", b"MAIL FROM:<a@[b>", b"RCPT TO:<a@[b>",
                                  b"MAIL FROM:<\"a@b>"])
def test_a_malformed_address_is_a_syntax_error(line, monkeypatch):
    monkeypatch.setitem(os.environ, "FUZZ_STRICT", "1")
    before = b"AUTH PLAIN AHNjYW5uZXIAcHc=\r\nMAIL FROM:<a@b>\r\n" if line.startswith(b"RCPT") else b""
    smtp_session.smtp_session(b"\x00EHLO x\r\n" + before + line + b"\r\nQUIT\r\n")


@pytest.mark.parametrize("line", [b"VRFY (/\xb5\xb5x", b"VRFY (/\rb", b"\xb5\xb5 x", b"NOOP \xff\xfe"])
def test_client_bytes_echoed_in_a_reply_stay_one_clean_reply(line):
    """Found by the 1,000,000-input run: aiosmtpd echoes VRFY's argument (and an unknown command)
    in its reply; bytes that are not UTF-8 made the encode raise - `451 4.3.0 Internal error` and
    an error logged - and a CR in it split the reply line."""
    smtp_session.smtp_session(b"\x00EHLO x\r\n" + line + b"\r\n")  # the target's oracle
    w = smtp_session._world
    assert w is not None
    out = w.loop.run_until_complete(w.session(w.ports[0], b"EHLO x\r\n" + line + b"\r\n"))
    lines = out.split(b"\r\n")[:-1]
    assert lines and all(smtp_session._REPLY.match(r) and b"\r" not in r for r in lines), lines


@pytest.mark.parametrize("arg", [b" \x1f\x1f\x1f", b" \x1c", b" \x1d \x1e", b"", b" "])
def test_an_auth_argument_of_only_unicode_space_is_not_enough_value(arg, monkeypatch):
    """Found by the 1,000,000-input smtp_session run (fuzz/findings/smtp_session-auth-unicode-
    space): `AUTH \\x1f...` - str.split() splits on U+001C-U+001F, bytes.strip() does not - made
    aiosmtpd index an empty list: 451 4.3.0 Internal error and an error logged. Now 501. The
    first fix broke a bare `AUTH` (aiosmtpd passes None: AttributeError, the same 451), found by
    the next run after 4,470 inputs (fuzz/findings/smtp_session-bare-auth)."""
    monkeypatch.setitem(os.environ, "FUZZ_STRICT", "1")
    smtp_session.smtp_session(b"\x00EHLO x\r\nAUTH" + arg + b"\r\n")  # the target's oracle
    w = smtp_session._world
    assert w is not None
    out = w.loop.run_until_complete(w.session(w.ports[0], b"EHLO x\r\nAUTH" + arg + b"\r\n"))
    assert b"\r\n501 Not enough value\r\n" in out, out
