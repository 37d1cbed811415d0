"""SASL codecs: PLAIN and LOGIN from local clients, XOAUTH2 to Office 365, its error challenge."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay365.sasl import (
    Credentials,
    SaslError,
    b64decode_strict,
    decode_plain,
    decode_text,
    decode_xoauth2_error,
    xoauth2_initial_response,
)
from relay365.secret import Secret

# -- base64 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, raw", [
    ("=", b""),  # RFC 4954: an empty initial response
    ("", b""),
    ("AHUAcA==", b"\0u\0p"),
    (b"AHUAcA==", b"\0u\0p"),
    ("  AHUAcA==\r\n", b"\0u\0p"),  # the line ending a client sends along
])
def test_base64(text, raw):
    assert b64decode_strict(text) == raw


@pytest.mark.parametrize("text", ["not base64!", "AHUAcA", "AHU AcA==", "AHUA\ncA==", "ÄHUAcA==", "====",
                                  b"\xff\xfe"])
def test_base64_is_strict(text):
    with pytest.raises(SaslError) as err:
        b64decode_strict(text)
    assert str(err.value) == "not valid base64"


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=80), st.text(max_size=80)))
def test_any_input_gives_bytes_or_a_sasl_error(data):
    try:
        assert isinstance(b64decode_strict(data), bytes)
    except SaslError as exc:
        assert str(exc) == "not valid base64"


@given(st.binary(max_size=200))
def test_base64_round_trip(raw):
    assert b64decode_strict(base64.b64encode(raw)) == raw


# -- PLAIN (RFC 4616) ----------------------------------------------------------------------------

@pytest.mark.parametrize("raw, user, password, authzid", [
    (b"\0scanner\0pw", "scanner", "pw", ""),
    (b"scanner\0scanner\0p\xc3\xa4ss", "scanner", "päss", "scanner"),
    (b"\0scanner\0", "scanner", "", ""),  # an empty password is the verifier's business
    (b"\0a b@c\0pw with spaces \x01", "a b@c", "pw with spaces \x01", ""),
])
def test_plain(raw, user, password, authzid):
    creds = decode_plain(raw)
    assert (creds.username, creds.password.reveal(), creds.authzid) == (user, password, authzid)
    assert isinstance(creds.password, Secret)


@pytest.mark.parametrize("raw, why", [
    (b"", "PLAIN message must have three NUL-separated parts"),
    (b"scanner\0pw", "PLAIN message must have three NUL-separated parts"),
    (b"\0scanner\0p\0w", "PLAIN message must have three NUL-separated parts"),
    (b"\0\0pw", "empty user name"),
    (b"boss\0scanner\0pw", "authorization identity differs from the user (proxy login is not supported)"),
    (b"\0scan\xffner\0pw", "PLAIN message is not UTF-8"),
    (b"\0scanner\0p\xc3", "PLAIN message is not UTF-8"),
])
def test_plain_refusals(raw, why):
    with pytest.raises(SaslError) as err:
        decode_plain(raw)
    assert str(err.value) == why


def test_a_refusal_never_carries_the_password():
    for raw in (b"\0scanner\0hunter2\0", b"boss\0scanner\0hunter2", b"\0\xff\0hunter2"):
        with pytest.raises(SaslError) as err:
            decode_plain(raw)
        assert "hunter2" not in str(err.value) and "hunter2" not in repr(err.value)


_NAME = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=1,
                max_size=40)


@settings(max_examples=200)
@given(_NAME, _NAME | st.just(""), st.booleans())
def test_plain_round_trip(user, password, with_authzid):
    raw = f"{user if with_authzid else ''}\0{user}\0{password}".encode()
    creds = decode_plain(b64decode_strict(base64.b64encode(raw).decode()))
    assert creds == Credentials(user, Secret(password), user if with_authzid else "")


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_credentials_or_a_sasl_error(raw):
    try:
        creds = decode_plain(raw)
    except SaslError:
        return
    assert raw.count(b"\0") == 2 and creds.username and raw.split(b"\0")[1] == creds.username.encode()


# -- LOGIN ---------------------------------------------------------------------------------------

def test_login_steps():
    assert decode_text(b64decode_strict(base64.b64encode("scänner".encode())), "user name") == "scänner"
    with pytest.raises(SaslError) as err:
        decode_text(b"\xffpw", "password")
    assert str(err.value) == "password is not UTF-8"


# -- XOAUTH2 -------------------------------------------------------------------------------------

def test_xoauth2_initial_response_is_exchanges_format():
    token = Secret("eyJ0eXAi.token")
    raw = base64.b64decode(xoauth2_initial_response("scanner@contoso.com", token))
    assert raw == b"user=scanner@contoso.com\x01auth=Bearer eyJ0eXAi.token\x01\x01"


@given(st.text(st.characters(blacklist_characters="\x01", blacklist_categories=("Cs",)), max_size=60),
       st.text(st.characters(whitelist_categories=("L", "N", "P")), min_size=1, max_size=200))
def test_xoauth2_round_trip(mailbox, token):
    encoded = xoauth2_initial_response(mailbox, Secret(token))
    assert encoded.isascii()
    user, auth, *empty = b64decode_strict(encoded).decode().split("\x01")
    assert (user, auth, empty) == (f"user={mailbox}", f"auth=Bearer {token}", ["", ""])


def challenge(obj) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


@pytest.mark.parametrize("data, expected", [
    (challenge({"status": "401", "schemes": "bearer", "scope": "https://outlook.office.com/"}),
     {"status": "401", "schemes": "bearer", "scope": "https://outlook.office.com/"}),
    (challenge({"status": "401"}).encode(), {"status": "401"}),
    (challenge([1]), {}),
    (challenge("401"), {}),
    ("garbage", {}),
    ("=", {}),
    (base64.b64encode(b'{"status": "\xff"}').decode(), {}),
    (base64.b64encode(b"[" * 100_000).decode(), {}),  # nested too deep for json
])
def test_xoauth2_error_challenge(data, expected):
    assert decode_xoauth2_error(data) == expected


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=120), st.text(max_size=120),
                 st.binary(max_size=120).map(base64.b64encode),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                              lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                                 max_size=3)).map(challenge)))
def test_any_challenge_gives_a_dict(data):
    assert isinstance(decode_xoauth2_error(data), dict)
