"""Transcripts of LOGIN and AUTHENTICATE PLAIN, and of what the adapter reports back."""

from __future__ import annotations

import base64

import pytest

from relay365.imap.core import (
    MAX_AUTH_FAILURES,
    MAX_PIPELINED,
    Authenticate,
    Close,
    ImapUsageError,
    LoginFailure,
    Secret,
    StartSplice,
    State,
)

from .helpers import make, merge, sent

CONTINUE = b"+ Ready for literal data"


def login(tag: str, user: str, password: str, mechanism: str = "LOGIN") -> Authenticate:
    return Authenticate(tag, user, Secret(password), mechanism)


def plain(message: bytes) -> bytes:
    return base64.b64encode(message)


# -- LOGIN ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, user, password", [
    (b"bob pw", "bob", "pw"),
    (b'"bob" "pw"', "bob", "pw"),
    (b'"b\\"ob" "p\\\\w d"', 'b"ob', "p\\w d"),
    (b'"" ""', "", ""),
    (b"bob@example.com pw]x!#", "bob@example.com", "pw]x!#"),
    (b'bob "p\xc3\xa4ss\twort"', "bob", "p\u00e4ss\twort"),
    (b"{3+}\r\nbob {2+}\r\npw", "bob", "pw"),
    (b'"bob" {4+}\r\np w"', "bob", 'p w"'),
    (b"{0+}\r\n {0+}\r\n", "", ""),
])
def test_login_reads_atoms_quoted_strings_and_literals(feed, args, user, password):
    core = make()
    assert feed(core, b"a1 LOGIN " + args + b"\r\n") == [login("a1", user, password)]
    assert core.state is State.AWAITING_LOGIN and core.buffered_size == 0


def test_login_with_synchronizing_literals_asks_for_each(feed):
    assert feed(make(), b"a1 login {3}\r\nbob {2}\r\npw\r\n") == [
        sent(CONTINUE, CONTINUE), login("a1", "bob", "pw")]


def test_login_mixing_a_quoted_user_and_a_literal_password(feed):
    assert feed(make(), b'a1 LOGIN "bob" {5}\r\np\xc3\xa4w!\r\n') == [
        sent(CONTINUE), login("a1", "bob", "p\u00e4w!")]


@pytest.mark.parametrize("args, why", [
    (b"", b"Expected a space"),
    (b" bob", b"Expected a space"),
    (b" bob ", b"Expected a string"),
    (b" bob pw extra", b"Unexpected extra arguments"),
    (b" (bob) pw", b"Expected a string"),
    (b' "bob pw', b"Unterminated quoted string"),
    (b' "b\\ob" pw', b"Invalid escape in quoted string"),
    (b' "bob\\', b"Invalid escape in quoted string"),
    (b' "b\rob" pw', b"Invalid character in quoted string"),
    (b' "b\x00ob" pw', b"Invalid character in quoted string"),
    (b" bob {x}", b"Invalid literal"),
    (b" bob {2}x", b"Invalid literal"),
    (b" bob{2+}\r\npw", b"Expected a space"),
    (b" bob {2+}x {2+}\r\npw", b"Invalid literal"),
    (b" bob {2+}\r\np\x00", b"NUL in literal"),
    (b' bob "\xff"', b"User name and password must be UTF-8"),
    (b" {1+}\r\n\xff pw", b"User name and password must be UTF-8"),
])
def test_malformed_login_is_bad_and_the_session_goes_on(feed, args, why):
    core = make()
    assert feed(core, b"a1 LOGIN" + args + b"\r\na2 NOOP\r\n") == [
        sent(b"a1 BAD " + why, b"a2 OK NOOP completed")]


def test_login_refused_without_tls_when_plaintext_is_not_allowed(feed):
    core = make(allow_plaintext_auth=False)
    assert feed(core, b"a1 LOGIN bob pw\r\n") == [
        sent(b"a1 NO [PRIVACYREQUIRED] Authentication requires TLS")]
    # a synchronizing literal is refused before the client sends the password
    assert feed(core, b"a2 LOGIN bob {2}\r\na3 NOOP\r\n") == [
        sent(b"a2 NO [PRIVACYREQUIRED] Authentication requires TLS", b"a3 OK NOOP completed")]


def test_login_allowed_after_starttls(feed):
    core = make(allow_plaintext_auth=False)
    feed(core, b"a1 STARTTLS\r\n")
    core.tls_started()
    assert feed(core, b"a2 LOGIN bob pw\r\n") == [login("a2", "bob", "pw")]


# -- AUTHENTICATE PLAIN ---------------------------------------------------------------------------

