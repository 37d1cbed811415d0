"""FakeIdP driven by real msal over real TLS, plus its Dovecot-facing endpoints via requests."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import msal
import pytest
import requests

from relay365.standins.fakeidp import DEFAULT_SCOPE, FakeIdP

SMTP_SEND = "https://outlook.office365.com/SMTP.Send"
IMAP = "https://outlook.office365.com/IMAP.AccessAsUser.All"


class CASession(requests.Session):
    """Trusts only `ca_file`: REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE would otherwise replace `verify`."""

    def __init__(self, ca_file) -> None:
        super().__init__()
        self.verify = str(ca_file)

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        settings["verify"] = self.verify
        return settings


@pytest.fixture
def idp(certs):
    with FakeIdP(certs.cert_file, certs.key_file) as idp:
        idp.add_client("conf-app", "s3cret", app_mailboxes=["shared@contoso.com"])
        idp.add_client("public-app")
        yield idp
        assert idp.errors == []


@pytest.fixture
def http(certs):
    with CASession(certs.ca_file) as session:
        yield session


def confidential(idp, http, secret="s3cret", client_id="conf-app"):
    return msal.ConfidentialClientApplication(
        client_id, client_credential=secret, authority=f"{idp.url}/contoso.onmicrosoft.com",
        instance_discovery=False, http_client=http)


def public(idp, http, client_id="public-app"):
    return msal.PublicClientApplication(client_id, authority=f"{idp.url}/common",
                                        instance_discovery=False, http_client=http)


def test_url_is_loopback_and_tls_is_verified(idp, http):
    assert idp.url.startswith("https://127.0.0.1:")
    with requests.Session() as untrusting:  # REQUESTS_CA_BUNDLE: the system store only
        with pytest.raises(requests.exceptions.SSLError):
            untrusting.get(f"{idp.url}/common/v2.0/.well-known/openid-configuration")


def test_refuses_to_bind_a_non_loopback_address(certs):
    with pytest.raises(ValueError):
        FakeIdP(certs.cert_file, certs.key_file, host="0.0.0.0")


def test_refresh_grant_rotates_and_records_the_account(idp, http):
    rt = idp.issue_refresh_token("bob@contoso.com")
    app = confidential(idp, http)

    result = app.acquire_token_by_refresh_token(rt, scopes=[SMTP_SEND])

    assert result["token_type"] == "Bearer"
    assert result["expires_in"] == 3600
    assert len(result["access_token"]) >= 1500
    assert result["refresh_token"] != rt
    claims = result["id_token_claims"]
    assert claims["preferred_username"] == "bob@contoso.com"
    assert claims["tid"] == idp.tenant_id and claims["aud"] == "conf-app"
    [account] = app.get_accounts()
    assert account["username"] == "bob@contoso.com"
    assert account["home_account_id"] == f"{claims['oid']}.{idp.tenant_id}"
    assert idp.valid_token(result["access_token"], "bob@contoso.com")
    assert idp.valid_token(result["access_token"], "BOB@contoso.com")
    assert not idp.valid_token(result["access_token"], "alice@contoso.com")
    assert [(r.path, r.grant_type, r.status) for r in idp.request_log] == [
        ("/contoso.onmicrosoft.com/v2.0/.well-known/openid-configuration", None, 200),
        ("/contoso.onmicrosoft.com/oauth2/v2.0/token", "refresh_token", 200),
    ]


def test_used_refresh_token_is_refused_and_the_new_one_works(idp, http):
    rt = idp.issue_refresh_token("bob@contoso.com")
    first = confidential(idp, http).acquire_token_by_refresh_token(rt, scopes=[SMTP_SEND])

    again = confidential(idp, http).acquire_token_by_refresh_token(rt, scopes=[SMTP_SEND])
    assert again["error"] == "invalid_grant"
    assert 70000 in again["error_codes"]
    assert again["error_description"].startswith("AADSTS70000:")
    assert {"timestamp", "trace_id", "correlation_id"} <= again.keys()

    renewed = confidential(idp, http).acquire_token_by_refresh_token(
        first["refresh_token"], scopes=[SMTP_SEND])
    assert "access_token" in renewed


def test_without_rotation_the_same_refresh_token_comes_back(idp, http):
    idp.rotate = False
    rt = idp.issue_refresh_token("bob@contoso.com")
    app = confidential(idp, http)
    assert app.acquire_token_by_refresh_token(rt, scopes=[SMTP_SEND])["refresh_token"] == rt
    assert app.acquire_token_by_refresh_token(rt, scopes=[IMAP])["refresh_token"] == rt


def test_public_client(idp, http):
    rt = idp.issue_refresh_token("carol@contoso.com", scopes=[IMAP, SMTP_SEND])
    app = public(idp, http)
    result = app.acquire_token_by_refresh_token(rt, scopes=[IMAP])
    assert idp.valid_token(result["access_token"], "carol@contoso.com")
    assert result["scope"] == IMAP
    assert [a["username"] for a in app.get_accounts()] == ["carol@contoso.com"]


def test_refresh_token_bound_to_scopes_refuses_others(idp, http):
    rt = idp.issue_refresh_token("carol@contoso.com", scopes=[IMAP])
    result = public(idp, http).acquire_token_by_refresh_token(rt, scopes=[SMTP_SEND])
    assert result["error"] == "invalid_grant" and result["error_codes"] == [65001]


def test_refresh_token_bound_to_a_client_refuses_others(idp, http):
    rt = idp.issue_refresh_token("carol@contoso.com", client_id="conf-app")
    result = public(idp, http).acquire_token_by_refresh_token(rt, scopes=[IMAP])
    assert result["error_codes"] == [70000]
    assert "access_token" in confidential(idp, http).acquire_token_by_refresh_token(
        rt, scopes=[IMAP])


@pytest.mark.parametrize("make_app, code", [
    (lambda idp, http: confidential(idp, http, client_id="nobody"), 700016),
    (lambda idp, http: confidential(idp, http, secret="wrong"), 7000215),
    (lambda idp, http: public(idp, http, client_id="conf-app"), 7000218),
])
def test_client_authentication_failures(idp, http, make_app, code):
    rt = idp.issue_refresh_token("bob@contoso.com")
    result = make_app(idp, http).acquire_token_by_refresh_token(rt, scopes=[SMTP_SEND])
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [code]
    # the refresh token was not spent by the refused request
    assert "access_token" in confidential(idp, http).acquire_token_by_refresh_token(
        rt, scopes=[SMTP_SEND])


def test_an_expired_secret_is_aadsts7000222_until_a_new_one_is_registered(idp, http):
    rt = idp.issue_refresh_token("bob@contoso.com")
    idp.add_client("conf-app", "s3cret", secret_expires_at=time.time() - 1)
    for call in (lambda app: app.acquire_token_by_refresh_token(rt, scopes=[SMTP_SEND]),
                 lambda app: app.acquire_token_for_client(scopes=[DEFAULT_SCOPE])):
        result = call(confidential(idp, http))
        assert (result["error"], result["error_codes"]) == ("invalid_client", [7000222])
        assert result["error_description"].startswith("AADSTS7000222: The provided client secret")
    idp.add_client("conf-app", "n3w-s3cret", secret_expires_at=time.time() + 86400)
    assert "access_token" in confidential(idp, http, secret="n3w-s3cret").acquire_token_by_refresh_token(
        rt, scopes=[SMTP_SEND])


def test_client_secret_basic_is_accepted(idp, http):
    basic = base64.b64encode(b"conf-app:s3cret").decode()
    response = http.post(f"{idp.url}/t/oauth2/v2.0/token",
                         data={"grant_type": "client_credentials", "scope": DEFAULT_SCOPE},
                         headers={"Authorization": f"Basic {basic}"})
    assert response.status_code == 200 and response.json()["token_type"] == "Bearer"


def test_client_credentials(idp, http):
    result = confidential(idp, http).acquire_token_for_client(scopes=[DEFAULT_SCOPE])

    token = result["access_token"]
    assert result["token_type"] == "Bearer" and "refresh_token" not in result
    assert idp.valid_token(token)
    assert idp.valid_token(token, "shared@contoso.com")
    assert not idp.valid_token(token, "bob@contoso.com")
    assert idp.grants == {"client_credentials": 1}


def test_client_credentials_need_a_default_scope(idp, http):
    result = confidential(idp, http).acquire_token_for_client(scopes=[SMTP_SEND])
    assert result["error"] == "invalid_scope" and result["error_codes"] == [1002012]


def test_injected_errors_reach_msal_and_msal_replays_a_400(idp, http):
    rt = idp.issue_refresh_token("bob@contoso.com")
    app = confidential(idp, http)
    idp.fail_next(1, error="invalid_grant", codes=[70008, 50173])

    result = app.acquire_token_by_refresh_token(rt, scopes=[SMTP_SEND])
    assert result["error"] == "invalid_grant"
    assert result["error_codes"] == [70008, 50173]
    assert result["error_description"].startswith("AADSTS70008:")
    assert idp.token_requests == 1

    # msal's http cache answers the identical request itself for 60 s: the IdP never sees it.
    again = app.acquire_token_by_refresh_token(rt, scopes=[SMTP_SEND])
    assert again["error_codes"] == [70008, 50173]
    assert idp.token_requests == 1


def test_retry_after_zero_stops_msal_replaying_the_error(idp, http):
    rt = idp.issue_refresh_token("bob@contoso.com")
    app = confidential(idp, http)
    idp.fail_next(1, error="temporarily_unavailable", codes=[90033], retry_after=0)

    assert app.acquire_token_by_refresh_token(rt, scopes=[SMTP_SEND])["error_codes"] == [90033]
    assert "access_token" in app.acquire_token_by_refresh_token(rt, scopes=[SMTP_SEND])
    assert idp.token_requests == 2


def test_injected_faults_are_consumed_in_order(idp, http):
    idp.fail_next(2, error="invalid_client", codes=[7000222], status=401,
                  description="The provided client secret keys are expired.")
    app = confidential(idp, http)
    results = [app.acquire_token_for_client(scopes=[DEFAULT_SCOPE]) for _ in range(3)]
    assert [r.get("error_codes") for r in results] == [[7000222], [7000222], None]
    assert "expired" in results[0]["error_description"]
    assert [r.status for r in idp.request_log[1:]] == [401, 401, 200]


def test_down_answers_503_and_msal_raises(idp, http):
    rt = idp.issue_refresh_token("bob@contoso.com")
    idp.down = True
    with pytest.raises(msal.exceptions.MsalServiceError, match="503"):
        confidential(idp, http).acquire_token_by_refresh_token(rt, scopes=[SMTP_SEND])
    assert idp.request_log[-1].status == 503
    idp.down = False
    assert "access_token" in confidential(idp, http).acquire_token_by_refresh_token(
        rt, scopes=[SMTP_SEND])


def test_down_503_body_is_entra_shaped(idp, http):
    idp.down, idp.retry_after = True, 7
    response = http.post(f"{idp.url}/t/oauth2/v2.0/token", data={"grant_type": "refresh_token"})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "7"
    assert response.json()["error"] == "temporarily_unavailable"
    assert response.json()["error_codes"] == [90033]


def test_down_reset_closes_without_an_answer(idp, http):
    rt = idp.issue_refresh_token("bob@contoso.com")
    idp.down = "reset"
    with pytest.raises(requests.exceptions.ConnectionError):
        confidential(idp, http).acquire_token_by_refresh_token(rt, scopes=[SMTP_SEND])
    assert idp.token_requests == 1
    assert idp.request_log[-1].status == 0


def test_delay_slows_answers(idp, http):
    idp.delay = 0.3
    started = time.monotonic()
    http.get(f"{idp.url}/x/v2.0/.well-known/openid-configuration")
    assert time.monotonic() - started >= 0.3


def test_counters_and_request_log_keep_no_secrets(idp, http):
    rt = idp.issue_refresh_token("bob@contoso.com")
    app = confidential(idp, http)
    token = app.acquire_token_by_refresh_token(rt, scopes=[SMTP_SEND])["access_token"]
    app.acquire_token_for_client(scopes=[DEFAULT_SCOPE])
    app.acquire_token_by_refresh_token("bogus", scopes=[SMTP_SEND])

    assert idp.token_requests == 3
    assert idp.grants == {"refresh_token": 2, "client_credentials": 1}
    logged = repr(idp.request_log)
    assert rt not in logged and token not in logged and "s3cret" not in logged

    idp.reset_counters()
    assert (idp.token_requests, idp.grants, idp.request_log) == (0, {}, [])


def test_unsupported_grant_and_unknown_paths(idp, http):
    response = http.post(f"{idp.url}/t/oauth2/v2.0/token", data={"grant_type": "password"})
    assert response.json()["error"] == "unsupported_grant_type"
    assert http.get(f"{idp.url}/t/oauth2/v2.0/nosuch").status_code == 404
    assert http.get(f"{idp.url}/t/oauth2/v2.0/token").status_code == 405


def test_token_lifetime_follows_the_clock(certs, http):
    now = [1_000_000.0]
    with FakeIdP(certs.cert_file, certs.key_file, access_token_lifetime=600,
                 token_length=2000, clock=lambda: now[0]) as idp:
        idp.add_client("c")
        rt = idp.issue_refresh_token("bob@contoso.com")
        result = public(idp, http, "c").acquire_token_by_refresh_token(rt, scopes=[SMTP_SEND])
        token = result["access_token"]
        assert len(token) == 2000 and result["expires_in"] == 600
        now[0] += 599
        assert idp.valid_token(token, "bob@contoso.com")
        now[0] += 1
        assert not idp.valid_token(token, "bob@contoso.com")


def test_expire_and_revoke(idp, http):
    app = confidential(idp, http)
    first = app.acquire_token_for_client(scopes=[DEFAULT_SCOPE])["access_token"]
    idp.expire_access_tokens()
    assert not idp.valid_token(first)
    second = confidential(idp, http).acquire_token_for_client(scopes=[DEFAULT_SCOPE])
    assert idp.valid_token(second["access_token"])
    idp.revoke_access_tokens()
    assert not idp.valid_token(second["access_token"])


def test_usable_from_a_running_event_loop(idp, http):
    rt = idp.issue_refresh_token("bob@contoso.com")

    async def main():
        app = confidential(idp, http)
        return await asyncio.to_thread(app.acquire_token_by_refresh_token, rt, [SMTP_SEND])

    assert "access_token" in asyncio.run(main())


# -- Dovecot's side: RFC 7662 introspection and the password grant -------------------------------

def tokens(idp, http):
    rt = idp.issue_refresh_token("bob@contoso.com")
    app = confidential(idp, http)
    user = app.acquire_token_by_refresh_token(rt, scopes=[IMAP])["access_token"]
    return user, app.acquire_token_for_client(scopes=[DEFAULT_SCOPE])["access_token"]


def test_introspection(idp, http):
    user, app_only = tokens(idp, http)

    def introspect(token):
        return http.post(f"{idp.url}/introspect", data={"token": token}).json()

    answer = introspect(user)
    assert answer["active"] is True
    assert answer["username"] == "bob@contoso.com"
    assert answer["scope"] == IMAP
    assert introspect(app_only) == {"active": False}
    assert introspect("garbage") == {"active": False}
    idp.expire_access_tokens()
    assert introspect(user) == {"active": False}
    assert idp.introspections == 4


@pytest.mark.parametrize("who, username, ok", [
    ("user", "bob@contoso.com", True),
    ("user", "alice@contoso.com", False),
    ("app", "shared@contoso.com", True),
    ("app", "bob@contoso.com", False),
    ("garbage", "bob@contoso.com", False),
])
def test_password_grant(idp, http, who, username, ok):
    user, app_only = tokens(idp, http)
    token = {"user": user, "app": app_only, "garbage": "x" * 1600}[who]
    response = http.post(f"{idp.url}/grant", data={
        "grant_type": "password", "username": username, "password": token,
        "client_id": "dovecot", "client_secret": "whatever", "scope": "x"})
    if ok:
        assert response.status_code == 200
        body = response.json()
        assert body["access_token"] == token and body["username"] == username
        assert body["active"] is True and body["token_type"] == "Bearer"
        assert 0 < body["expires_in"] <= 3600
    else:
        assert response.status_code == 400
        assert response.json() == {"error": "invalid_grant"}
    assert idp.password_grants == 1


def test_password_grant_refuses_revoked_tokens(idp, http):
    user, _ = tokens(idp, http)
    idp.revoke_access_tokens()
    response = http.post(f"{idp.url}/grant", data={
        "grant_type": "password", "username": "bob@contoso.com", "password": user})
    assert response.status_code == 400


def test_error_bodies_are_json_everywhere(idp, http):
    response = http.post(f"{idp.url}/t/oauth2/v2.0/token", data={})
    assert response.headers["Content-Type"].startswith("application/json")
    assert json.loads(response.text)["error"] == "unsupported_grant_type"


# -- the interactive flows, driven by real msal ---------------------------------------------------
# (msal warns that form_post is better than the query; relay365 auth uses the query on purpose)
query_mode = pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended")

SCOPES = ["https://outlook.office.com/IMAP.AccessAsUser.All", "https://outlook.office.com/SMTP.Send"]
REDIRECT = "http://localhost:8400/"


def browse(http, auth_uri: str) -> dict:
    """What the browser does: open the authorize URL, and return the redirect's parameters."""
    from urllib.parse import parse_qsl, urlsplit

    response = http.get(auth_uri, allow_redirects=False)
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(REDIRECT)
    return dict(parse_qsl(urlsplit(location).query))


@query_mode
def test_auth_code_flow_with_pkce_through_msal(idp, http):
    app = confidential(idp, http)
    flow = app.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT, login_hint="scanner@contoso.com",
                                       prompt="select_account")
    back = browse(http, flow["auth_uri"])
    assert back["state"] == flow["state"]
    seen = idp.authorize_requests[-1]
    assert seen["code_challenge_method"] == "S256" and seen["login_hint"] == "scanner@contoso.com"
    result = app.acquire_token_by_auth_code_flow(flow, back)
    assert "access_token" in result, result
    assert result["id_token_claims"]["preferred_username"] == "scanner@contoso.com"
    assert idp.valid_token(result["access_token"], "scanner@contoso.com")
    # the refresh token works, once (rotation)
    again = app.acquire_token_by_refresh_token(result["refresh_token"], SCOPES)
    assert "access_token" in again, again
    # the code was single-use
    reuse = app.acquire_token_by_auth_code_flow(flow, back)
    assert reuse.get("error") == "invalid_grant" and 54005 in reuse["error_codes"]


@query_mode
def test_auth_code_pkce_verifier_must_match(idp, http):
    app = confidential(idp, http)
    flow = app.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT, login_hint="a@contoso.com")
    back = browse(http, flow["auth_uri"])
    response = http.post(f"{idp.url}/contoso.onmicrosoft.com/oauth2/v2.0/token", data={
        "grant_type": "authorization_code", "client_id": "conf-app", "client_secret": "s3cret",
        "code": back["code"], "redirect_uri": REDIRECT, "code_verifier": "not-the-verifier"})
    assert response.status_code == 400 and 501481 in response.json()["error_codes"]


