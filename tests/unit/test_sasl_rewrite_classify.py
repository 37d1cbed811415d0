"""Pure parts: SASL decoding, sender rewriting, AADSTS classification, secrets, password hashes."""

from __future__ import annotations

import base64
import json
import logging
import pickle

import pytest
from hypothesis import given, settings, strategies as st

from relay.errors import TokenError
from relay.passwords import check_hash_format, hash_password, verify_password
from relay.sasl import (SaslError, b64decode_strict, decode_plain, decode_xoauth2_error,
                        xoauth2_initial_response)
from relay.secret import Secret
from relay.smtp.rewrite import rewrite_from
from relay.tokens.classify import classify, first_code, network_error

# -- SASL ---------------------------------------------------------------------------------------


def test_plain_with_and_without_authzid():
    assert decode_plain(b"\0scanner\0pw").username == "scanner"
    creds = decode_plain(b"scanner\0scanner\0p\xc3\xa4ss")
    assert creds.password.reveal() == "päss" and creds.authzid == "scanner"


@pytest.mark.parametrize("raw, why", [
    (b"scanner\0pw", "three NUL-separated parts"),
    (b"\0\0pw", "empty user name"),
    (b"boss\0scanner\0pw", "proxy login is not supported"),
    (b"\0scan\xffner\0pw", "not UTF-8"),
])
def test_plain_refusals(raw, why):
    with pytest.raises(SaslError, match=why):
        decode_plain(raw)


def test_base64_is_strict_and_equals_sign_is_empty():
    assert b64decode_strict("=") == b""
    assert b64decode_strict(base64.b64encode(b"\0u\0p")) == b"\0u\0p"
    with pytest.raises(SaslError):
        b64decode_strict("not base64!")


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_credentials_or_a_sasl_error(raw):
    try:
        creds = decode_plain(raw)
    except SaslError:
        return
    assert creds.username and b"\0" not in creds.username.encode()


def test_xoauth2_initial_response_is_exchanges_format():
    token = Secret("eyJ0eXAi.token")
    raw = base64.b64decode(xoauth2_initial_response("scanner@contoso.com", token))
    assert raw == b"user=scanner@contoso.com\x01auth=Bearer eyJ0eXAi.token\x01\x01"


def test_xoauth2_error_challenge():
    challenge = base64.b64encode(json.dumps({"status": "401", "schemes": "bearer"}).encode())
    assert decode_xoauth2_error(challenge)["status"] == "401"
    assert decode_xoauth2_error("garbage") == {}
    assert decode_xoauth2_error(base64.b64encode(b"[1]")) == {}


# -- sender rewrite -----------------------------------------------------------------------------

def test_rewrite_keeps_display_name_and_adds_reply_to():
    msg = b"Subject: s\r\nFrom: Printer 3 <printer3@lan.local>\r\nTo: b@x\r\n\r\nbody\r\n"
    out = rewrite_from(msg, "scanner@contoso.com")
    assert out == (b"Subject: s\r\nFrom: Printer 3 <scanner@contoso.com>\r\n"
                   b"Reply-To: Printer 3 <printer3@lan.local>\r\nTo: b@x\r\n\r\nbody\r\n")


def test_rewrite_keeps_an_existing_reply_to_and_folded_from():
    msg = b"From: Long Name\r\n <dev@lan>\r\nReply-To: ops@lan\r\n\r\nx"
    out = rewrite_from(msg, "m@c.com")
    assert out.count(b"Reply-To") == 1 and b"From: Long Name <m@c.com>\r\n" in out
    assert b"dev@lan" not in out


def test_rewrite_without_from_adds_one_and_the_body_is_untouched():
    body = b"\r\n\r\n--b\r\nContent-Type: application/pdf\r\n\r\n%PDF\x00\xff\r\n"
    out = rewrite_from(b"To: a@b\r\n" + body, "m@c.com")
    assert out.startswith(b"From: m@c.com\r\n") and out.endswith(body)


