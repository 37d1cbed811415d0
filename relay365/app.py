"""The daemon's lifecycle: startup -> serve -> shutdown, in the shape of uvicorn's server.

`Relay.start()` opens the token store, binds every listener and starts the token keeper; `serve()`
waits for SIGTERM/SIGINT and handles SIGHUP (reload); `stop()` closes the listeners, gives sessions
in progress `drain_timeout` seconds, then cancels what is left. Every task has an owner.

Stopping: the listeners close at once; SMTP sessions between transactions hear `421 4.3.2` and
IMAP sessions that have not logged in `* BYE` at once; spliced IMAP sessions are closed (as
Dovecot does); only SMTP transactions in progress are waited for, up to `drain_timeout`.

Reload reads the config file again. A config with problems - or a certificate or key that does
not load - is rejected with one `reload_rejected` event and the old one stays in force. A good one
is applied in place: users, networks, accounts, apps, limits and the log level change for new
sessions and logins; every new connection on every TLS listener presents the certificate now on
disk; sessions in progress keep what they have. There is one handler per protocol for the
daemon's lifetime: a listener whose address changed is rebound to the same handler, so limits,
drain and the upstream pool keep counting every session.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from typing import TYPE_CHECKING, Any

import structlog

from . import features, logs, metrics, sdnotify
from .alerts.service import AlertService
from .config import Config, ImapConfig, Pop3Config, SmtpConfig, load_config
from .delivery import SmtpDeliverer
from .delivery.graph import GraphDeliverer
from .delivery.route import RoutedDeliverer
from .errors import ConfigError
from .graph.client import GraphClient
from .imap.server import ImapHandler, bind_imap
from .localauth import LocalAuth
from .memory import Trimmer, interval
from .pop3.server import Pop3Handler, bind_pop3
from .smtp.listen import bind_smtp
from .smtp.server import RelayHandler
from .spool.handoff import make_token_hold, spool_deliver
from .spool.queue import SpoolQueue
from .spool.worker import SpoolWorker
from .states import AccountState
from .tlsutil import server_context
from .tokens.manager import TokenManager
from .tokens.store import TokenStore

if TYPE_CHECKING:  # the status page is loaded only for an http: listener (relay365.features)
    from .web.model import ListenerRow
    from .web.routes import StatusApp

log = structlog.get_logger("relay365.app")
SPOOL_STUCK_AFTER = 3600.0  # /readyz reports degraded while the oldest queued message is older


def _listener_key(section: SmtpConfig | ImapConfig | Pop3Config | None) -> tuple[object, ...] | None:
    """What a bound socket depends on; anything else changes in place."""
    if section is None:
        return None
    return (tuple(map(str, section.listen)), section.tls, section.backlog)


def _tls_problems(config: Config) -> list[str]:
    """Each TLS listener's certificate and key must load before a config is applied."""
    problems = []
    for proto, section in (("smtp", config.smtp), ("imap", config.imap), ("pop3", config.pop3)):
        if section is None or section.tls == "none" or not section.cert_file or not section.key_file:
            continue
        try:
            server_context(section.cert_file, section.key_file)
        except (OSError, ssl.SSLError) as exc:
            problems.append(f"{proto}.cert_file/key_file: {section.cert_file}, {section.key_file} "
                            f"do not load: {getattr(exc, 'strerror', None) or exc}")
    return problems


def _reload_problems(config: Config) -> list[str]:
    """What stops a new config from being applied: TLS files that do not load, and a part it
    turns on (the status page, Graph) that does not load here."""
    return _tls_problems(config) + features.load(features.needed(config))


class Relay:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = TokenStore(config.state_dir)
        self.tokens = TokenManager(config, self.store)
        self.auth = LocalAuth(config)
        # the spool runs whenever SMTP does: it also delivers what an earlier run accepted
        self.spool: SpoolWorker | None = None
        # one HTTP client (connection reuse, 4 requests per mailbox) for every Graph send
        self.graph = GraphDeliverer(config, self.tokens, client=GraphClient(config, self.tokens))
        if config.smtp is not None:
            self.spool = SpoolWorker(
                SpoolQueue(config.state_dir, min_free_space=config.spool.min_free_space),
                spool_deliver(self._deliverer(config)), config.spool,
                held=make_token_hold(self.tokens))
        # always there (a reload may add an alerts: section); idle without one
        self.alerts = AlertService(config, self.tokens, self.spool, self._deliverer(config))
        self.smtp: RelayHandler | None = None  # made once, at the first bind; reloads reuse it
        self.imap: ImapHandler | None = None
        self.pop3: Pop3Handler | None = None
        self._servers: dict[str, list[asyncio.Server]] = {}
        self.status_page: StatusApp | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._reloads: set[asyncio.Task[bool]] = set()
        self.phase = "starting"  # starting | ready | stopping
        self.notify = sdnotify.from_env()  # a no-op outside systemd

    # -- what is bound -------------------------------------------------------------------------

    @property
    def addresses(self) -> dict[str, list[tuple[str, int]]]:
        """Bound addresses by protocol (port 0 in the config becomes the real port here)."""
        return {proto: [sock.getsockname()[:2] for s in servers for sock in s.sockets]
                for proto, servers in self._servers.items() if servers}

    def listener_rows(self) -> list[ListenerRow]:
        """What is bound, with the connections open now (for the status page)."""
        from .web.model import ListenerRow

        now = {"smtp": self.smtp.active if self.smtp else 0,
               "imap": self.imap.connections if self.imap else 0,
               "pop3": self.pop3.connections if self.pop3 else 0}
        return [ListenerRow(p, tuple(f"{h}:{port}" for h, port in a), now.get(p, 0))
                for p, a in self.addresses.items()]

    async def _bind(self, proto: str) -> None:
        if proto == "smtp" and self.config.smtp is not None:
            if self.smtp is None:
                self.smtp = RelayHandler(self.config, self.tokens, self.auth, self.spool,
                                         self.graph)
            self._servers["smtp"] = await bind_smtp(self.smtp)
        elif proto == "imap" and self.config.imap is not None:
            if self.imap is None:
                self.imap = ImapHandler(self.config, self.tokens, self.auth)
            self._servers["imap"] = await bind_imap(self.imap)
        elif proto == "pop3" and self.config.pop3 is not None:
            if self.pop3 is None:
                self.pop3 = Pop3Handler(self.config, self.tokens, self.auth)
            self._servers["pop3"] = await bind_pop3(self.pop3)
        elif proto == "http" and self.config.http is not None:
            from .httpapi import serve_http
            from .web.collect import Sources
            from .web.routes import StatusApp

            addr = self.config.http.listen
            if self.status_page is None:
                self.status_page = StatusApp(Sources(
                    lambda: self.config, self.tokens, self.store, self.spool, self.auth.throttle,
                    self.listener_rows, lambda: self.phase))
            self._servers["http"] = [await serve_http(addr.host, addr.port, self.readiness,
                                                      self.status_page)]

    def _unbind(self, proto: str) -> None:
        for server in self._servers.pop(proto, []):
            server.close()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.store.check)  # a bad key or damaged store stops us here
        if self.spool is not None:  # before SMTP is bound: a 250 needs a running worker behind it
            await self.spool.start()
        for proto in ("smtp", "imap", "pop3", "http"):
            await self._bind(proto)
        self._register_gauges()
        self._keeper = asyncio.create_task(self.tokens.maintain(), name="token-keeper")
        await self.alerts.start()
        self.phase = "ready"
        listeners = {p: [f"{h}:{port}" for h, port in a] for p, a in self.addresses.items()}
        log.info("relay_started", listeners=listeners, accounts=len(self.config.accounts),
                 users=len(self.config.users))
        self.notify.ready(f"listening on {listeners}")

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
            loop.add_signal_handler(signal.SIGHUP, self._schedule_reload)
        background = [asyncio.create_task(self.notify.watchdog_loop(), name="watchdog"),
                      asyncio.create_task(Trimmer(interval()).run(), name="malloc-trim")]
        try:
            await self._stop.wait()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self, drain_timeout: float | None = None) -> None:
        drain_timeout = self.config.drain_timeout if drain_timeout is None else drain_timeout
        self.phase = "stopping"
        self.notify.stopping()
        log.info("relay_stopping", drain_timeout=drain_timeout)
        for proto in list(self._servers):
            if proto != "http":
                self._unbind(proto)
        if self.smtp is not None:
            self.smtp.shutdown()
        if self.imap is not None:
            self.imap.shutdown()
        if self.pop3 is not None:
            self.pop3.shutdown()
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        await self._drain(drain_timeout)
        self._unbind("http")
        if self.smtp is not None:
            await self.smtp.drain()
        if self.spool is not None:  # deliveries in progress get the rest of the drain time
            await self.spool.stop(timeout=max(1.0, drain_timeout))
        await self.alerts.stop()
        await asyncio.to_thread(self.tokens.flush_pending)  # a rotation state_dir refused so far
        await self.tokens.save_status()
        await self.graph.aclose()
        log.info("relay_stopped")
        self.notify.close()

    def _deliverer(self, config: Config) -> RoutedDeliverer:
        """The spool's way out: SMTP or Graph per account (send_via), one interface."""
        self.graph.configure(config)
        return RoutedDeliverer(self.tokens, SmtpDeliverer(config, self.tokens), self.graph)

    def active_sessions(self) -> int:
        return ((self.smtp.active if self.smtp else 0) + (self.imap.connections if self.imap else 0)
                + (self.pop3.connections if self.pop3 else 0))

    async def _drain(self, timeout: float) -> None:
        """Wait until sessions in progress finish, up to `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.active_sessions() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        left = self.active_sessions()
        if left:
            log.warning("drain_timeout", sessions_cut=left)

    # -- reload --------------------------------------------------------------------------------

    def _schedule_reload(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload(), name="reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self) -> bool:
        self.notify.reloading()
        try:
            new = await asyncio.to_thread(load_config, self.config.source)
        except ConfigError as exc:
            log.error("reload_rejected", config=exc.source, problems=exc.problems)
            self.notify.ready("reload rejected; old config in force")
            return False
        problems = await asyncio.to_thread(_reload_problems, new)
        if problems:
            log.error("reload_rejected", config=new.source, problems=problems)
            self.notify.ready("reload rejected; old config in force")
            return False
        old = self.config
        self.config = new
        self.tokens.configure(new)
        self.auth.configure(new)
        if self.spool is not None:
            self.spool.configure(new.spool, spool_deliver(self._deliverer(new)))
        self.alerts.configure(new, self._deliverer(new))
        logs.set_level(new.log.level)
        if self.smtp is not None and new.smtp is not None:
            self.smtp.configure(new)
        if self.imap is not None and new.imap is not None:
            self.imap.configure(new)
        if self.pop3 is not None and new.pop3 is not None:
            self.pop3.configure(new)
        for proto in ("smtp", "imap", "pop3", "http"):
            old_s, new_s = getattr(old, proto), getattr(new, proto)
            changed = (_listener_key(old_s) != _listener_key(new_s)) if proto != "http" else (
                old_s != new_s)
            if changed:
                self._unbind(proto)
                try:
                    await self._bind(proto)
                except OSError as exc:
                    log.error("rebind_failed", proto=proto, error=exc.strerror)
        log.info("reloaded", listeners={p: [f"{h}:{port}" for h, port in a]
                                        for p, a in self.addresses.items()},
                 accounts=len(new.accounts), users=len(new.users))
        self.notify.ready("reloaded")
        return True

    # -- health and metrics --------------------------------------------------------------------

    def readiness(self) -> dict[str, Any]:
        if self.phase != "ready":
            return {"status": self.phase, "reasons": [f"relay is {self.phase}"]}
        # the bare number, as /readyz and `relay365 health` have always shown it
        reasons = [f"{v.mailbox}: {v.state}" + (f" ({v.code.removeprefix('AADSTS')})" if v.code else "")
                   + (f": {v.action}" if v.action else "")
                   for v in self.tokens.views() if v.state is AccountState.NEEDS_AUTH]
        if self.spool is not None:
            depth, oldest = self.spool.stats()
            if oldest > SPOOL_STUCK_AFTER:
                reasons.append(f"spool: oldest of {depth} queued message(s) is {int(oldest)} s old; "
                               f"see relay365 queue list")
        return {"status": "degraded" if reasons else "ready", "reasons": reasons,
                "listeners": {p: [f"{h}:{port}" for h, port in a] for p, a in self.addresses.items()}}

    def _register_gauges(self) -> None:
        metrics.register_gauge(
            "relay365_accounts_needing_auth", "Accounts whose refresh token needs re-authorisation",
            lambda: [({}, sum(v.state is AccountState.NEEDS_AUTH for v in self.tokens.views()))])
        metrics.register_gauge(
            "relay365_account_state", "1 for each account's current token state",
            lambda: [({"mailbox": v.mailbox, "state": v.state}, 1) for v in self.tokens.views()])
        metrics.register_gauge(
            "relay365_active_connections", "Client connections now open, by protocol",
            lambda: [({"proto": "smtp"}, self.smtp.active if self.smtp else 0),
                     ({"proto": "imap"}, self.imap.connections if self.imap else 0),
                     ({"proto": "pop3"}, self.pop3.connections if self.pop3 else 0)])
        if self.spool is not None:
            spool = self.spool
            metrics.register_gauge("relay365_spool_depth", "Messages waiting in the spool",
                                   lambda: [({}, spool.stats()[0])])
            metrics.register_gauge("relay365_spool_oldest_age_seconds",
                                   "Age of the oldest message waiting in the spool (0 when empty)",
                                   lambda: [({}, spool.stats()[1])])