def test_authenticate_plain_with_an_initial_response(feed):
    core = make()
    assert feed(core, b"a1 AUTHENTICATE PLAIN " + plain(b"\0bob\0pw") + b"\r\n") == [
        login("a1", "bob", "pw", "PLAIN")]
    assert core.login_succeeded("IMAP4rev1 IDLE") == [
        sent(b"a1 OK [CAPABILITY IMAP4rev1 IDLE] AUTHENTICATE completed"), StartSplice()]


def test_authenticate_plain_with_a_continuation(feed):
    core = make()
    assert feed(core, b"a1 authenticate plain\r\n") == [sent(b"+ ")]
    assert core.state is State.AUTH_RESPONSE
    assert feed(core, plain(b"bob\0bob\0p\xc3\xa4") + b"\r\n") == [
        login("a1", "bob", "p\u00e4", "PLAIN")]


def test_authenticate_pipelined_with_its_response(feed):
    assert feed(make(), b"a1 AUTHENTICATE PLAIN\r\n" + plain(b"\0bob\0pw") + b"\r\n") == [
        sent(b"+ "), login("a1", "bob", "pw", "PLAIN")]


def test_authenticate_cancelled(feed):
    core = make()
    assert feed(core, b"a1 AUTHENTICATE PLAIN\r\n*\r\na2 NOOP\r\n") == [
        sent(b"+ ", b"a1 BAD AUTHENTICATE cancelled", b"a2 OK NOOP completed")]


@pytest.mark.parametrize("response, reply", [
    (b"=", b"BAD Malformed PLAIN response"),
    (b"AGJvYgBwdw", b"BAD Invalid base64"),
    (b"AGJv.YgBwdw==", b"BAD Invalid base64"),
    (plain(b"bob\0pw"), b"BAD Malformed PLAIN response"),
    (plain(b"\0bob\0pw\0"), b"BAD Malformed PLAIN response"),
    (plain(b"\0\0pw"), b"BAD Malformed PLAIN response"),
    (plain(b"\0bob\0"), b"BAD Malformed PLAIN response"),
    (plain(b"alice\0bob\0pw"), b"NO [AUTHORIZATIONFAILED] Acting as another user is not supported"),
    (plain(b"\0b\xffob\0pw"), b"BAD User name and password must be UTF-8"),
])
def test_bad_plain_responses(feed, response, reply):
    core = make()
    assert feed(core, b"a1 AUTHENTICATE PLAIN " + response + b"\r\n") == [sent(b"a1 " + reply)]
    assert feed(core, b"a2 AUTHENTICATE PLAIN\r\n" + response + b"\r\n") == [
        sent(b"+ ", b"a2 " + reply)]
    assert core.state is State.NOT_AUTHENTICATED


def test_an_empty_continuation_line_is_an_empty_response(feed):
    assert feed(make(), b"a1 AUTHENTICATE PLAIN\r\n\r\n") == [
        sent(b"+ ", b"a1 BAD Malformed PLAIN response")]


@pytest.mark.parametrize("args, reply", [
    (b" LOGIN", b"NO [CANNOT] Unsupported authentication mechanism"),
    (b" XOAUTH2 dXNlcj0=", b"NO [CANNOT] Unsupported authentication mechanism"),
    (b"", b"BAD Expected a space"),
    (b" ", b"BAD Expected mechanism"),
    (b" PLAIN ", b"BAD Expected initial response"),
    (b" PLAIN = x", b"BAD Unexpected extra arguments"),
])
def test_other_mechanisms_and_malformed_authenticate(feed, args, reply):
    assert feed(make(), b"a1 AUTHENTICATE" + args + b"\r\n") == [sent(b"a1 " + reply)]


def test_authenticate_refused_without_tls_before_the_password_is_asked(feed):
    core = make(allow_plaintext_auth=False)
    assert feed(core, b"a1 AUTHENTICATE PLAIN\r\na2 NOOP\r\n") == [
        sent(b"a1 NO [PRIVACYREQUIRED] Authentication requires TLS", b"a2 OK NOOP completed")]


def test_an_over_long_authenticate_response_closes(feed):
    core = make()
    assert feed(core, b"a1 AUTHENTICATE PLAIN\r\n" + b"A" * 9000) == [
        sent(b"+ ", b"* BYE Command line too long"), Close()]


# -- what the adapter reports back ----------------------------------------------------------------

@pytest.mark.parametrize("caps, code", [
    ("IMAP4rev1 IDLE MOVE", b"[CAPABILITY IMAP4rev1 IDLE MOVE] "),
    (b"IMAP4rev1  IDLE\t", b"[CAPABILITY IMAP4rev1 IDLE] "),
    (None, b""),
    ("", b""),
    ("IMAP4rev1 X]", b""),
    ("IMAP4rev1\r\n* BYE", b"[CAPABILITY IMAP4rev1 * BYE] "),
    ("IMAP4rev1 \x00", b""),
    (b"IMAP4rev1 \xff", b""),
])
def test_login_succeeded_sends_ok_with_clean_capabilities_and_splices(feed, caps, code):
    core = make()
    feed(core, b"a1 LOGIN bob pw\r\n")
    assert core.login_succeeded(caps) == [
        sent(b"a1 OK " + code + b"LOGIN completed"), StartSplice()]
    assert core.state is State.SPLICING
    with pytest.raises(ImapUsageError):
        core.receive_data(b"a2 NOOP\r\n")
    with pytest.raises(ImapUsageError):
        core.timeout()


def test_bytes_pipelined_after_login_are_handed_over_not_lost(feed):
    core = make()
    assert feed(core, b"a1 LOGIN bob pw\r\na2 SELECT INBOX\r\na3 FETCH 1 (BODY[]") == [
        login("a1", "bob", "pw")]
    assert core.buffered_size == len(b"a2 SELECT INBOX\r\na3 FETCH 1 (BODY[]")
    core.login_succeeded("IMAP4rev1")
    assert core.take_buffered() == b"a2 SELECT INBOX\r\na3 FETCH 1 (BODY[]"
    assert core.take_buffered() == b"" and core.buffered_size == 0


@pytest.mark.parametrize("kind, reply", [
    ("auth_failed", b"NO [AUTHENTICATIONFAILED] Invalid credentials"),
    (LoginFailure.AUTH_FAILED, b"NO [AUTHENTICATIONFAILED] Invalid credentials"),
    ("unavailable", b"NO [UNAVAILABLE] Service temporarily unavailable, try again later"),
    ("limit", b"NO [LIMIT] Too many sessions, try again later"),
])
def test_login_failed_answers_and_the_client_may_try_again(feed, kind, reply):
    core = make()
    feed(core, b"a1 LOGIN bob wrong\r\n")
    assert core.login_failed(kind) == [sent(b"a1 " + reply)]
    assert core.state is State.NOT_AUTHENTICATED
    assert feed(core, b"a2 LOGIN bob right\r\n") == [login("a2", "bob", "right")]


def test_login_failed_goes_on_with_what_the_client_pipelined(feed):
    core = make()
    assert feed(core, b"a1 LOGIN bob wrong\r\na2 NOOP\r\na3 LOGIN bob right\r\na4 LOGOUT\r\n") == [
        login("a1", "bob", "wrong")]
    assert merge(core.login_failed("auth_failed")) == [
        sent(b"a1 NO [AUTHENTICATIONFAILED] Invalid credentials", b"a2 OK NOOP completed"),
        login("a3", "bob", "right")]
    assert merge(core.login_failed("auth_failed")) == [
        sent(b"a3 NO [AUTHENTICATIONFAILED] Invalid credentials", b"* BYE relay365 logging out",
             b"a4 OK LOGOUT completed"), Close()]


def test_too_many_wrong_passwords_close(feed):
    core = make()
    for attempt in range(1, MAX_AUTH_FAILURES + 1):
        feed(core, b"a%d LOGIN bob wrong\r\n" % attempt)
        core.login_failed("unavailable")  # not the client's fault: doesn't count
        feed(core, b"b%d LOGIN bob wrong\r\n" % attempt)
        effects = core.login_failed("auth_failed")
    assert merge(effects) == [sent(b"b3 NO [AUTHENTICATIONFAILED] Invalid credentials",
                                   b"* BYE Too many failed login attempts"), Close()]
    assert core.state is State.CLOSED


def test_a_flood_while_the_login_is_checked_closes(feed):
    core = make()
    feed(core, b"a1 LOGIN bob pw\r\n")
    assert feed(core, b"x" * MAX_PIPELINED) == []
    assert core.buffered_size == MAX_PIPELINED
    assert feed(core, b"x") == [sent(b"* BYE Too much data before the login completed"), Close()]
    # the adapter's login finishing late is harmless
    assert core.login_succeeded("IMAP4rev1") == [] and core.login_failed("limit") == []
    assert core.take_buffered() == b"" and core.buffered_size == 0


def test_a_login_with_a_flood_behind_it_closes_instead():
    core = make()
    assert core.receive_data(b"a1 LOGIN bob pw\r\n" + b"x" * (MAX_PIPELINED + 1)) == [
        sent(b"* BYE Too much data before the login completed"), Close()]


def test_usage_errors_around_login():
    core = make()
    core.receive_data(b"a1 LOGIN bob pw\r\n")
    with pytest.raises(ValueError):
        core.login_failed("nope")
    with pytest.raises(ImapUsageError):
        core.take_buffered()
    with pytest.raises(ImapUsageError):
        core.tls_started()


def test_the_password_never_prints():
    core = make()
    (effect,) = core.receive_data(b"a1 LOGIN bob hunter2\r\n")
    assert "hunter2" not in repr(effect) and "hunter2" not in str(effect)
    assert effect.password.reveal() == "hunter2"
