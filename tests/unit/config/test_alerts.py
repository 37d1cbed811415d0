"""The `alerts:` section and `apps.*.client_secret_expires`: loaded, and refused with key and line."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pytest

from relay365.config import load_config
from relay365.errors import ConfigError

BASE = """\
apps:
  default: {{client_id: abc, tenant: contoso.com, client_secret: s3cr3t, client_secret_expires: {expires}}}
accounts:
  - mailbox: agent@contoso.com
  - mailbox: scans@contoso.com
smtp:
alerts:
{alerts}
"""
GOOD = """\
  mail_to: [it@contoso.com, ops@contoso.com]
  from_account: scans@contoso.com
  webhook:
    url: https://hooks.example.test/T000/B000/xyz
    headers: {Authorization: "Bearer t0ken"}
  refresh_token_stale_days: 10
  secret_warn_days: [14, 3]
  spool_oldest_after: 30m
  max_per_hour: 5
  interval: 15s"""


def load(tmp_path: Path, alerts: str = GOOD, expires: str = "2027-05-01"):
    path = tmp_path / "config.yaml"
    path.write_text(BASE.format(alerts=alerts, expires=expires))
    return load_config(path)


def refused(tmp_path: Path, **kw) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, **kw)
    return err.value.problems


def test_every_key_loads(tmp_path):
    c = load(tmp_path)
    assert c.apps["default"].client_secret_expires == datetime.date(2027, 5, 1)
    a = c.alerts
    assert a is not None and a.mail_to == ["it@contoso.com", "ops@contoso.com"]
    assert a.from_account == "scans@contoso.com" and a.webhook is not None
    assert a.webhook.url.reveal() == "https://hooks.example.test/T000/B000/xyz"
    assert a.webhook.headers["Authorization"].reveal() == "Bearer t0ken"
    assert "t0ken" not in repr(a) and "xyz" not in repr(a)  # secrets, redacted when printed
    assert (a.refresh_token_stale_days, a.secret_warn_days, a.spool_oldest_after, a.max_per_hour,
            a.interval) == (10.0, [14, 3], 1800.0, 5, 15.0)


def test_defaults(tmp_path):
    a = load(tmp_path, alerts="  mail_to: it@contoso.com").alerts
    assert a is not None and a.mail_to == ["it@contoso.com"] and a.webhook is None
    assert (a.from_account, a.refresh_token_stale_days, a.secret_warn_days, a.spool_oldest_after,
            a.max_per_hour, a.interval) == (None, 14.0, [30, 7, 1], 3600.0, 20, 60.0)


def test_no_section_no_alerts(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(BASE.format(alerts="", expires="null").replace("alerts:\n", ""))
    assert load_config(path).alerts is None


@pytest.mark.parametrize("alerts, expected", [
    ("  interval: 1m", "alerts: give mail_to, webhook or both (nobody would be told) (line 8)"),
    ("  mail_to: [it.contoso.com]", "alerts.mail_to[0]: not an email address: 'it.contoso.com' (line 8)"),
    ("  mail_to: [it@contoso.com]\n  from_account: nobody@contoso.com",
     "alerts.from_account: no account 'nobody@contoso.com' under accounts (accounts: "
     "agent@contoso.com, scans@contoso.com) (line 9)"),
    ("  webhook: {url: ftp://x}", "alerts.webhook.url: must be an https:// (or http://) URL (line 8)"),
    ("  webhook: {url: 'https://x', ca_file: /nonexistent/ca.pem}",
     "alerts.webhook.ca_file: no such file: /nonexistent/ca.pem (line 8)"),
    ("  mail_to: [it@contoso.com]\n  secret_warn_days: [30, 0]",
     "alerts.secret_warn_days: each must be at least 1 (got 0) (line 9)"),
    ("  mail_to: [it@contoso.com]\n  max_per_hour: 0",
     "alerts.max_per_hour: must be at least 1 (got 0) (line 9)"),
    ("  mail_to: [it@contoso.com]\n  spool_oldest_after: soon",
     "alerts.spool_oldest_after: not a duration: 'soon' (examples: 30s, 15m, 1h, 5d, 120) (line 9)"),
    ("  mail_to: [it@contoso.com]\n  mail_too: [x@contoso.com]",
     "alerts.mail_too: unknown key (did you mean 'mail_to'?) (line 9)"),
])
def test_problems_name_the_key_and_line(tmp_path, alerts, expected):
    assert refused(tmp_path, alerts=alerts) == [expected]


def test_a_secret_expiry_that_is_no_date(tmp_path):
    assert refused(tmp_path, expires="next May") == [
        "apps.default.client_secret_expires: not a date: 'next May' (example: 2027-05-01) (line 2)"]


def test_relay365_check_refuses_a_bad_alerts_section(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(BASE.format(alerts="  mail_to: [it@contoso.com]\n  from_account: x@contoso.com",
                                expires="2027-05-01"))
    out = subprocess.run([sys.executable, "-m", "relay365", "check", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "alerts.from_account: no account 'x@contoso.com' under accounts" in out.stdout + out.stderr
    assert "(line 9)" in out.stdout + out.stderr
