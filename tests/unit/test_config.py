"""Config errors name the key path and the line; values are typed; nothing makes an open relay."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from relay.config import load_config
from relay.errors import ConfigError
from relay.passwords import hash_password

ROOT = Path(__file__).resolve().parents[2]
HASH = hash_password("pw", ln=10)

GOOD = f"""\
apps:
  default: {{client_id: x, tenant: t.test}}
accounts:
  - mailbox: scanner@contoso.com
    refresh_token: seed
users:
  - username: scanner
    password_hash: "{HASH}"
    mailbox: scanner@contoso.com
smtp:
  listen: ["127.0.0.1:2525", "[::1]:2525"]
  max_message_size: 10MB
  unauthenticated:
    - network: 192.168.10.0/24
      mailbox: scanner@contoso.com
"""


def problems(text: str, tmp_path) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "c.yaml", text=text)
    return err.value.problems


def test_a_good_config_is_typed(tmp_path):
    c = load_config(tmp_path / "c.yaml", text=GOOD)
    assert [(a.host, a.port) for a in c.smtp.listen] == [("127.0.0.1", 2525), ("::1", 2525)]
    assert c.smtp.max_message_size == 10 * 1024**2
    assert str(c.smtp.unauthenticated[0].network) == "192.168.10.0/24"
    assert c.smtp.unauthenticated[0].delivery == "spool" and c.users[0].delivery == "direct"
    assert c.state_dir == tmp_path / "state"  # relative to the config file
    assert "seed" not in repr(c)  # secrets stay typed


def test_unknown_app_names_the_key_and_line(tmp_path):
    text = GOOD.replace("    refresh_token: seed\n", "    app: x\n    refresh_token: seed\n")
    assert problems(text, tmp_path) == [
        "accounts[0].app: no app named 'x' (apps: default) (line 5)"]


def test_unknown_and_duplicate_keys(tmp_path):
    text = GOOD.replace("  max_message_size: 10MB\n", "  max_mesage_size: 10MB\n  listen: []\n")
    found = problems(text, tmp_path)
    assert any(re.fullmatch(r"smtp\.max_mesage_size: unknown key.*\(line 12\)", p) for p in found), found
    assert any(p.startswith("smtp.listen: duplicate key") and "(line 13)" in p for p in found), found


def test_bad_values_name_the_key(tmp_path):
    text = GOOD.replace("10MB", "ten megs").replace("192.168.10.0/24", "192.168.10.300/24")
    found = problems(text, tmp_path)
    assert any(p.startswith("smtp.max_message_size: not a size: 'ten megs'") for p in found), found
    assert any(p.startswith("smtp.unauthenticated[0].network:") for p in found), found


def test_open_relay_is_refused(tmp_path):
    found = problems(GOOD.replace("192.168.10.0/24", "0.0.0.0/0"), tmp_path)
    assert found == ["smtp.unauthenticated[0].network: 0.0.0.0/0 would let the whole Internet send "
                     "without a password (an open relay); list your LAN's networks (line 14)"]


def test_users_must_point_at_accounts_and_hashes_must_be_hashes(tmp_path):
    text = GOOD.replace("    mailbox: scanner@contoso.com\nsmtp", "    mailbox: other@contoso.com\nsmtp")
    text = text.replace(HASH, "plain")
    found = problems(text, tmp_path)
    assert "users[0].mailbox: no account for 'other@contoso.com' under accounts (line 9)" in found
    assert any(p.startswith("users[0].password_hash: not a relay365 password hash") for p in found)


def test_environment_and_file_secrets(tmp_path, monkeypatch):
    secret_file = tmp_path / "client-secret"
    secret_file.write_text("from-a-file\n")
    monkeypatch.setenv("RT_SEED", "from-env")
    monkeypatch.delenv("NOPE", raising=False)
    text = GOOD.replace("refresh_token: seed", "refresh_token: ${RT_SEED}").replace(
        "{client_id: x, tenant: t.test}",
        f"{{client_id: '${{NOPE:-fallback-id}}', tenant: t.test, client_secret: {{file: {secret_file}}}}}")
    c = load_config(tmp_path / "c.yaml", text=text)
    assert c.accounts[0].refresh_token.reveal() == "from-env"
    assert c.apps["default"].client_id == "fallback-id"
    assert c.apps["default"].client_secret.reveal() == "from-a-file"
    found = problems(GOOD.replace("refresh_token: seed", "refresh_token: ${NOPE}"), tmp_path)
    assert found == ["accounts[0].refresh_token: environment variable NOPE is not set (line 5)"]


def test_fallback_only_with_direct_delivery(tmp_path):
    text = GOOD.replace("      mailbox: scanner@contoso.com\n", "      mailbox: scanner@contoso.com\n"
                        "      fallback: spool\n")
    assert problems(text, tmp_path)[0].startswith("smtp.unauthenticated[0].fallback: spool only "
                                                  "applies to delivery: direct")


def test_not_yaml_is_one_problem_with_a_line(tmp_path):
    found = problems("apps: [\n", tmp_path)
    assert len(found) == 1 and found[0].startswith("not valid YAML") and "(line" in found[0]


def test_example_config_loads_and_every_key_has_a_comment(monkeypatch):
    monkeypatch.setenv("RELAY365_CLIENT_SECRET", "x")
    monkeypatch.setenv("SCANNER_RT", "y")
    path = ROOT / "config.example.yaml"
    load_config(path)
    undocumented = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)(- )?([a-z_]+):", line)
        if not m or "#" in line:
            continue
        # a key may be explained on the line above or below, or be a section header
        # whose children carry the comments
        before = lines[i - 1].strip() if i else ""
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if nxt.strip().startswith("#"):  # a long value, explained on the line below
            continue
        section = line.rstrip().endswith(":") and len(nxt) - len(nxt.lstrip()) > len(m.group(1))
        if not before.startswith("#") and not section:
            undocumented.append(f"line {i + 1}: {line.strip()}")
    assert undocumented == []
