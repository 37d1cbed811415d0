"""The alerts adapter: looks at the relay every `alerts.interval`, sends what the core plans.

One task (`run`), owned by the daemon. Each round gathers the facts (token views, when each refresh
token was last stored, the spool's age and its dead letters), lets `conditions.observe` and
`core.AlertBook.plan` decide, sends each notice on its channel, and saves the book to
`state_dir/alerts.json` (atomic write under `state_dir/alerts.lock`) after every notice sent, so
a restart repeats nothing that was sent. A send that fails is logged (`alert_failed`) and tried
again later; nothing here may stop the relay: every error ends as a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import structlog

from ..config import AlertsConfig, Config
from ..delivery import Deliverer
from ..errors import RelayError
from ..fsutil import locked, write_atomic
from ..spool.worker import SpoolWorker
from ..tokens.manager import TokenManager
from ..tokens.status import AccountView
from .conditions import DeadLetter, Facts, observe
from .core import AlertBook, Notice, Observation
from .send import AlertSendError, MailSender, WebhookSender

log = structlog.get_logger("relay365.alerts")
STATE_FILE = "alerts.json"
LOCK_FILE = "alerts.lock"


class Sender(Protocol):
    channel: str
    dest: str  # where it goes, as a fingerprint: a new destination hears every active condition

    async def send(self, notice: Notice) -> None: ...
    async def aclose(self) -> None: ...


class AlertStateFile:
    def __init__(self, state_dir: Path) -> None:
        self.path, self.lock = Path(state_dir) / STATE_FILE, Path(state_dir) / LOCK_FILE

    def load(self) -> object:
        with locked(self.lock):
            try:
                return json.loads(self.path.read_text())
            except FileNotFoundError:
                return None
            except (OSError, ValueError) as exc:
                log.warning("alerts_state_unreadable", path=str(self.path), error=str(exc)[:200])
                return None

    def save(self, data: dict[str, object]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with locked(self.lock):
            write_atomic(self.path, json.dumps(data, indent=1, sort_keys=True).encode())


class AlertService:
    def __init__(self, config: Config, tokens: TokenManager, spool: SpoolWorker | None,
                 deliverer: Deliverer, *, clock: Callable[[], float] = time.time) -> None:
        self.tokens, self.spool, self._clock = tokens, spool, clock
        self.hostname = socket.gethostname()
        self.book = AlertBook((), 1)
        self.file = AlertStateFile(config.state_dir)
        self.senders: dict[str, Sender] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.configure(config, deliverer)

    def configure(self, config: Config, deliverer: Deliverer) -> None:
        """A (re)loaded config; the old webhook client is closed by the next round."""
        self.config = config
        cfg = config.alerts or AlertsConfig()
        self._retired = list(self.senders.values())
        self.senders = {}
        if config.alerts is not None and cfg.mail_to:
            self.senders["mail"] = MailSender(cfg, config, deliverer, self.tokens.views,
                                              self.hostname)
        if config.alerts is not None and cfg.webhook is not None:
            self.senders["webhook"] = WebhookSender(cfg.webhook, self.hostname)
        self.book.configure({name: sender.dest for name, sender in self.senders.items()},
                            cfg.max_per_hour)
        self._wake.set()

    async def start(self) -> None:
        try:
            restored = await asyncio.to_thread(self.file.load)
        except OSError as exc:  # no book: conditions active now are announced again
            log.error("alerts_state_unreadable", path=str(self.file.path), error=exc.strerror)
            restored = None
        if restored is not None and not self.book.restore(restored):
            log.warning("alerts_state_ignored", path=str(self.file.path))
        self._task = asyncio.create_task(self.run(), name="alerts")
        log.info("alerts_started", channels=list(self.senders),
                 announced={c: len(self.book.announced(c)) for c in self.book.channels})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for sender in [*self._retired, *self.senders.values()]:
            await sender.aclose()
        self._retired = []

    async def run(self) -> None:
        while True:
            try:
                await self.round()
            except Exception as exc:  # alerting must never take the relay down
                log.error("alerts_round_failed", error=f"{type(exc).__name__}: {str(exc)[:200]}")
            self._wake.clear()
            interval = (self.config.alerts or AlertsConfig()).interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=interval)

    async def round(self) -> None:
        for old in self._retired:
            await old.aclose()
        self._retired = []
        if not self.senders or self.config.alerts is None:
            return
        obs = await self.observe()
        plan = self.book.plan(obs, self._clock())
        for channel, count in plan.held.items():
            log.warning("alerts_rate_limited", channel=channel, waiting=count,
                        max_per_hour=self.book.max_per_hour)
        failed: set[str] = set()
        for notice in plan.notices:
            if notice.channel not in failed and not await self._send(notice):
                failed.add(notice.channel)

    async def _send(self, notice: Notice) -> bool:
        sender = self.senders.get(notice.channel)
        if sender is None:
            return False
        try:
            await sender.send(notice)
        except AlertSendError as exc:
            retry = self.book.failed(notice.channel, self._clock())
            log.error("alert_failed", channel=notice.channel, key=notice.key,
                      phase=notice.phase.value, error=str(exc), retry_in=retry)
            return False
        self.book.sent(notice, self._clock())
        log.info("alert_sent", channel=notice.channel, phase=notice.phase.value,
                 kind=notice.condition.kind.value, subject=notice.condition.subject, key=notice.key)
        try:
            await asyncio.to_thread(self.file.save, self.book.to_json())
        except OSError as exc:
            log.error("alerts_state_write_failed", path=str(self.file.path), error=exc.strerror)
        return True

    async def observe(self) -> Observation:
        views = self.tokens.views()
        depth, oldest = self.spool.stats() if self.spool is not None else (0, 0.0)
        redeemed, dead = await asyncio.to_thread(self._from_disk, views)
        expiry = {name: app.client_secret_expires for name, app in self.config.apps.items()
                  if app.client_secret_expires is not None}
        facts = Facts(self.config.source, views, redeemed, expiry, depth, oldest, dead)
        return observe(facts, self.config.alerts or AlertsConfig(), self._clock())

    def _from_disk(self, views: list[AccountView]) -> tuple[dict[str, float], list[DeadLetter]]:
        """In a thread: when each refresh token was last stored, and the spool's dead letters."""
        redeemed: dict[str, float] = {}
        for v in views:
            try:
                stored = self.tokens.store.get(v.mailbox) if v.flow == "refresh_token" else None
            except RelayError:  # the token keeper reports a broken store; here it is only a fact less
                stored = None
            times = [t for t in (v.last_refresh, stored.updated_at if stored else None) if t]
            if times:
                redeemed[v.mailbox.lower()] = max(times)
        dead: list[DeadLetter] = []
        if self.spool is not None:
            dead = [DeadLetter(e.path.name, e.mailbox, e.rcpts, e.last_error or "gave up")
                    for e in self.spool.queue.entries("failed")]
        return redeemed, dead
