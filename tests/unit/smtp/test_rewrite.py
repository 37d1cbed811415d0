"""Sender rewriting (From -> the mailbox, Reply-To kept) and what the SMTP client is told on failure."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relay365.smtp.rewrite import rewrite_from, split_headers

MB = "scanner@contoso.com"

# -- split_headers -------------------------------------------------------------------------------


@pytest.mark.parametrize("message, fields, rest", [
    (b"A: 1\r\nB: 2\r\n\r\nbody", [b"A: 1\r\n", b"B: 2\r\n"], b"\r\nbody"),
    (b"A: 1\r\n folded\r\n\tagain\r\nB: 2\r\n\r\n",
     [b"A: 1\r\n folded\r\n\tagain\r\n", b"B: 2\r\n"], b"\r\n"),
    (b"A: 1\nB: 2\n\nbody\n\nmore", [b"A: 1\n", b"B: 2\n"], b"\nbody\n\nmore"),
    (b"A: 1\r\nB: 2", [b"A: 1\r\n", b"B: 2\r\n"], b""),  # all headers, no end: a line ending is added
    (b"\r\nbody", [], b"\r\nbody"),
    (b"\nbody", [], b"\nbody"),
    (b"", [], b""),
])
def test_split_headers(message, fields, rest):
    assert split_headers(message) == (fields, rest)


# -- rewrite_from --------------------------------------------------------------------------------

@pytest.mark.parametrize("message, expected", [
    (b"Subject: s\r\nFrom: Printer 3 <printer3@lan.local>\r\nTo: b@x\r\n\r\nbody\r\n",
     b"Subject: s\r\nFrom: Printer 3 <scanner@contoso.com>\r\nReply-To: Printer 3 <printer3@lan.local>\r\n"
     b"To: b@x\r\n\r\nbody\r\n"),
    (b"From: printer3@lan.local\r\n\r\nx",
     b"From: scanner@contoso.com\r\nReply-To: printer3@lan.local\r\n\r\nx"),
    (b'From: "Smith, John" <j@lan>\r\n\r\nx',  # a display name that needs its quotes back
     b'From: "Smith, John" <scanner@contoso.com>\r\nReply-To: "Smith, John" <j@lan>\r\n\r\nx'),
    (b"FROM : dev@lan\r\nreply-to: ops@lan\r\n\r\nx",  # any case; an existing Reply-To is kept, not doubled
     b"From: scanner@contoso.com\r\nreply-to: ops@lan\r\n\r\nx"),
    (b"From: Long Name\r\n <dev@lan>\r\nTo: a@b\r\n\r\nx",  # folded
     b"From: Long Name <scanner@contoso.com>\r\nReply-To: Long Name <dev@lan>\r\nTo: a@b\r\n\r\nx"),
    (b"From: a@lan\r\nTo: x@y\r\nFrom: b@lan\r\n\r\nx",  # two From fields: one, where the first was
     b"From: scanner@contoso.com\r\nReply-To: a@lan\r\nTo: x@y\r\n\r\nx"),
    (b"To: a@b\r\n\r\nx", b"From: scanner@contoso.com\r\nTo: a@b\r\n\r\nx"),
    (b"From: \r\nTo: a@b\r\n\r\nx", b"From: scanner@contoso.com\r\nTo: a@b\r\n\r\nx"),
    (b"From: Scanner@Contoso.com\r\n\r\nx", b"From: scanner@contoso.com\r\n\r\nx"),  # itself: no Reply-To
    (b"From: m@lan\nSubject: x\n\nbody\n",
     b"From: scanner@contoso.com\nReply-To: m@lan\nSubject: x\n\nbody\n"),
    (b"To: a@b", b"From: scanner@contoso.com\r\nTo: a@b\r\n\r\n"),  # headers only: the blank line added
    (b"", b"From: scanner@contoso.com\r\n\r\n"),
    (b"\r\nbody", b"From: scanner@contoso.com\r\n\r\nbody"),
    (b" stray\r\nTo: a@b\r\n\r\nx",  # a continuation line first must not fold into the new From
     b" stray\r\nFrom: scanner@contoso.com\r\nTo: a@b\r\n\r\nx"),
    (b"From: Dr\xc3\xbccker <drucker@lan>\r\n\r\nx",  # a non-ASCII name is RFC 2047 encoded
     b"From: =?utf-8?q?Dr=C3=BCcker?= <scanner@contoso.com>\r\nReply-To: =?utf-8?q?Dr=C3=BCcker?= "
     b"<drucker@lan>\r\n\r\nx"),
    (b"From: Drucker <scan@b\xc3\xbcro.de>\r\n\r\nx",  # SMTPUTF8 (RFC 6532): the address stays as it was
     b"From: Drucker <scanner@contoso.com>\r\nReply-To: Drucker <scan@b\xc3\xbcro.de>\r\n\r\nx"),
    (b"From: j\xc3\xb6rg@b\xc3\xbcro.de\r\n\r\nx",
     b"From: scanner@contoso.com\r\nReply-To: j\xc3\xb6rg@b\xc3\xbcro.de\r\n\r\nx"),
])
def test_rewrite_from(message, expected):
    assert rewrite_from(message, MB) == expected


def test_a_non_ascii_mailbox():
    assert rewrite_from(b"From: Scan <s@lan>\r\n\r\nx", "sc\u00e4nner@contoso.com") == (
        b"From: Scan <sc\xc3\xa4nner@contoso.com>\r\nReply-To: Scan <s@lan>\r\n\r\nx")


def test_the_body_is_passed_through_byte_for_byte():
    body = b"\r\n--b\r\nFrom: inside@body\r\nContent-Type: application/pdf\r\n\r\n%PDF\x00\xff\r\n.\r\n"
    out = rewrite_from(b"From: a@lan\r\nTo: x@y\r\n" + body, MB)
    assert out.endswith(body) and out.count(b"inside@body") == 1


_HEADER_LINE = st.one_of(
    st.sampled_from([b"From: a@lan", b"from: A <a@lan>", b"Reply-To: r@lan", b" folded", b"\tfolded",
                     b"To: x@y", b"Subject: \xff\xfe", b"From: =?utf-8?q?x?= <q@lan>", b"From: <>", b"From:",
                     b"From: b\xc3\xbc@lan", b"X: \x00"]),
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)


@settings(max_examples=300)
@given(st.lists(_HEADER_LINE, max_size=8), st.sampled_from([b"\r\n", b"\n"]), st.binary(max_size=200))
def test_any_message_gets_exactly_one_from_and_the_same_body(lines, eol, body):
    lines = [line for line in lines if line.strip()]
    headers = eol.join(lines)
    message = headers + eol + eol + body if headers else eol + body
    out = rewrite_from(message, MB)
    fields, rest = split_headers(out)
    assert rest.endswith(body)
    new_eol = eol if headers else b"\r\n"  # no header to copy the line ending from: CRLF
    names = [field_name(f) for f in fields]
    [new_from] = [f for f in fields if field_name(f) == b"from"]
    assert new_from.startswith(b"From: ") and new_from.endswith(new_eol)
    assert new_from.endswith((b" " + MB.encode() + new_eol, b" <" + MB.encode() + b">" + new_eol))
    had = sum(field_name(line) == b"reply-to" for line in lines)
    assert (names.count(b"reply-to") == had) if had else (names.count(b"reply-to") <= 1)


def field_name(line: bytes) -> bytes:
    m = re.match(rb"([!-9;-~]+)[ \t]*:", line)
    return m.group(1).lower() if m else b""


@settings(max_examples=1500)
@given(st.text(st.sampled_from("abZ09.@-_+'!~\"<> ()[]\\,;:\t\u00e9"), max_size=28))
@example("scanner@lan.local")
@example("<scanner@lan.local>")
@example("Printer 3 <printer3@lan.local>")
@example("<a@b")
@example("a@b>")
@example("<>")
@example("")
def test_the_bare_address_fast_path_reads_what_getaddresses_reads(value):
    from email.utils import getaddresses

    from relay365.smtp.rewrite import from_address

    found = getaddresses([value])
    assert from_address(value) == (found[0] if found else ("", ""))
