"""Transcripts of what the core answers itself: greeting, CAPABILITY, NOOP, ID, LOGOUT, STARTTLS,
bad input and the limits."""

from __future__ import annotations

import pytest

from relay365.imap.core import (
    MAX_BAD_COMMANDS,
    Close,
    ImapUsageError,
    StartTLS,
    State,
)
from relay365.imap.parse import MAX_COMMAND_SIZE, MAX_LINE_LENGTH, MAX_LITERAL_SIZE

from .helpers import make, sent

CAPS = b"IMAP4rev1 SASL-IR LITERAL+ ID STARTTLS AUTH=PLAIN"
CONTINUE = sent(b"+ Ready for literal data")
UNKNOWN = b"BAD Command unknown or not valid before login"


@pytest.mark.parametrize("options, caps", [
    ({}, CAPS),
    ({"tls_active": True}, b"IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN"),
    ({"starttls_available": False}, b"IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN"),
    ({"allow_plaintext_auth": False}, b"IMAP4rev1 SASL-IR LITERAL+ ID STARTTLS LOGINDISABLED"),
    ({"allow_plaintext_auth": False, "starttls_available": False},
     b"IMAP4rev1 SASL-IR LITERAL+ ID LOGINDISABLED"),
    ({"allow_plaintext_auth": False, "tls_active": True},
     b"IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN"),
])
def test_greeting_and_capability_follow_the_link(feed, options, caps):
    core = make(**options)
    assert core.greeting() == [sent(b"* OK [CAPABILITY " + caps + b"] relay365 ready")]
    assert feed(core, b"a1 CAPABILITY\r\n") == [
        sent(b"* CAPABILITY " + caps, b"a1 OK CAPABILITY completed")]


def test_command_names_are_case_insensitive(feed):
    core = make()
    assert feed(core, b"a1 capability\r\nA2 nOoP\r\n") == [
        sent(b"* CAPABILITY " + CAPS, b"a1 OK CAPABILITY completed", b"A2 OK NOOP completed")]


def test_noop_and_a_bare_lf_line_end(feed):
    assert feed(make(), b"a1 NOOP\r\na2 NOOP\n") == [
        sent(b"a1 OK NOOP completed", b"a2 OK NOOP completed")]


@pytest.mark.parametrize("line", [b"a1 NOOP x", b"a1 CAPABILITY x", b"a1 LOGOUT now", b"a1 NOOP ",
                                  b"a1 STARTTLS x", b"a1 NOOP\rx"])
def test_commands_without_arguments_refuse_them(feed, line):
    assert feed(make(), line + b"\r\n") == [sent(b"a1 BAD Unexpected extra arguments")]


def test_logout_says_bye_and_closes_and_ignores_the_rest(feed):
    core = make()
    assert feed(core, b"a1 LOGOUT\r\na2 NOOP\r\n") == [
        sent(b"* BYE relay365 logging out", b"a1 OK LOGOUT completed"), Close()]
    assert core.state is State.CLOSED and core.buffered_size == 0
    assert feed(core, b"a3 NOOP\r\n") == []


@pytest.mark.parametrize("params, continuations", [
    (b"NIL", 0), (b"nil", 0), (b"()", 0), (b'("name" "Thunderbird")', 0),
    (b'("name" "x" "version" NIL "os" "y")', 0), (b'({4}\r\nname "x")', 1),
    (b'("name" {1}\r\nx "os" {1}\r\ny)', 2), (b'({4+}\r\nname {1+}\r\nx)', 0),
])
def test_id_accepts_nil_or_a_list_and_names_us(feed, params, continuations):
    assert feed(make(), b"a1 ID " + params + b"\r\n") == [sent(
        *[b"+ Ready for literal data"] * continuations,
        b'* ID ("name" "relay365")', b"a1 OK ID completed")]


@pytest.mark.parametrize("params, why", [
    (b"", b"Expected a space"),
    (b" ", b"Expected ID parameter list"),
    (b" foo", b"Expected an ID parameter list or NIL"),
    (b' ("name")', b"Expected a space"),
    (b' ("name" "x"', b"Expected a space"),
    (b' ("name" "x" )', b"Expected a string"),
    (b' (name "x")', b"Expected a string"),
    (b' ("name" x)', b"Expected a string or NIL"),
    (b" NIL NIL", b"Unexpected extra arguments"),
    (b' ("' + b"f" * 31 + b'" "x")', b"ID parameters exceed RFC 2971 limits"),
    (b' ("name" "' + b"v" * 1025 + b'")', b"ID parameters exceed RFC 2971 limits"),
    (b" (" + b" ".join(b'"f%d" NIL' % i for i in range(31)) + b")",
     b"ID parameters exceed RFC 2971 limits"),
])
def test_id_refuses_malformed_lists(feed, params, why):
    assert feed(make(), b"a1 ID" + params + b"\r\n") == [sent(b"a1 BAD " + why)]


