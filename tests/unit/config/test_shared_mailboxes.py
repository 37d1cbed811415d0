"""users[].account / send_as / sender and smtp.unauthenticated[].account in the config file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from relay365.config import load_config
from relay365.errors import ConfigError
from relay365.passwords import hash_password

HASH = hash_password("pw", ln=10)

CONFIG = """\
apps:
  default: {{client_id: abc, tenant: contoso.com}}
accounts:
  - mailbox: agent@contoso.com
users:
  - username: helpdesk
    password_hash: "{hash}"
    mailbox: helpdesk@contoso.com
    account: {account}
    send_as: {send_as}
smtp:
  unauthenticated:
    - network: 192.168.10.0/24
      mailbox: scans@contoso.com
      account: agent@contoso.com
"""


def load(tmp_path: Path, account: str = "agent@contoso.com", send_as: str = "[]"):
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(account=account, send_as=send_as, hash=HASH))
    return load_config(path)


def test_a_shared_mailbox_names_the_account_whose_token_opens_it(tmp_path):
    c = load(tmp_path, send_as='[Invoices@contoso.com, "*@orders.contoso.com"]')
    user = c.users[0]
    assert (user.mailbox, user.token_account) == ("helpdesk@contoso.com", "agent@contoso.com")
    assert user.send_as == ["invoices@contoso.com", "*@orders.contoso.com"]
    assert user.sender is None
    assert c.smtp is not None and c.smtp.unauthenticated[0].token_account == "agent@contoso.com"


def test_an_account_that_names_no_account_is_refused_with_key_and_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, account="nobody@contoso.com")
    assert err.value.problems == [
        "users[0].account: no account 'nobody@contoso.com' under accounts "
        "(accounts: agent@contoso.com) (line 9)"]


@pytest.mark.parametrize("entry", ["invoices", "a*@contoso.com", "x@nodot", "a b@contoso.com"])
def test_send_as_entries_must_be_addresses_or_a_domain_wildcard(tmp_path, entry):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, send_as=f'["{entry}"]')
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith("users[0].send_as[0]: ")
    assert err.value.problems[0].endswith("(line 10)")


def test_relay365_check_refuses_it_too(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(account="nobody@contoso.com", send_as="[]", hash=HASH))
    out = subprocess.run([sys.executable, "-m", "relay365", "check", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "users[0].account: no account 'nobody@contoso.com' under accounts" in out.stdout + out.stderr
