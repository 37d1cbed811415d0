"""Users whose sign-in name is not their only address, in the stand-ins: the identity platform's
`add_user` and admin consent, and Graph's `GET /me` about them (which `relay365 auth` asks)."""

from __future__ import annotations

import pytest
import requests

from relay365.standins.fakeidp import FakeIdP

UPN, ALIAS = "j.smith@contoso.com", "scanner@contoso.com"
SMTP_SEND = "https://outlook.office365.com/SMTP.Send"


@pytest.fixture
def idp(certs):
    with FakeIdP(certs.cert_file, certs.key_file) as idp:
        idp.add_client("conf-app", "s3cret", app_mailboxes=["shared@contoso.com"])
        yield idp
        assert idp.errors == []


@pytest.fixture
def http(certs):
    with requests.Session() as session:
        session.verify, session.trust_env = str(certs.ca_file), False
        yield session


def redeem(idp, http, rt: str, scope: str) -> dict:
    return http.post(f"{idp.url}/contoso.com/oauth2/v2.0/token", data={
        "grant_type": "refresh_token", "client_id": "conf-app", "client_secret": "s3cret",
        "refresh_token": rt, "scope": scope}).json()


def me(graph, http, token: str, query: str = "?$select=userPrincipalName,mail,proxyAddresses"):
    return http.get(f"{graph.base_url}/me{query}", headers={"Authorization": f"Bearer {token}"})


def test_a_users_token_opens_its_aliases_and_nobody_elses(idp, http):
    idp.add_user(UPN, addresses=[ALIAS])
    token = redeem(idp, http, idp.issue_refresh_token(UPN), SMTP_SEND)["access_token"]
    assert idp.valid_token(token, UPN) and idp.valid_token(token, ALIAS.upper())
    assert not idp.valid_token(token, "other@contoso.com")
    stranger = redeem(idp, http, idp.issue_refresh_token("intern@contoso.com"), SMTP_SEND)
    assert not idp.valid_token(stranger["access_token"], ALIAS)


def test_admin_consent_lets_a_sign_ins_refresh_token_redeem_for_more(idp, http, graph):
    user_read = f"{graph.url}/User.Read"
    rt = idp.issue_refresh_token(UPN, scopes=[SMTP_SEND])  # what the sign-in asked for
    refused = redeem(idp, http, rt, user_read)
    assert refused["error"] == "invalid_grant" and refused["error_codes"] == [65001]
    idp.grant_admin_consent("conf-app", {user_read})
    got = redeem(idp, http, rt, user_read)
    assert got["scope"] == user_read and idp.token_scopes(got["access_token"]) == {user_read}


def test_me_answers_the_tokens_user_with_the_selected_properties(idp, http, graph):
    idp.add_user(UPN, addresses=[ALIAS], mail="john.smith@contoso.com")
    token = redeem(idp, http, idp.issue_refresh_token(UPN), f"{graph.url}/User.Read")["access_token"]
    answer = me(graph, http, token)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body.pop("@odata.context").endswith("/$metadata#users/$entity")
    assert body == {"userPrincipalName": UPN, "mail": "john.smith@contoso.com",
                    "proxyAddresses": ["SMTP:john.smith@contoso.com", f"smtp:{ALIAS}"]}
    assert set(me(graph, http, token, "?$select=mail").json()) == {"@odata.context", "mail"}
    assert [(r.method, r.path, r.status) for r in graph.requests] == [("GET", "/v1.0/me", 200)] * 2


def test_me_of_a_user_nobody_added_lists_the_upn_only(idp, http, graph):
    token = redeem(idp, http, idp.issue_refresh_token("bob@contoso.com"),
                   f"{graph.url}/User.Read")["access_token"]
    assert me(graph, http, token).json()["proxyAddresses"] == ["SMTP:bob@contoso.com"]


def test_me_refuses_what_graph_refuses(idp, http, graph):
    rt = idp.issue_refresh_token(UPN)
    mail_send = redeem(idp, http, rt, f"{graph.url}/Mail.Send")
    no_user_read = me(graph, http, mail_send["access_token"])
    assert no_user_read.status_code == 403
    assert no_user_read.json()["error"]["code"] == "Authorization_RequestDenied"
    outlook = redeem(idp, http, mail_send["refresh_token"], SMTP_SEND)["access_token"]
    assert me(graph, http, outlook).status_code == 401  # another resource's token
    assert me(graph, http, "not-a-token").status_code == 401
    app_only = http.post(f"{idp.url}/contoso.com/oauth2/v2.0/token", data={
        "grant_type": "client_credentials", "client_id": "conf-app", "client_secret": "s3cret",
        "scope": f"{graph.url}/.default"}).json()["access_token"]
    answer = me(graph, http, app_only)
    assert answer.status_code == 400 and "delegated" in answer.json()["error"]["message"]
    user_read = redeem(idp, http, idp.issue_refresh_token(UPN), f"{graph.url}/User.Read")
    idp.revoke_access_tokens()
    assert me(graph, http, user_read["access_token"]).status_code == 401