def test_id_at_the_rfc_2971_limits_is_fine(feed):
    pairs = b" ".join(b'"%s" "%s"' % (b"%02d" % i + b"f" * 28, b"v" * 200) for i in range(30))
    assert feed(make(), b"a1 ID (" + pairs + b")\r\n") == [
        sent(b'* ID ("name" "relay365")', b"a1 OK ID completed")]


# -- STARTTLS -------------------------------------------------------------------------------------

def test_starttls_then_handshake_then_new_capabilities(feed):
    core = make(allow_plaintext_auth=False)
    assert feed(core, b"a1 STARTTLS\r\n") == [sent(b"a1 OK Begin TLS negotiation now"), StartTLS()]
    assert core.state is State.TLS_HANDSHAKE
    assert core.tls_started() == []
    assert core.tls_active and core.state is State.NOT_AUTHENTICATED
    assert feed(core, b"a2 CAPABILITY\r\n") == [
        sent(b"* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN",
             b"a2 OK CAPABILITY completed")]
    assert feed(core, b"a3 STARTTLS\r\n") == [sent(b"a3 BAD TLS is already active")]


def test_starttls_unavailable(feed):
    assert feed(make(starttls_available=False), b"a1 STARTTLS\r\n") == [
        sent(b"a1 BAD STARTTLS is not available")]


def test_starttls_pipelined_in_the_same_read_closes_without_ok():
    core = make()
    assert core.receive_data(b"a1 STARTTLS\r\na2 LOGIN bob pw\r\n") == [
        sent(b"* BYE [CLIENTBUG] STARTTLS must not be pipelined"), Close()]
    assert core.buffered_size == 0


def test_plaintext_between_starttls_and_handshake_closes():
    # the same client, read by read: the bytes now come after our OK, before the handshake
    core = make()
    assert core.receive_data(b"a1 STARTTLS\r\n") == [
        sent(b"a1 OK Begin TLS negotiation now"), StartTLS()]
    assert core.receive_data(b"") == []
    assert core.receive_data(b"a2 LOGIN bob pw\r\n") == [
        sent(b"* BYE [CLIENTBUG] Data received before the TLS handshake"), Close()]
    assert core.tls_started() == []  # racing the close is harmless
    assert core.buffered_size == 0


# -- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, reply", [
    (b"a1 SELECT INBOX", b"a1 " + UNKNOWN),
    (b"a1 select", b"a1 " + UNKNOWN),
    (b"", b"* BAD Missing or invalid tag"),
    (b" NOOP", b"* BAD Missing or invalid tag"),
    (b"+1 NOOP", b"* BAD Missing or invalid tag"),
    (b"a(1 NOOP", b"* BAD Missing or invalid tag"),
    (b"a*1 NOOP", b"* BAD Missing or invalid tag"),
    (b"\xff NOOP", b"* BAD Missing or invalid tag"),
    (b"a]1 FOO", b"a]1 " + UNKNOWN),
    (b"a1", b"a1 BAD Expected a space"),
    (b"a1 ", b"a1 BAD Expected command name"),
    (b"a1  NOOP", b"a1 BAD Expected command name"),
])
def test_malformed_and_unknown_commands_are_bad(feed, line, reply):
    core = make()
    assert feed(core, line + b"\r\n") == [sent(reply)]
    assert core.state is State.NOT_AUTHENTICATED


def test_consecutive_bad_commands_end_the_session(feed):
    core = make()
    nine = b"(\r\n" * (MAX_BAD_COMMANDS - 1)
    assert feed(core, nine + b"a1 NOOP\r\n" + nine) == [
        sent(*[b"* BAD Missing or invalid tag"] * 9, b"a1 OK NOOP completed",
             *[b"* BAD Missing or invalid tag"] * 9)]
    assert feed(core, b"a2 SELECT\r\na3 NOOP\r\n") == [
        sent(b"a2 " + UNKNOWN, b"* BYE Too many invalid commands"), Close()]
    assert core.state is State.CLOSED


def test_a_no_is_not_a_bad(feed):
    core = make()
    nine = b"(\r\n" * (MAX_BAD_COMMANDS - 1)
    effects = feed(core, nine + b"a1 AUTHENTICATE X\r\n" + nine)
    assert Close() not in effects


# -- limits ---------------------------------------------------------------------------------------

def test_a_line_of_the_maximum_length_is_read(feed):
    tag = b"t" * (MAX_LINE_LENGTH - len(b" NOOP\r\n"))
    assert feed(make(), tag + b" NOOP\r\n") == [sent(tag + b" OK NOOP completed")]


def test_a_longer_line_closes(feed):
    tag = b"t" * (MAX_LINE_LENGTH - len(b" NOOP\r\n") + 1)
    core = make()
    assert feed(core, tag + b" NOOP\r\n") == [sent(b"* BYE Command line too long"), Close()]
    assert core.buffered_size == 0