@query_mode
def test_auth_code_signs_in_whoever_sign_in_as_says(idp, http):
    idp.sign_in_as = "someone.else@contoso.com"
    app = confidential(idp, http)
    flow = app.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT, login_hint="scanner@contoso.com")
    result = app.acquire_token_by_auth_code_flow(flow, browse(http, flow["auth_uri"]))
    assert result["id_token_claims"]["preferred_username"] == "someone.else@contoso.com"


@query_mode
def test_authorize_error_comes_back_in_the_redirect(idp, http):
    idp.authorize_error = ("access_denied", 65004)
    app = confidential(idp, http)
    flow = app.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT)
    back = browse(http, flow["auth_uri"])
    assert back["error"] == "access_denied" and back["error_description"].startswith("AADSTS65004")
    assert back["state"] == flow["state"]


def test_device_code_flow_pending_then_approved(idp, http):
    import threading

    app = public(idp, http)
    flow = app.initiate_device_flow(scopes=SCOPES)
    assert flow["user_code"] in flow["message"] and flow["interval"] == 1
    threading.Timer(1.5, idp.approve_device, (flow["user_code"], "scanner@contoso.com")).start()
    result = app.acquire_token_by_device_flow(flow)
    assert result["id_token_claims"]["preferred_username"] == "scanner@contoso.com", result
    assert idp.grants["urn:ietf:params:oauth:grant-type:device_code"] >= 2  # polled while pending


