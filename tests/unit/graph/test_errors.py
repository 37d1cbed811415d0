"""Graph answers map to what the device should hear."""
import json

import pytest

from relay365.graph.errors import DEFAULT_RETRY_AFTER, MAX_RETRY_AFTER, from_response, retry_after, timeout


def body(code, message="m"):
    return json.dumps({"error": {"code": code, "message": message}}).encode()


@pytest.mark.parametrize("status, code, smtp, transient", [
    (429, "ApplicationThrottled", 451, True),
    (503, "ServiceUnavailable", 451, True),
    (504, "GatewayTimeout", 451, True),
    (401, "InvalidAuthenticationToken", 451, True),
    (403, "ErrorAccessDenied", 550, False),
    (403, "ErrorSendAsDenied", 550, False),
    (413, "RequestEntityTooLarge", 552, False),
    (400, "ErrorMessageSizeExceeded", 552, False),
    (400, "ErrorInvalidRecipients", 550, False),  # 5.1.1, as Exchange says of a bad address
    (500, "InternalServerError", 451, True),
])
def test_status_and_code_map_to_reply(status, code, smtp, transient):
    e = from_response(status, {"request-id": "rid-1"}, body(code))
    assert (e.code, e.transient, e.graph_code, e.request_id) == (smtp, transient, code, "rid-1")
    assert e.text[0] == str(smtp)[0]
    assert "rid-1" in str(e)


def test_size_refusal_is_552_5_3_4():
    assert from_response(413, {}, b"").text.startswith("5.3.4")


def test_403_carries_the_operator_action():
    assert "Mail.Send" in from_response(403, {}, body("ErrorAccessDenied")).action
    assert "Send As" in from_response(403, {}, body("ErrorSendAsDenied")).action


def test_401_asks_for_a_new_token():
    assert from_response(401, {}, body("InvalidAuthenticationToken")).needs_new_token
    assert not from_response(429, {}, b"").needs_new_token


def test_retry_after_is_honoured_and_defaulted():
    assert from_response(429, {"retry-after": "7"}, b"").retry_after == 7.0
    assert from_response(503, {}, b"").retry_after == DEFAULT_RETRY_AFTER
    assert from_response(504, {}, b"").retry_after is None


@pytest.mark.parametrize("value, seconds", [
    (None, None), ("3", 3.0), (" 2.5 ", 2.5), ("soon", None), ("-1", None), ("nan", None),
    ("999999", MAX_RETRY_AFTER),
])
def test_retry_after_parsing(value, seconds):
    assert retry_after(value) == seconds


@pytest.mark.parametrize("raw", [b"", b"not json", b"[]", b'{"error": "x"}', b"\xff"])
def test_non_json_errors_still_map(raw):
    e = from_response(502, {}, raw)
    assert e.graph_code == "" and e.transient


def test_timeout_is_transient():
    e = timeout("sendMail")
    assert e.transient and e.code == 451
