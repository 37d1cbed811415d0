"""Sender rewriting (From -> the mailbox, Reply-To kept) and what the SMTP client is told on failure."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay365 import replies
from relay365.errors import RelayError, TokenError, UpstreamAuthError, UpstreamError
from relay365.replies import for_exception, one_line, upstream_reply
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


# -- replies -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, flat", [
    ("one", "one"),
    ("5.7.60 SMTP; Client does not have permissions\r\n to send as this sender",
     "5.7.60 SMTP; Client does not have permissions to send as this sender"),
    ("  a\tb\n\nc  ", "a b c"),
    ("", ""),
])
def test_one_line(text, flat):
    assert one_line(text) == flat


def test_one_line_is_bounded():
    assert one_line("x" * 1000) == "x" * 400 and one_line("x " * 100, 10) == "x x x x x "


@pytest.mark.parametrize("code, text, reply", [
    (550, "5.7.60 SMTP; Client does not have\r\n permissions",
     "550 5.7.60 SMTP; Client does not have permissions"),
    (452, "4.5.3 Too many recipients", "452 4.5.3 Too many recipients"),
    (250, "2.0.0 OK queued", "250 2.0.0 OK queued"),
    (554, "", "554 No text"),
    (199, "weird", "451 4.4.0 Unexpected reply from Office 365; try again later"),
    (600, "weird", "451 4.4.0 Unexpected reply from Office 365; try again later"),
    (-1, "", "451 4.4.0 Unexpected reply from Office 365; try again later"),
])
def test_upstream_reply(code, text, reply):
    assert upstream_reply(code, text) == reply


@pytest.mark.parametrize("exc, reply", [
    (TokenError("a@b", "temporarily_unavailable", 90033, True, "retry"),
     "451 4.7.0 Office 365 sign-in is temporarily unavailable; try again later"),
    (TokenError("a@b", "invalid_grant", 70008, False, "re-authorise ..."),
     "451 4.7.0 The relay's Office 365 account needs attention from its administrator; try again later"),
    (UpstreamAuthError("refused", code=535, text="5.7.3 Authentication\r\n unsuccessful"),
     "451 4.7.0 Office 365 refused the relay's login: 5.7.3 Authentication unsuccessful; try again later"),
    (UpstreamAuthError("refused"), "451 4.7.0 Office 365 refused the relay's login; try again later"),
    (UpstreamError("refused", code=550, text="5.1.10 RESOLVER.ADR.RecipientNotFound", transient=False),
     "550 5.1.10 RESOLVER.ADR.RecipientNotFound"),
    (UpstreamError("busy", code=421, text="4.3.2 Service not available"), "421 4.3.2 Service not available"),
    (UpstreamError("cannot reach upstream smtp.office365.com:587: ConnectionRefusedError"),
     "451 4.4.1 Office 365 cannot be reached right now; try again later"),
    # a failure must never sound like success: aiosmtplib raises for any code it did not expect
    (UpstreamError("upstream refused the message", code=250, text="2.0.0 OK"),
     "451 4.4.0 Unexpected reply from Office 365; try again later"),
    (UpstreamError("upstream refused the message", code=354, text="go ahead"),
     "451 4.4.0 Unexpected reply from Office 365; try again later"),
    (RelayError("secret internals"), "451 4.3.0 Internal error in the relay; try again later"),
    (KeyError("password"), "451 4.3.0 Internal error in the relay; try again later"),
])
def test_for_exception(exc, reply):
    assert for_exception(exc) == reply


def test_token_details_stay_out_of_the_reply():
    exc = TokenError("scanner@contoso.com", "invalid_grant", 70008, False, "re-authorise", "AADSTS70008: x")
    assert "AADSTS" not in for_exception(exc) and "scanner" not in for_exception(exc)


@pytest.mark.parametrize("name", ["INTERNAL_ERROR", "AUTH_REQUIRED", "AUTH_FAILED", "AUTH_BLOCKED",
                                  "TOO_MANY_CONNECTIONS", "SESSION_TIME_LIMIT", "AUTH_TLS_REQUIRED",
                                  "UNEXPECTED_REPLY"])
def test_fixed_replies_are_well_formed(name):
    reply = getattr(replies, name)
    code, enhanced = reply.split(" ")[:2]
    assert code[0] in "45" and enhanced[0] == code[0] and enhanced.count(".") == 2 and "\n" not in reply