def test_device_code_declined_and_expired(idp, http):
    app = public(idp, http)
    flow = app.initiate_device_flow(scopes=SCOPES)
    idp.decline_device(flow["user_code"])
    result = app.acquire_token_by_device_flow(flow)
    assert result["error"] == "authorization_declined"
    idp.device_code_lifetime = 0
    flow = app.initiate_device_flow(scopes=SCOPES)
    result = app.acquire_token_by_device_flow(flow)
    assert result["error"] == "expired_token" and 70019 in result["error_codes"], result


# -- the interactive endpoints, checked by hand where msal would hide the detail ----------------

NATIVE = "https://login.microsoftonline.com/common/oauth2/nativeclient"


def authorize(idp, http, **params):
    """GET /authorize with sensible defaults (a valid PKCE request), overridden by `params`;
    a None value leaves the parameter out. Returns the response, redirects not followed."""
    query = {"client_id": "conf-app", "response_type": "code", "redirect_uri": REDIRECT,
             "scope": " ".join(SCOPES), "state": "st4te", "code_challenge": "x" * 43,
             "code_challenge_method": "S256", "login_hint": "scanner@contoso.com", **params}
    return http.get(f"{idp.url}/contoso.onmicrosoft.com/oauth2/v2.0/authorize",
                    params={k: v for k, v in query.items() if v is not None}, allow_redirects=False)


def redirected(response) -> dict:
    from urllib.parse import parse_qsl, urlsplit

    assert response.status_code == 302, response.text
    return dict(parse_qsl(urlsplit(response.headers["Location"]).query))


def test_openid_configuration_names_the_interactive_endpoints(idp, http):
    doc = http.get(f"{idp.url}/contoso.onmicrosoft.com/v2.0/.well-known/openid-configuration").json()
    base = f"{idp.url}/contoso.onmicrosoft.com/oauth2/v2.0"
    assert doc["authorization_endpoint"] == f"{base}/authorize"
    assert doc["device_authorization_endpoint"] == f"{base}/devicecode"
    assert doc["token_endpoint"] == f"{base}/token"


def test_authorize_shows_an_error_page_for_an_unknown_app_or_redirect_uri(idp, http):
    idp.add_client("registered", redirect_uris=["http://localhost", NATIVE])
    unknown = authorize(idp, http, client_id="nobody")
    assert unknown.status_code == 400 and unknown.json()["error_codes"] == [700016]
    for uri in ("https://evil.test/", "http://localhost:8400/elsewhere", "https://localhost:8400/",
                NATIVE + "x", None):
        page = authorize(idp, http, client_id="registered", redirect_uri=uri)
        assert page.status_code == 400 and page.json()["error_codes"] == [50011], uri
        assert "Location" not in page.headers  # never sent to an address the app did not register
    # a registered loopback URI matches any port, as in Entra ID; others must match exactly
    assert "code" in redirected(authorize(idp, http, client_id="registered",
                                          redirect_uri="http://localhost:51234/"))
    assert "code" in redirected(authorize(idp, http, client_id="registered", redirect_uri=NATIVE))


@pytest.mark.parametrize("params, error, code", [
    ({"response_type": "token"}, "unsupported_response_type", 9002313),
    ({"scope": None}, "invalid_request", 900144),
    ({"code_challenge": None}, "invalid_request", 9002313),
    ({"code_challenge_method": "plain"}, "invalid_request", 9002313),
    ({"code_challenge_method": None}, "invalid_request", 9002313),
    ({"login_hint": None}, "login_required", 50058),
])
def test_authorize_sends_request_errors_back_to_the_app(idp, http, params, error, code):
    back = redirected(authorize(idp, http, **params))
    assert back["error"] == error and back["error_description"].startswith(f"AADSTS{code}:")
    assert back["state"] == "st4te" and "code" not in back


def test_authorize_without_state_redirects_without_state(idp, http):
    back = redirected(authorize(idp, http, state=None))
    assert "code" in back and "state" not in back


def test_authorize_fragment_response_mode(idp, http):
    from urllib.parse import parse_qsl, urlsplit

    location = authorize(idp, http, response_mode="fragment").headers["Location"]
    parts = urlsplit(location)
    assert parts.query == "" and dict(parse_qsl(parts.fragment))["state"] == "st4te"


def test_redirect_to_an_address_with_a_query_keeps_it(idp, http):
    location = authorize(idp, http, redirect_uri="http://localhost:8400/cb?x=1").headers["Location"]
    assert location.startswith("http://localhost:8400/cb?x=1&code=")


