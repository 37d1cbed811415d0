"""`relay365 accounts` (relay365.accounts): the daemon's status file merged with the config.

The status file is the daemon's, but it sits in state_dir where anything may have been left: a file
of another shape must read as "no status yet", never as a traceback."""

from __future__ import annotations

import json

import pytest

from relay365.accounts import collect, render
from relay365.config import load_config

MAILBOX = "printer@example.test"
OTHER = "scanner@example.test"
NOW = 1_900_000_000.0


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "relay.yaml"
    path.write_text(f"""
state_dir: state
apps:
  default: {{client_id: app, tenant: t}}
accounts: [{{mailbox: {MAILBOX}, refresh_token: seed}}, {{mailbox: {OTHER}}}]
smtp: {{unauthenticated: [{{network: 10.0.0.0/8, mailbox: {MAILBOX}}}]}}
""")
    cfg = load_config(path)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    return cfg


def test_rows_take_what_the_daemon_wrote(config):
    saved = {"mailbox": MAILBOX.upper(), "flow": "refresh_token", "state": "needs-auth",
             "code": "AADSTS70008", "error": "invalid_grant", "action": "re-authorise",
             "expires_at": NOW - 10, "last_refresh": NOW - 3600, "last_use": NOW - 60}
    (config.state_dir / "accounts.json").write_text(
        json.dumps({"written_at": NOW - 5, "accounts": [saved]}))
    report = collect(config, now=NOW)
    assert report["written_at"] == NOW - 5
    mine, other = report["accounts"]
    assert mine == {**saved, "send_via": "smtp", "refresh_token_updated": None}
    assert other == {"mailbox": OTHER, "flow": "refresh_token", "state": "needs-auth", "code": None,
                     "action": "no refresh token: run relay365 auth MAILBOX", "expires_at": None,
                     "last_refresh": None, "last_use": None, "send_via": "smtp",
                     "refresh_token_updated": None}
    text = render(report, now=NOW)
    assert "needs-auth (AADSTS70008)" in text and "daemon status written 5s ago" in text


@pytest.mark.parametrize("content", [
    "[]", '"accounts"', "null", '{"accounts": 5}', '{"accounts": {"x": 1}}',
    '{"written_at": "yesterday", "accounts": [1, null, {"flow": "x"}, {"mailbox": 7}]}',
    "{not json",
])
def test_a_status_file_of_another_shape_reads_as_no_status(config, content):
    (config.state_dir / "accounts.json").write_text(content)
    report = collect(config, now=NOW)
    assert report["written_at"] is None
    assert [(r["mailbox"], r["state"]) for r in report["accounts"]] == [
        (MAILBOX, "unknown"), (OTHER, "needs-auth")]
    assert "no daemon status yet" in render(report, now=NOW)
