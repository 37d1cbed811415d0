"""`cloud:` and `tenant: consumers` on the apps pick the default upstream mail hosts."""
import pytest

from relay365.config import load_config

BASE = """
apps:
  main: {{client_id: x, tenant: {tenant}, cloud: {cloud}}}
accounts: [{{mailbox: a@example.test, app: main, refresh_token: r}}]
smtp: {{unauthenticated: [{{network: 10.0.0.0/8, mailbox: a@example.test}}]}}
"""


def load(tmp_path, tenant="contoso.test", cloud="global", extra=""):
    path = tmp_path / "c.yaml"
    path.write_text(BASE.format(tenant=tenant, cloud=cloud) + extra)
    return load_config(path)


@pytest.mark.parametrize("tenant, cloud, smtp, imap, login, resource", [
    ("contoso.test", "global", "smtp.office365.com", "outlook.office365.com",
     "https://login.microsoftonline.com", "outlook.office.com"),
    ("contoso.test", "usgov", "smtp.office365.us", "outlook.office365.us",
     "https://login.microsoftonline.us", "outlook.office365.us"),
    ("contoso.test", "china", "smtp.partner.outlook.cn", "partner.outlook.cn",
     "https://login.partner.microsoftonline.cn", "partner.outlook.cn"),
    ("consumers", "global", "smtp-mail.outlook.com", "outlook.office365.com",
     "https://login.microsoftonline.com", "outlook.office.com"),
])
def test_cloud_sets_authority_scopes_and_mail_hosts(tmp_path, tenant, cloud, smtp, imap, login, resource):
    c = load(tmp_path, tenant, cloud)
    assert (c.upstream.smtp.host, c.upstream.smtp.port, c.upstream.smtp.tls) == (smtp, 587, "starttls")
    assert (c.upstream.imap.host, c.upstream.imap.port, c.upstream.imap.tls) == (imap, 993, "implicit")
    assert c.apps["main"].authority_url == f"{login}/{tenant}"
    assert c.scopes_for(c.accounts[0])[2] == f"https://{resource}/SMTP.Send"


def test_explicit_upstream_wins_over_the_cloud(tmp_path):
    c = load(tmp_path, cloud="usgov",
             extra="upstream: {smtp: {host: smarthost.test, port: 2587, tls: starttls}}\n")
    assert (c.upstream.smtp.host, c.upstream.smtp.port) == ("smarthost.test", 2587)
    assert c.upstream.imap.host == "outlook.office365.us"


def test_apps_in_different_clouds_keep_the_global_defaults(tmp_path):
    load(tmp_path, cloud="china")
    text = (tmp_path / "c.yaml").read_text().replace(
        "apps:\n", "apps:\n  other: {client_id: y, tenant: t.test}\n")
    c = load_config(tmp_path / "c.yaml", text=text)
    assert c.upstream.smtp.host == "smtp.office365.com"
