"""Parts loaded only for a config that uses them, and never later than start-up or the reload."""

from __future__ import annotations

import subprocess
import sys

import pytest

from relay365 import features
from relay365.config import load_config

BASE = """\
apps:
  default: {client_id: abc, tenant: contoso.com, client_secret: s3cr3t}
accounts:
  - {mailbox: agent@contoso.com, send_via: SEND_VIA}
smtp:
"""
WEBHOOK = "alerts:\n  webhook: {url: 'https://hooks.example.test/x'}\n"


def load(tmp_path, extra: str = "", send_via: str = "smtp"):
    path = tmp_path / "c.yaml"
    path.write_text(BASE.replace("SEND_VIA", send_via) + extra)
    return load_config(path)


@pytest.mark.parametrize(("extra", "send_via", "parts"), [
    ("", "smtp", []),
    ("http:\n", "smtp", [features.STATUS_PAGE]),
    ("", "graph", [features.HTTPX]),
    ("", "auto", [features.HTTPX]),
    (WEBHOOK, "smtp", [features.HTTPX]),
    ("http:\n" + WEBHOOK, "graph", [features.STATUS_PAGE, features.HTTPX]),
])
def test_a_config_needs_what_it_uses(tmp_path, extra, send_via, parts):
    assert features.needed(load(tmp_path, extra, send_via)) == parts


def test_every_part_loads_here():
    assert features.load(list(features.PARTS)) == []


def test_a_part_that_does_not_load_is_one_problem_line(monkeypatch):
    monkeypatch.setitem(features.PARTS, features.HTTPX, ("relay365_no_such_module", "httpx"))
    assert features.load([features.STATUS_PAGE, features.HTTPX]) == [
        "httpx (Graph, webhooks) does not load (relay365_no_such_module: ModuleNotFoundError: "
        "No module named 'relay365_no_such_module')"]


def test_the_relay_itself_does_not_import_them():
    """What `relay365 serve` imports before it reads the config: none of the optional parts (this is
    where a relay at rest spends its memory; issue 12)."""
    code = ("import sys, relay365.app, relay365.cli; relay365.cli.build_parser(); "
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('jinja2', 'httpx', 'httpcore', 'anyio', 'trio', 'markupsafe') "
            "or m.startswith(('relay365.web', 'relay365.httpapi')))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []
