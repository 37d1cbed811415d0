"""The alerts adapter with a fake token manager and a recording sender: rounds, the state file,
failures that are logged and never raised, facts read from the token store."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

from structlog.testing import capture_logs

from relay365.alerts.send import AlertSendError
from relay365.alerts.service import AlertService
from relay365.config import AccountConfig, AlertsConfig, AppConfig, Config, WebhookConfig
from relay365.secret import Secret
from relay365.states import AccountState
from relay365.tokens.status import AccountView
from relay365.tokens.store import StoredToken

NOW = 1_900_000_000.0
DAY = 86400.0


class Tokens:
    def __init__(self, state: AccountState, updated_at: float | None = None) -> None:
        self.state, self.store = state, self
        self.updated_at = updated_at

    def views(self) -> list[AccountView]:
        return [AccountView("a@x.test", "refresh_token", self.state,
                            "AADSTS70008" if self.state is AccountState.NEEDS_AUTH else None,
                            None, "re-authorise", None, None, None)]

    def get(self, mailbox: str) -> StoredToken | None:
        return None if self.updated_at is None else StoredToken(Secret("rt"), self.updated_at)


class Recorder:
    channel = "webhook"

    def __init__(self, dest: str, fail: Exception | None = None) -> None:
        self.dest, self.fail, self.sent = dest, fail, []

    async def send(self, notice) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append((notice.phase.value, notice.key))

    async def aclose(self) -> None:
        pass


def config(tmp_path: Path) -> Config:
    alerts = AlertsConfig(webhook=WebhookConfig(Secret("https://hooks.test/x")))
    return Config(accounts=[AccountConfig("a@x.test")], apps={"default": AppConfig("c")},
                  state_dir=tmp_path, alerts=alerts, source=str(tmp_path / "c.yaml"))


def service(tmp_path: Path, tokens: Tokens, recorder: Recorder | None = None,
            now: float = NOW) -> tuple[AlertService, Recorder]:
    svc = AlertService(config(tmp_path), tokens, None, deliverer=None, clock=lambda: now)  # type: ignore[arg-type]
    rec = recorder or Recorder(svc.senders["webhook"].dest)
    rec.dest = svc.senders["webhook"].dest
    svc.senders = {"webhook": rec}
    return svc, rec


async def _round(svc: AlertService) -> None:
    await svc.round()
    await svc.stop()


def test_a_round_sends_saves_and_a_restarted_service_repeats_nothing(tmp_path):
    svc, rec = service(tmp_path, Tokens(AccountState.NEEDS_AUTH))
    asyncio.run(_round(svc))
    assert rec.sent == [("started", "needs_auth:a@x.test")]
    path = tmp_path / "alerts.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(json.loads(path.read_text())["channels"]["webhook"]["announced"]) == [
        "needs_auth:a@x.test"]

    async def restarted() -> list:
        again, rec2 = service(tmp_path, Tokens(AccountState.NEEDS_AUTH))
        await again.start()
        await again.round()
        await again.stop()
        return rec2.sent

    assert asyncio.run(restarted()) == []


def test_a_failed_send_is_logged_never_raised_and_tried_again_after_the_backoff(tmp_path):
    rec = Recorder("", fail=AlertSendError("webhook hooks.test: HTTP 500"))
    svc, rec = service(tmp_path, Tokens(AccountState.NEEDS_AUTH), rec)
    with capture_logs() as logs:
        asyncio.run(_round(svc))
    failed = [e for e in logs if e["event"] == "alert_failed"]
    assert failed and failed[0]["error"] == "webhook hooks.test: HTTP 500" and failed[0]["retry_in"] == 60
    assert not (tmp_path / "alerts.json").exists()


def test_an_unexpected_error_ends_the_round_as_a_log_line(tmp_path):
    svc, _ = service(tmp_path, Tokens(AccountState.NEEDS_AUTH), Recorder("", fail=RuntimeError("x")))

    async def one_loop() -> list:
        with capture_logs() as logs:
            task = asyncio.create_task(svc.run())
            await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return logs

    logs = asyncio.run(one_loop())
    assert any(e["event"] == "alerts_round_failed" and "RuntimeError" in e["error"] for e in logs)


def test_a_refresh_token_last_stored_20_days_ago_is_stale(tmp_path):
    svc, rec = service(tmp_path, Tokens(AccountState.OK, updated_at=NOW - 20 * DAY))
    asyncio.run(_round(svc))
    assert rec.sent == [("started", "refresh_token_stale:a@x.test")]


def test_no_alerts_section_no_senders_and_a_round_does_nothing(tmp_path):
    cfg = config(tmp_path)
    svc = AlertService(Config(accounts=cfg.accounts, apps=cfg.apps, state_dir=tmp_path), Tokens(
        AccountState.NEEDS_AUTH), None, deliverer=None)  # type: ignore[arg-type]
    assert svc.senders == {}
    asyncio.run(_round(svc))
    assert not (tmp_path / "alerts.json").exists()
