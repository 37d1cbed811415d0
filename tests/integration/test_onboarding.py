"""relay365 auth: getting a mailbox's refresh token in, against the fake identity platform."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest

from tests.integration.conftest import DOMAIN, MAILBOX, relay_config
from tests.integration.test_smtp_relay import delivered, send
from tests.support.relayproc import RelayProcess

pytestmark = pytest.mark.integration


def auth(config_path, *args, stdin: str = "", timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relay", "auth", MAILBOX, "-c", str(config_path), *args],
                          input=stdin, capture_output=True, text=True, timeout=timeout)


def no_seed_config(tmp_path, pki, idp, upstream, **kw) -> RelayProcess:
    config = relay_config(tmp_path, pki, idp, upstream, smtp={}, **kw)
    del config["accounts"][0]["refresh_token"]
    proc = RelayProcess(tmp_path, config)
    proc.write_config()
    return proc


@pytest.fixture
def running(tmp_path, pki, idp, upstream):
    proc = no_seed_config(tmp_path, pki, idp, upstream)
    yield proc.start()
    proc.stop()


def test_import_refresh_token_verifies_and_daemon_picks_it_up(tmp_path, running, idp, upstream):
    proc = running
    with pytest.raises(Exception):  # no refresh token yet: the relay says so with a 4xx
        send(proc.smtp_port, "before auth")
    assert proc.wait_log("token_failed")["error"] == "no_refresh_token"
    rt = idp.issue_refresh_token(MAILBOX)
    result = auth(proc.config_path, "--refresh-token-stdin", stdin=rt + "\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Stored a refresh token" in result.stdout
    line = [l for l in result.stdout.splitlines() if l.startswith(MAILBOX)][0]
    assert "smtp: ok" in line and "imap: ok" in line
    store = (tmp_path / "state" / "tokens.enc").read_bytes()
    assert rt.encode() not in store
    subject = f"after auth {uuid.uuid4()}"
    # the running daemon sees the new token at its next attempt; no restart
    deadline = time.monotonic() + 20
    while True:
        try:
            send(proc.smtp_port, subject)
            break
        except Exception:
            assert time.monotonic() < deadline
            time.sleep(0.5)
    delivered(upstream, f"bob@{DOMAIN}", subject)


def test_import_of_a_dead_token_is_refused_clearly(tmp_path, pki, idp, upstream):
    proc = no_seed_config(tmp_path, pki, idp, upstream)
    result = auth(proc.config_path, "--refresh-token-stdin", "--no-verify", stdin="not-a-token\n")
    assert result.returncode == 1
    assert "invalid_grant (AADSTS70000)" in result.stderr and MAILBOX in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "state" / "tokens.enc").exists()