def test_rewrite_same_address_adds_no_reply_to_and_bare_lf_stays_lf():
    out = rewrite_from(b"From: m@c.com\nSubject: x\n\nbody\n", "M@C.com")
    assert out == b"From: M@C.com\nSubject: x\n\nbody\n"


@settings(max_examples=200)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_rewrite_never_touches_the_body(headers, body):
    headers = headers.replace(b"\r", b"").replace(b"\n\n", b"\n").strip(b"\n")
    msg = headers + b"\r\n\r\n" + body if headers else b"\r\n" + body
    out = rewrite_from(msg, "m@c.com")
    assert out.endswith(body)
    assert out.lower().count(b"\nfrom: ") + out.lower().startswith(b"from: ") >= 1


# -- AADSTS classification ----------------------------------------------------------------------

def result(error: str, code: int) -> dict:
    return {"error": error, "error_codes": [code],
            "error_description": f"AADSTS{code}: something. Trace ID: x\r\nCorrelation ID: y"}


@pytest.mark.parametrize("error, code, transient, needs_auth, says", [
    ("invalid_grant", 70008, False, True, "relay365 auth MAILBOX"),
    ("invalid_grant", 700082, False, True, "inactivity"),
    ("invalid_grant", 50173, False, True, "password change"),
    ("invalid_grant", 70043, False, True, "Conditional Access"),
    ("interaction_required", 50076, False, True, "multi-factor"),
    ("invalid_grant", 65001, False, True, "admin consent"),
    ("invalid_client", 7000215, False, False, "secret's Value"),
    ("invalid_client", 7000222, False, False, "expired"),
    ("invalid_client", 700025, False, False, "public client"),
    ("temporarily_unavailable", 90033, True, False, "retries"),
    ("invalid_request", 90024, True, False, "retries"),
    ("invalid_grant", 50033, True, False, "retries"),
])
def test_classification_names_the_action(error, code, transient, needs_auth, says):
    e = classify("scanner@contoso.com", result(error, code))
    assert (e.code, e.transient, e.needs_auth) == (code, transient, needs_auth)
    assert says in e.action
    assert "\n" not in e.description and e.description.startswith(f"AADSTS{code}")
    assert str(e).startswith(f"scanner@contoso.com: {error} (AADSTS{code}): ")


def test_status_5xx_and_429_are_transient_and_code_from_description():
    assert classify("a", {"error": "invalid_request"}, status=503).transient
    assert classify("a", {"error": "invalid_request"}, status=429).transient
    assert first_code({"error_description": "AADSTS70000: gone"}) == 70000
    assert first_code({}) is None


def test_network_error_is_transient_and_names_what_to_check():
    e = network_error("a@b", ConnectionRefusedError(111, "refused"))
    assert e.transient and e.code == "network" and "DNS" in e.action
    assert isinstance(e, TokenError)


# -- secrets and password hashes ----------------------------------------------------------------

def test_secret_never_shows(caplog):
    s = Secret("hunter2-client-secret")
    for text in (str(s), repr(s), f"{s}", f"{s!r}", "%s" % s, str([s]), str({"k": s})):
        assert "hunter2" not in text
    logging.getLogger("t").warning("value %s", s)
    assert "hunter2" not in caplog.text
    with pytest.raises(Exception):
        pickle.dumps(s)
    assert s.reveal() == "hunter2-client-secret" and s == Secret("hunter2-client-secret")


def test_password_hashes():
    h = hash_password("correct horse", ln=10)
    assert h.startswith("$scrypt$ln=10,r=8,p=1$") and check_hash_format(h) is None
    assert verify_password("correct horse", h) and not verify_password("correct hors", h)
    assert hash_password("x", ln=10) != hash_password("x", ln=10)  # salted
    assert "hash-password" in check_hash_format("plaintext-password")
    assert "out of range" in check_hash_format(h.replace("ln=10", "ln=30"))