def pkce() -> tuple[str, str]:
    import hashlib
    import secrets

    verifier = secrets.token_urlsafe(43)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    return verifier, challenge.decode()


def redeem(idp, http, issued, verifier, **override):
    form = {"grant_type": "authorization_code", "client_id": "conf-app", "client_secret": "s3cret",
            "code": issued, "redirect_uri": REDIRECT, "code_verifier": verifier,
            "scope": " ".join(SCOPES), **override}
    return http.post(f"{idp.url}/contoso.onmicrosoft.com/oauth2/v2.0/token", data=form)


@pytest.mark.parametrize("override, code", [
    ({"redirect_uri": "http://localhost:9999/"}, 50011),
    ({"code_verifier": ""}, 501481),
    ({"client_id": "public-app", "client_secret": None}, 54005),  # a code is bound to its app
    ({"code": "made-up"}, 54005),
])
def test_auth_code_grant_refuses(idp, http, override, code):
    verifier, challenge = pkce()
    issued = redirected(authorize(idp, http, code_challenge=challenge))["code"]
    response = redeem(idp, http, issued, verifier, **override)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_grant" and response.json()["error_codes"] == [code]


def test_auth_code_is_single_use_even_after_a_failed_try(idp, http):
    verifier, challenge = pkce()
    issued = redirected(authorize(idp, http, code_challenge=challenge))["code"]
    assert redeem(idp, http, issued, "wrong").status_code == 400
    assert redeem(idp, http, issued, verifier).json()["error_codes"] == [54005]


def test_auth_code_expires(certs, http):
    now = [1_000_000.0]
    with FakeIdP(certs.cert_file, certs.key_file, clock=lambda: now[0]) as idp:
        idp.add_client("conf-app", "s3cret")
        idp.auth_code_lifetime = 60
        verifier, challenge = pkce()
        first = redirected(authorize(idp, http, code_challenge=challenge))["code"]
        second = redirected(authorize(idp, http, code_challenge=challenge))["code"]
        now[0] += 59
        assert redeem(idp, http, first, verifier).status_code == 200
        now[0] += 1
        response = redeem(idp, http, second, verifier)
        assert response.json()["error"] == "invalid_grant" and response.json()["error_codes"] == [70008]