def test_an_endless_line_closes_once_it_is_too_long(feed):
    core = make()
    assert feed(core, b"a" * (MAX_LINE_LENGTH - 1)) == []
    assert core.buffered_size == MAX_LINE_LENGTH - 1
    assert feed(core, b"a") == [sent(b"* BYE Command line too long"), Close()]


def test_a_synchronizing_literal_too_large_is_refused_before_it_is_sent(feed):
    core = make()
    assert feed(core, b"a1 LOGIN {%d}\r\na2 NOOP\r\n" % (MAX_LITERAL_SIZE + 1)) == [
        sent(b"a1 BAD [TOOBIG] Literal too large", b"a2 OK NOOP completed")]


@pytest.mark.parametrize("size", [b"99999999999999999999999", b"9" * 5000])
def test_absurd_literal_sizes_are_refused(feed, size):
    assert feed(make(), b"a1 LOGIN {" + size + b"}\r\n") == [
        sent(b"a1 BAD [TOOBIG] Literal too large")]


def test_a_non_synchronizing_literal_too_large_closes(feed):
    core = make()
    assert feed(core, b"a1 LOGIN {%d+}\r\n" % (MAX_LITERAL_SIZE + 1) + b"x" * 100) == [
        sent(b"* BYE [TOOBIG] Literal too large"), Close()]
    assert core.buffered_size == 0


def test_literals_of_the_maximum_size_are_read(feed):
    user = b"u" * MAX_LITERAL_SIZE
    effects = feed(make(), b"a1 LOGIN {%d+}\r\n" % len(user) + user + b" pw\r\n")
    assert [type(e).__name__ for e in effects] == ["Authenticate"]
    assert effects[0].username == user.decode()


def _id_with_literals(count: int, sync: bool) -> bytes:
    marker = b"{4000}" if sync else b"{4000+}"
    pairs = b" ".join(b'"f" ' + marker + b"\r\n" + b"v" * 4000 for _ in range(count))
    return b"a1 ID (" + pairs + b")\r\n"


def test_a_command_too_large_in_total_closes(feed):
    core = make()
    assert feed(core, _id_with_literals(5, sync=False)) == [
        sent(b"* BYE [TOOBIG] Literal too large"), Close()]


def test_a_command_too_large_in_total_refuses_its_synchronizing_literal(feed):
    # the client doesn't send the refused literal; this one does, and its bytes are a new line
    assert feed(make(), _id_with_literals(5, sync=True)) == [sent(
        *[b"+ Ready for literal data"] * 4, b"a1 BAD [TOOBIG] Literal too large",
        b"* BAD Missing or invalid tag")]


def test_the_line_after_a_literal_counts_towards_the_command_size(feed):
    # 4 literals of 4000 leave less than a line's worth of room for the rest
    head = b"a1 ID (" + b" ".join(b'"f" {4000+}\r\n' + b"v" * 4000 for _ in range(4))
    room = MAX_COMMAND_SIZE - len(head)
    assert room < MAX_LINE_LENGTH
    core = make()
    assert feed(core, head + b" " * (room - 1)) == []
    assert feed(core, b" ") == [sent(b"* BYE Command line too long"), Close()]


@pytest.mark.parametrize("line, reply", [
    (b"a1 NOOP {3}", b"a1 BAD Unexpected literal"),
    (b"a1 SELECT {3}", b"a1 " + UNKNOWN),
    (b"{3}", b"* BAD Missing or invalid tag"),
    (b"a1 {3}", b"a1 BAD Expected command name"),
])
def test_synchronizing_literals_where_none_can_be_are_refused_first(feed, line, reply):
    assert feed(make(), line + b"\r\na2 NOOP\r\n") == [sent(reply, b"a2 OK NOOP completed")]


def test_a_non_synchronizing_literal_where_none_can_be_is_read_then_refused(feed):
    assert feed(make(), b"a1 NOOP {3+}\r\nabc\r\n") == [sent(b"a1 BAD Unexpected extra arguments")]


# -- timeout and misuse ---------------------------------------------------------------------------

def test_timeout_says_bye_and_closes(feed):
    core = make()
    feed(core, b"a1 NOO")
    assert core.timeout() == [sent(b"* BYE Autologout; idle for too long"), Close()]
    assert core.state is State.CLOSED and core.buffered_size == 0
    assert core.timeout() == [] and feed(core, b"P\r\n") == []


@pytest.mark.parametrize("call", ["tls_started", "login_succeeded", "take_buffered"])
def test_entry_points_at_the_wrong_moment_are_adapter_bugs(call):
    with pytest.raises(ImapUsageError):
        getattr(make(), call)()
    with pytest.raises(ImapUsageError):
        make().login_failed("auth_failed")
