"""`relay365 auth --device` with the app registration people already have (it has a client_secret):
the device flow runs as a public client on the same registration, and the running daemon then
refreshes that token as a public client - proven by the fake identity platform's request log."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.conftest import MAILBOX
from tests.integration.test_onboarding import AuthRun, no_seed_config, send_once_the_token_is_there

pytestmark = pytest.mark.integration

CLIENT, SECRET = "relay365-confidential-public", "both-ways-secret"


def test_device_flow_with_a_confidential_app_and_public_refresh(tmp_path, pki, idp, upstream):
    idp.add_client(CLIENT, secret=SECRET, public_flows=True)
    proc = no_seed_config(tmp_path, pki, idp, upstream)
    proc.config["apps"]["default"].update(client_id=CLIENT, client_secret=SECRET)
    relay = proc.start()
    try:
        run = AuthRun(proc.config_path, "--device")
        idp.approve_device(run.wait_line(r"enter the code (\w+)").group(1), MAILBOX)
        code, out, err = run.finish()
        assert code == 0, out + err
        assert "a public client's: refreshed without the client secret" in out
        line = next(ln for ln in out.splitlines() if ln.startswith(MAILBOX))
        assert "smtp: ok" in line and "imap: ok" in line
        token_calls = [r for r in idp.request_log if r.path.endswith("/oauth2/v2.0/token")]
        device = [r for r in token_calls if r.grant_type and "device_code" in r.grant_type]
        assert device and all(not r.with_secret for r in device)
        idp.reset_counters()
        send_once_the_token_is_there(relay, upstream, f"after device {uuid.uuid4()}")
        refreshes = [r for r in idp.request_log if r.grant_type == "refresh_token"]
        assert refreshes and refreshes[-1].status == 200
        # every refresh of this token went without the secret: Entra would say AADSTS700025
        assert all(not r.with_secret for r in refreshes), refreshes
        assert all(r.status == 200 for r in refreshes), refreshes
    finally:
        proc.stop()
