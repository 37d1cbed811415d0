"""`send_via`, `save_to_sent` and `upstream.graph.base_url` (issue 13's config contract)."""
import pytest

from relay365.config import load_config
from relay365.errors import ConfigError

BASE = """
apps:
  main: {{client_id: x, client_secret: s, tenant: contoso.test, cloud: {cloud}}}
accounts:
  - {{mailbox: a@example.test, app: main, refresh_token: r{extra_account}}}
  - {{mailbox: b@example.test, app: main, flow: client_credentials}}
smtp: {{unauthenticated: [{{network: 10.0.0.0/8, mailbox: a@example.test}}]}}
"""


def load(tmp_path, cloud="global", extra_account="", extra=""):
    path = tmp_path / "c.yaml"
    path.write_text(BASE.format(cloud=cloud, extra_account=extra_account) + extra)
    return load_config(path)


def test_defaults_are_smtp_and_a_sent_copy(tmp_path):
    a = load(tmp_path).accounts[0]
    assert (a.send_via, a.save_to_sent) == ("smtp", True)


def test_send_via_graph_and_no_sent_copy(tmp_path):
    a = load(tmp_path, extra_account=", send_via: graph, save_to_sent: false").accounts[0]
    assert (a.send_via, a.save_to_sent) == ("graph", False)


def test_send_via_must_be_a_known_way(tmp_path):
    with pytest.raises(ConfigError, match="send_via"):
        load(tmp_path, extra_account=", send_via: imap")


@pytest.mark.parametrize("cloud, host", [
    ("global", "graph.microsoft.com"),
    ("usgov", "graph.microsoft.us"),
    ("china", "microsoftgraph.chinacloudapi.cn"),
])
def test_graph_base_url_and_scopes_follow_the_cloud(tmp_path, cloud, host):
    c = load(tmp_path, cloud)
    assert c.upstream.graph.base_url == f"https://{host}/v1.0"
    assert c.graph_scopes_for(c.accounts[0]) == [f"https://{host}/Mail.Send",
                                                 f"https://{host}/Mail.ReadWrite"]
    assert c.graph_scopes_for(c.accounts[1]) == [f"https://{host}/.default"]


def test_explicit_graph_base_url_wins(tmp_path):
    c = load(tmp_path, "usgov", extra="upstream: {graph: {base_url: 'https://127.0.0.1:8443/v1.0'}}\n")
    assert c.upstream.graph.base_url == "https://127.0.0.1:8443/v1.0"
    assert c.upstream.graph.resource == "https://127.0.0.1:8443"


def test_graph_base_url_must_be_https(tmp_path):
    with pytest.raises(ConfigError, match=r"upstream.graph.base_url: must be an https:// URL \(line"):
        load(tmp_path, extra="upstream: {graph: {base_url: 'http://graph.test/v1.0'}}\n")
