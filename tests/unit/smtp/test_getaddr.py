"""`RelaySMTP._getaddr`: the fast path for `<local@domain>` gives what aiosmtpd's parser gives, for
every input - the address a MAIL or RCPT names must not depend on which path read it."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relay365.smtp import protocol
from relay365.smtp.protocol import RelaySMTP


def server(local_part_limit: int = 0) -> RelaySMTP:
    s = RelaySMTP.__new__(RelaySMTP)  # _getaddr reads nothing but local_part_limit
    s.local_part_limit = local_part_limit
    return s


def aiosmtpd_reads(s: RelaySMTP, arg: str) -> tuple[str | None, str | None]:
    try:
        return SMTP._getaddr(s, arg)
    except Exception:  # what RelaySMTP makes of the parser's own failures
        return None, None


ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
SPECIALS = '.@<>[]()"\\,;: \t\u00e9\x00'
atoms = st.text(st.sampled_from(ATEXT), min_size=1, max_size=6)
dot_atom = st.lists(atoms, min_size=1, max_size=3).map(".".join)
label = st.text(st.sampled_from("abz09-"), min_size=1, max_size=5)
domain = st.lists(label, min_size=1, max_size=3).map(".".join)
plain = st.builds(lambda lp, d, rest: f"<{lp}@{d}>{rest}", dot_atom, domain,
                  st.sampled_from(["", " SIZE=100", " BODY=8BITMIME SMTPUTF8", ">", " x"]))
anything = st.text(st.sampled_from(ATEXT + SPECIALS), max_size=30)


@settings(max_examples=2000)
@given(st.one_of(plain, anything, plain.map(lambda a: a.replace("@", "@@", 1)),
                 plain.map(lambda a: a.replace(".", "..", 1)), plain.map(lambda a: a[:-1])))
@example("<scanner@contoso.test>")
@example("<a.b@c.d> SIZE=5")
@example("<a..b@c>")
@example("<a@b.>")
@example("<.a@b>")
@example("<a@[192.0.2.1]>")
@example('<"a b"@c>')
@example("<>")
@example("<a@b>>")
@example("<j\u00f6rg@b>")
@example("a@b")
@example("<a@b")
def test_the_fast_path_reads_what_aiosmtpd_reads(arg):
    s = server()
    assert s._getaddr(arg) == aiosmtpd_reads(s, arg)


@pytest.mark.parametrize("limit, arg", [(3, "<abcd@x.test>"), (4, "<abcd@x.test>"), (0, "<abcd@x>")])
def test_the_local_part_limit_holds_on_the_fast_path(limit, arg):
    s = server(limit)
    assert s._getaddr(arg) == aiosmtpd_reads(s, arg)
    assert (s._getaddr(arg)[0] is None) == (0 < limit < 4)


def test_the_everyday_address_does_not_call_the_email_parser(monkeypatch):
    def parser_called(self, arg):
        raise AssertionError("the email header parser ran")

    monkeypatch.setattr(SMTP, "_getaddr", parser_called)
    assert server()._getaddr("<scanner@contoso.test> SIZE=10240") == (
        "scanner@contoso.test", "SIZE=10240")
    assert protocol._PLAIN_PATH.match("<a@[192.0.2.1]>") is None  # the rest still goes to it