def claims_of(id_token: str) -> dict:
    _header, payload, _signature = id_token.split(".")
    pad = "=" * (-len(payload) % 4)
    return json.loads(base64.urlsafe_b64decode(payload + pad))


def test_auth_code_answer_carries_the_user_and_the_nonce(idp, http):
    verifier, challenge = pkce()
    issued = redirected(authorize(idp, http, code_challenge=challenge, nonce="n0nce"))["code"]
    body = redeem(idp, http, issued, verifier, client_info="1").json()
    assert {"access_token", "refresh_token", "id_token", "client_info", "expires_in"} <= set(body)
    claims = claims_of(body["id_token"])
    assert claims["preferred_username"] == "scanner@contoso.com" and claims["nonce"] == "n0nce"
    assert claims["aud"] == "conf-app" and claims["tid"] == idp.tenant_id
    assert claims["iss"] == f"{idp.url}/{idp.tenant_id}/v2.0" and claims["oid"]
    info = json.loads(base64.urlsafe_b64decode(body["client_info"] + "=="))
    assert info == {"uid": claims["oid"], "utid": idp.tenant_id}
    assert idp.valid_token(body["access_token"], "scanner@contoso.com")
    assert not idp.valid_token(body["access_token"], "other@contoso.com")
    # the refresh token belongs to the app that signed in, and works
    rt = body["refresh_token"]
    other = public(idp, http).acquire_token_by_refresh_token(rt, SCOPES)
    assert other["error"] == "invalid_grant"
    assert "access_token" in confidential(idp, http).acquire_token_by_refresh_token(rt, SCOPES)


def devicecode(idp, http, client_id="public-app"):
    return http.post(f"{idp.url}/common/oauth2/v2.0/devicecode",
                     data={"client_id": client_id, "scope": " ".join(SCOPES) + " openid"})


def poll(idp, http, device_code, client_id="public-app"):
    return http.post(f"{idp.url}/common/oauth2/v2.0/token", data={
        "grant_type": "urn:ietf:params:oauth:grant-type:device_code", "client_id": client_id,
        "device_code": device_code})


def test_device_code_answer_and_pending_poll(idp, http):
    flow = devicecode(idp, http).json()
    assert set(flow) >= {"user_code", "device_code", "verification_uri", "interval", "expires_in",
                         "message"}
    assert flow["expires_in"] == 900 and flow["user_code"] in flow["message"]
    for _ in range(2):
        pending = poll(idp, http, flow["device_code"])
        assert pending.status_code == 400 and pending.json()["error"] == "authorization_pending"
        assert pending.json()["error_codes"] == [70016]
    idp.approve_device(flow["user_code"], as_user="other@contoso.com")
    body = poll(idp, http, flow["device_code"]).json()
    assert claims_of(body["id_token"])["preferred_username"] == "other@contoso.com"
    assert idp.valid_token(body["access_token"], "other@contoso.com")
    # redeemed once: the device code is gone
    assert poll(idp, http, flow["device_code"]).json()["error"] == "invalid_grant"


def test_device_code_refuses_unknown_apps_and_codes(idp, http):
    assert devicecode(idp, http, client_id="nobody").json()["error_codes"] == [700016]
    flow = devicecode(idp, http).json()
    assert poll(idp, http, flow["device_code"], client_id="conf-app").status_code in (400, 401)
    with pytest.raises(KeyError):
        idp.approve_device("NOSUCHCODE", as_user="a@contoso.com")
    with pytest.raises(KeyError):
        idp.decline_device("NOSUCHCODE")


def test_reset_counters_forgets_authorize_requests(idp, http):
    authorize(idp, http)
    assert len(idp.authorize_requests) == 1 and idp.request_log[-1].status == 302
    idp.reset_counters()
    assert idp.authorize_requests == []
