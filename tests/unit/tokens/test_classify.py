"""msal's error dicts -> TokenError: transient (retry) or what the operator must do."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay365.errors import RelayError, TokenError
from relay365.tokens.classify import (
    ACTIONS,
    REAUTH,
    TRANSIENT_CODES,
    TRANSIENT_ERRORS,
    classify,
    first_code,
    network_error,
    service_error,
)

RETRY = "the identity platform is unavailable or throttling; relay365 retries with backoff"
GENERIC = "check the app registration and the account settings; the description names the cause"


def result(error: str, code: int) -> dict:
    """What msal returns: the code in error_codes and in a multi-line description."""
    return {"error": error, "error_codes": [code],
            "error_description": f"AADSTS{code}: something. Trace ID: x\r\nCorrelation ID: y\r\n"
                                 f"Timestamp: 2024-01-01"}


@pytest.mark.parametrize("error, code, transient, needs_auth, says", [
    ("invalid_grant", 70000, False, True, "invalid, revoked or already used"),
    ("invalid_grant", 70008, False, True, "relay365 auth MAILBOX"),
    ("invalid_grant", 700082, False, True, "inactivity"),
    ("invalid_grant", 50173, False, True, "password change"),
    ("invalid_grant", 70043, False, True, "Conditional Access"),
    ("interaction_required", 50076, False, True, "multi-factor"),
    ("invalid_grant", 65001, False, True, "admin consent"),
    ("invalid_grant", 53003, False, True, "Conditional Access policy"),
    ("invalid_client", 7000215, False, False, "secret's Value"),
    ("invalid_client", 7000222, False, False, "expired"),
    ("invalid_client", 700025, False, False, "public client"),
    ("invalid_request", 90002, False, False, "tenant was not found"),
    ("unauthorized_client", 700016, False, False, "client_id"),
    ("temporarily_unavailable", 90033, True, False, "retries"),
    ("invalid_request", 90024, True, False, "retries"),
    ("invalid_grant", 50033, True, False, "retries"),
])
def test_the_issues_codes(error, code, transient, needs_auth, says):
    e = classify("scanner@contoso.com", result(error, code))
    assert (e.error, e.code, e.transient, e.needs_auth) == (error, code, transient, needs_auth)
    assert says in e.action
    assert e.description == f"AADSTS{code}: something. Trace ID: x"  # first line only
    assert str(e) == f"scanner@contoso.com: {error} (AADSTS{code}): {e.action}"


@pytest.mark.parametrize("code", sorted(ACTIONS))
def test_every_known_code_has_its_own_action(code):
    e = classify("a@b", result("invalid_grant", code))
    assert (e.code, e.transient, e.action) == (code, False, ACTIONS[code])


def test_actions_are_distinct_and_reauth_says_how():
    assert REAUTH == "re-authorise the mailbox (relay365 auth MAILBOX -c CONFIG) to get a new refresh token"
    assert ACTIONS[70008] == "the refresh token expired (90 days unused, or revoked); " + REAUTH
    assert ACTIONS[50076].endswith(REAUTH + " interactively")
    assert not TRANSIENT_CODES & set(ACTIONS)


@pytest.mark.parametrize("code", sorted(TRANSIENT_CODES))
def test_transient_codes_retry_whatever_the_error(code):
    e = classify("a@b", result("invalid_grant", code))
    assert (e.transient, e.needs_auth, e.action) == (True, False, RETRY)


@pytest.mark.parametrize("error", sorted(TRANSIENT_ERRORS))
def test_transient_errors_without_a_code(error):
    e = classify("a@b", {"error": error})
    assert (e.code, e.transient, e.action, e.description) == (None, True, RETRY, "")


@pytest.mark.parametrize("status, transient", [(500, True), (502, True), (503, True), (429, True),
                                               (400, False), (401, False), (None, False)])
def test_http_status(status, transient):
    e = classify("a@b", {"error": "invalid_request"}, status=status)
    assert e.transient is transient and e.action == (RETRY if transient else GENERIC)


@pytest.mark.parametrize("error, action, needs_auth", [
    ("invalid_grant", REAUTH, True),
    ("interaction_required", REAUTH, True),
    ("consent_required", REAUTH, True),
    ("login_required", REAUTH, True),
    ("invalid_client", GENERIC, False),
    ("unsupported_grant_type", GENERIC, False),
])
def test_an_unknown_code_is_operator_work_not_a_retry(error, action, needs_auth):
    e = classify("a@b", result(error, 9999999))
    assert (e.transient, e.action, e.needs_auth) == (False, action, needs_auth)


@pytest.mark.parametrize("res, code", [
    ({"error_codes": [70008, 50173]}, 70008),
    ({"error_codes": [], "error_description": "AADSTS700082: expired"}, 700082),
    ({"error_codes": ["70000"], "error_description": "AADSTS70000: gone"}, 70000),
    ({"error_codes": 5, "error_description": "AADSTS50173: revoked"}, 50173),
    ({"error_codes": {"0": 70000}}, None),
    ({"error_codes": [True]}, None),
    ({"error_description": "see AADSTS70000"}, None),  # only a leading code counts
    ({}, None),
])
def test_first_code(res, code):
    assert first_code(res) == code


def test_missing_fields():
    e = classify("a@b", {})
    assert (e.error, e.code, e.transient, e.action, e.description) == (
        "unknown_error", None, False, GENERIC, "")
    assert str(e) == f"a@b: unknown_error (?): {GENERIC}"


def test_the_description_is_one_short_line():
    e = classify("a@b", {"error": "invalid_grant",
                         "error_description": "AADSTS70000: " + "x" * 1000 + "\nmore"})
    assert e.description == ("AADSTS70000: " + "x" * 1000)[:300]


def test_network_and_service_errors_are_transient():
    e = network_error("a@b", ConnectionRefusedError(111, "Connection refused"))
    assert isinstance(e, TokenError) and isinstance(e, RelayError)
    assert (e.error, e.code, e.transient, e.needs_auth) == ("network", "network", True, False)
    assert e.action == ("cannot reach the token endpoint; check DNS, proxy and firewall; relay365 retries "
                        "with backoff")
    assert e.description == "ConnectionRefusedError: [Errno 111] Connection refused"
    assert str(e) == f"a@b: network (network): {e.action}"
    s = service_error("a@b", ValueError("y" * 500))
    assert (s.error, s.code, s.transient) == ("server_error", "server_error", True)
    assert s.description == "ValueError: " + "y" * 200
    assert s.action == "the identity platform answered with a server error; relay365 retries with backoff"


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                     | st.text(max_size=20),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                     max_leaves=8)


@settings(max_examples=300)
@given(st.fixed_dictionaries({}, optional={"error": _JSON, "error_codes": _JSON, "error_description": _JSON,
                                           "suberror": _JSON}),
       st.none() | st.integers(100, 599))
def test_any_response_classifies(res, status):
    e = classify("a@b", res, status=status)
    assert isinstance(e, TokenError) and e.action and "\n" not in e.description
    assert e.code is None or type(e.code) is int
