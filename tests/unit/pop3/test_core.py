"""The POP3 pre-auth core as transcripts: each runs whole and split byte by byte."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay365.pop3.core import (
    MAX_LINE,
    Authenticate,
    Close,
    LoginFailure,
    Pop3Preauth,
    Pop3UsageError,
    SendToClient,
    StartSplice,
    StartTLS,
    State,
)


def make(**kw) -> Pop3Preauth:
    opts = dict(tls_active=False, starttls_available=True, allow_plaintext_auth=True)
    opts.update(kw)
    return Pop3Preauth(**opts)


def feed(core: Pop3Preauth, data: bytes, bytewise: bool) -> list:
    if not bytewise:
        return core.receive_data(data)
    out: list = []
    for i in range(len(data)):
        out += core.receive_data(data[i:i + 1])
    return out


def sent(effects) -> bytes:
    return b"".join(e.data for e in effects if isinstance(e, SendToClient))


def plain(user: str, pw: str, authz: str = "") -> bytes:
    return base64.b64encode(f"{authz}\0{user}\0{pw}".encode())


both = pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])


def test_greeting():
    assert make().greeting() == [SendToClient(b"+OK relay365 POP3 ready\r\n")]


@both
def test_capa_lists_rfc2449_capabilities(bytewise):
    out = sent(feed(make(), b"CAPA\r\n", bytewise))
    assert out == (b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
                   b"PIPELINING\r\nUSER\r\nSASL PLAIN\r\nSTLS\r\nIMPLEMENTATION relay365\r\n.\r\n")


def test_capa_without_starttls_and_without_plaintext_auth():
    caps = make(starttls_available=False, allow_plaintext_auth=False).capabilities()
    assert "STLS" not in caps and "USER" not in caps and "SASL PLAIN" not in caps
    assert "USER" in make(tls_active=True, allow_plaintext_auth=False).capabilities()


@both
def test_user_pass(bytewise):
    core = make()
    effects = feed(core, b"USER bob\r\nPASS s3cret word\r\n", bytewise)
    assert sent(effects) == b"+OK Send PASS\r\n"
    auth = [e for e in effects if isinstance(e, Authenticate)]
    assert len(auth) == 1 and auth[0].username == "bob" and auth[0].mechanism == "USER"
    assert auth[0].password.reveal() == "s3cret word"
    assert core.state is State.AWAITING_LOGIN
    assert core.login_succeeded() == [SendToClient(b"+OK Logged in\r\n"), StartSplice()]


@both
def test_pipelined_commands_after_pass_are_held_for_the_upstream(bytewise):
    core = make()
    feed(core, b"USER bob\r\nPASS pw\r\nSTAT\r\nLIST\r\n", bytewise)
    assert core.receive_data(b"UIDL\r\n") == []
    core.login_succeeded()
    assert core.take_buffered() == b"STAT\r\nLIST\r\nUIDL\r\n"


@both
def test_wrong_password_is_auth_code_and_retry_works(bytewise):
    core = make()
    feed(core, b"USER bob\r\nPASS wrong\r\nUSER bob\r\nPASS right\r\n", bytewise)
    effects = core.login_failed(LoginFailure.AUTH_FAILED)
    assert sent(effects) == b"-ERR [AUTH] Invalid credentials\r\n+OK Send PASS\r\n"
    assert [e.password.reveal() for e in effects if isinstance(e, Authenticate)] == ["right"]


def test_unavailable_is_sys_temp_and_limit_is_in_use():
    core = make()
    core.receive_data(b"USER bob\r\nPASS pw\r\n")
    assert sent(core.login_failed("unavailable")).startswith(b"-ERR [SYS/TEMP] ")
    core.receive_data(b"USER bob\r\nPASS pw\r\n")
    assert sent(core.login_failed("limit")).startswith(b"-ERR [IN-USE] ")


def test_three_wrong_passwords_close():
    core = make()
    for _ in range(3):
        core.receive_data(b"USER bob\r\nPASS wrong\r\n")
        effects = core.login_failed("auth_failed")
    assert effects[-1] == Close() and core.state is State.CLOSED


@both
def test_auth_plain_with_initial_response(bytewise):
    effects = feed(make(), b"AUTH PLAIN " + plain("bob", "pw") + b"\r\n", bytewise)
    assert effects == [Authenticate("bob", effects[0].password, "PLAIN")]
    assert effects[0].password.reveal() == "pw"


@both
def test_auth_plain_without_initial_response(bytewise):
    core = make()
    effects = feed(core, b"AUTH PLAIN\r\n" + plain("bob", "pw", "bob") + b"\r\n", bytewise)
    assert effects[0] == SendToClient(b"+ \r\n")
    assert isinstance(effects[1], Authenticate) and effects[1].username == "bob"


@both
def test_auth_plain_cancel_and_garbage(bytewise):
    out = sent(feed(make(), b"AUTH PLAIN\r\n*\r\nAUTH PLAIN !!!\r\n", bytewise))
    assert out == b"+ \r\n-ERR AUTH cancelled\r\n-ERR Invalid base64\r\n"
    out = sent(feed(make(), b"AUTH PLAIN " + plain("bob", "pw", "alice") + b"\r\n", bytewise))
    assert out.startswith(b"-ERR [AUTH] Proxy login")


@both
def test_apop_and_other_mechanisms_refused_clearly(bytewise):
    out = sent(feed(make(), b"APOP bob c4c9334bac560ecc979e58001b3e22fb\r\nAUTH CRAM-MD5\r\n"
                    b"AUTH XOAUTH2\r\nAUTH\r\n", bytewise))
    assert out == (b"-ERR APOP is not supported; use USER/PASS or AUTH PLAIN\r\n"
                   b"-ERR Unsupported authentication mechanism; use PLAIN\r\n"
                   b"-ERR Unsupported authentication mechanism; use PLAIN\r\n"
                   b"+OK\r\nPLAIN\r\n.\r\n")


@both
def test_commands_of_the_transaction_state_are_refused(bytewise):
    out = sent(feed(make(), b"STAT\r\nRETR 1\r\nPASS x\r\nNOOP\r\n", bytewise))
    assert out == (b"-ERR Command unknown or not valid before login\r\n" * 2
                   + b"-ERR USER first\r\n+OK\r\n")


def test_plaintext_auth_refused_without_tls():
    core = make(allow_plaintext_auth=False)
    out = sent(core.receive_data(b"USER bob\r\nAUTH PLAIN\r\n"))
    assert out == b"-ERR [AUTH] Authentication requires TLS (use STLS)\r\n" * 2


@both
def test_stls_then_handshake_then_login(bytewise):
    core = make(allow_plaintext_auth=False)
    effects = feed(core, b"STLS\r\n", bytewise)
    assert effects == [SendToClient(b"+OK Begin TLS negotiation\r\n"), StartTLS()]
    assert core.tls_started() == [] and core.tls_active
    assert "STLS" not in core.capabilities()
    assert isinstance(core.receive_data(b"USER a\r\nPASS b\r\n")[-1], Authenticate)


def test_stls_pipelined_plaintext_is_refused():
    core = make()
    effects = core.receive_data(b"STLS\r\nUSER evil\r\n")
    assert effects == [SendToClient(b"-ERR STLS must not be pipelined\r\n"), Close()]
    core = make()
    core.receive_data(b"STLS\r\n")
    assert core.receive_data(b"USER evil\r\n")[-1] == Close()


def test_stls_when_unavailable_or_active():
    assert sent(make(starttls_available=False).receive_data(b"STLS\r\n")) == \
        b"-ERR STLS is not available\r\n"
    assert sent(make(tls_active=True).receive_data(b"STLS\r\n")) == b"-ERR TLS is already active\r\n"


@both
def test_quit(bytewise):
    core = make()
    assert feed(core, b"QUIT\r\n", bytewise) == [
        SendToClient(b"+OK relay365 signing off\r\n"), Close()]
    assert core.receive_data(b"CAPA\r\n") == [] and core.timeout() == []


def test_line_too_long_closes():
    core = make()
    effects = core.receive_data(b"X" * (MAX_LINE + 1))
    assert effects == [SendToClient(b"-ERR Line too long\r\n"), Close()]


def test_too_many_bad_commands_close():
    effects = make().receive_data(b"BOGUS\r\n" * 10)
    assert effects[-1] == Close() and sent(effects).endswith(b"-ERR Too many invalid commands\r\n")


def test_timeout_and_usage_errors():
    core = make()
    assert core.timeout() == [SendToClient(b"-ERR Autologout; idle for too long\r\n"), Close()]
    core = make()
    with pytest.raises(Pop3UsageError):
        core.login_succeeded()
    core.receive_data(b"USER a\r\nPASS b\r\n")
    core.login_succeeded()
    with pytest.raises(Pop3UsageError):
        core.receive_data(b"x")
    with pytest.raises(Pop3UsageError):
        core.timeout()


def test_too_much_pipelined_data_closes():
    core = make()
    core.receive_data(b"USER a\r\nPASS b\r\n")
    assert core.receive_data(b"x" * (64 * 1024 + 1))[-1] == Close()


SESSION = (b"CAPA\r\nNOOP\r\nUSER bob\r\nPASS pw\r\nSTAT\r\n")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(SESSION)), max_size=10))
def test_any_split_gives_the_same_effects(cuts):
    whole = make().receive_data(SESSION)
    core, effects, last = make(), [], 0
    for cut in [*sorted(set(cuts)), len(SESSION)]:
        effects += core.receive_data(SESSION[last:cut])
        last = cut
    assert [type(e) for e in effects] == [type(e) for e in whole] and sent(effects) == sent(whole)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_only_give_replies_or_close(data):
    core = make()
    effects = core.receive_data(data)
    for e in effects:
        assert isinstance(e, (SendToClient, Close, Authenticate, StartTLS))
    for e in effects:
        if isinstance(e, SendToClient):
            assert e.data.startswith((b"+OK", b"-ERR", b"+ ")) and e.data.endswith(b"\r\n")
