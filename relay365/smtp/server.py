"""The local SMTP listener: the thin asyncio adapter between aiosmtpd and the policy core.

Theory of operation. `RelaySMTP` (`protocol`) is aiosmtpd's protocol; its hooks land here. For each
command the handler asks the session's `SmtpPolicy` (`policy`, pure) what to do and carries out the
one effect it returns - an upstream MAIL/RCPT/DATA on the session's `UpstreamSMTP`, a spool submit,
a reply - then reports the outcome back to the policy, which chooses what the client hears.
Local logins are `relay365.localauth` (shared with IMAP); exceptions become replies through
`relay365.replies`, never their text. One `RelayHandler` lives as long as the daemon: reloads
reconfigure it in place and rebound listeners keep using it, so its connection counts, drain and
upstream pool always cover every session. One `smtp_session` line sums up each session.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import structlog
from aiosmtpd.smtp import Envelope
from aiosmtpd.smtp import Session as AiosmtpdSession

from .. import metrics, replies
from ..config import Config
from ..delivery import Deliverer
from ..delivery.message import Body
from ..delivery.pool import UpstreamPool
from ..errors import RelayError
from ..localauth import LocalAuth
from ..proxyproto import is_trusted, real_client
from ..spool.worker import SpoolWorker
from ..states import ConnRefused
from ..throttle import ConnectionLimits
from ..tlsutil import client_context, reload_tls
from ..tokens.manager import TokenManager
from . import policy as core
from .auth import AuthHooks
from .outbound import Outbound, accepted
from .protocol import RelaySMTP
from .session import Session
from .transfer import Transfer

log = structlog.get_logger("relay365.smtp")


class RelayHandler(AuthHooks, Outbound):
    def __init__(self, config: Config, tokens: TokenManager, auth: LocalAuth,
                 spool: SpoolWorker | None = None, graph: Deliverer | None = None) -> None:
        self.tokens, self.auth, self.spool, self.graph = tokens, auth, spool, graph
        self.limits = ConnectionLimits(config.limits.max_connections,
                                       config.limits.max_connections_per_ip)
        self.sessions: set[RelaySMTP] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.pool = UpstreamPool(config.upstream.smtp_pool_idle)
        self.configure(config)

    @property
    def active(self) -> int:
        return len(self.sessions)

    def configure(self, config: Config) -> None:
        assert config.smtp is not None
        old = getattr(self, "config", None)
        self.config, self.smtp = config, config.smtp
        self.body_dir = config.state_dir / "spool" / "tmp"  # where a large DATA goes to disk
        self.limits.max_total = config.limits.max_connections
        self.limits.max_per_ip = config.limits.max_connections_per_ip
        self.upstream_tls = client_context(config.upstream.ca_file)
        if old is not None and old.upstream != config.upstream:
            self._background(self.pool.close_all())  # parked sessions belong to the old upstream
        self.pool.idle_seconds = config.upstream.smtp_pool_idle
        self.rules = core.Rules(config.smtp.sender, tuple(config.smtp.unauthenticated),
                                spool=self.spool is not None,
                                own_accounts=frozenset(a.mailbox.lower() for a in config.accounts))
        self.tls = reload_tls(getattr(self, "tls", None), config.smtp)

    # -- connections (called by RelaySMTP) ---------------------------------------------------

    def admit(self, peer: str) -> ConnRefused | None:
        refused: ConnRefused | None = ConnRefused.UNTRUSTED_PROXY
        if not self.smtp.proxy_protocol or is_trusted(peer, self.smtp.trusted_proxies):
            refused = self.limits.admit(peer)
        if refused is not None:
            log.warning("connection_refused", reason=refused)
            metrics.SESSIONS.labels("smtp", refused).inc()
        return refused

    def new_policy(self, peer: str) -> core.SmtpPolicy:
        return core.SmtpPolicy(self.rules, peer)

    def opened(self, server: RelaySMTP) -> None:
        self.sessions.add(server)

    def closed(self, server: RelaySMTP, state: Session) -> None:
        self.sessions.discard(server)
        self.limits.release(state.peer)
        p = state.policy
        metrics.SESSIONS.labels("smtp", p.outcome).inc()
        log.info("smtp_session", conn=state.conn_id, peer=state.peer,
                 user=p.sender.user if p.sender else None,
                 mailbox=p.sender.mailbox if p.sender else None, messages=p.messages,
                 recipients=p.recipients, size=state.bytes, upstream_reply=p.last_reply,
                 outcome=p.outcome, auth_failures=state.auth_failures,
                 seconds=round(time.monotonic() - state.started, 3))
        metrics.record_session("smtp", peer=state.peer, user=p.sender.user if p.sender else None, mailbox=p.sender.mailbox if p.sender else None, outcome=p.outcome, messages=p.messages, size=state.bytes, upstream_reply=p.last_reply, seconds=round(time.monotonic() - state.started, 3))  # noqa: E501
        if state.upstream is not None:
            self._background(self.pool.give(state.upstream))

    def shutdown(self) -> None:
        """SIGTERM: idle sessions hear 421 now, the others after their transaction."""
        for server in list(self.sessions):
            server.shutdown()

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pool.close_all()

    # -- the transaction, passed on as it comes ---------------------------------------------

    async def handle_EHLO(self, server: RelaySMTP, session: AiosmtpdSession, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname  # aiosmtpd leaves that to a handler that has this hook
        await self._reset(server)
        return responses

    async def handle_HELO(self, server: RelaySMTP, session: AiosmtpdSession, envelope: Envelope,
                          hostname: str) -> str:
        session.host_name = hostname
        await self._reset(server)
        return f"250 {server.hostname}"

    async def handle_RSET(self, server: RelaySMTP, session: AiosmtpdSession,
                          envelope: Envelope) -> str:
        await self._reset(server)
        return replies.RESET_OK

    async def _reset(self, server: RelaySMTP) -> None:
        """RSET, EHLO, HELO: the upstream hears RSET only when it has a transaction open (clients
        that RSET before every message would otherwise pay a round trip to Office 365 each)."""
        state = _state(server)
        open_upstream = state.policy.upstream_open
        state.policy.reset()
        if open_upstream and state.upstream is not None:
            await state.upstream.rset()

    async def handle_MAIL(self, server: RelaySMTP, session: AiosmtpdSession, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        state = _state(server)
        effect = state.policy.mail(address, mail_options)
        if isinstance(effect, core.UpstreamMail):
            effect = state.policy.mail_done(await self._upstream_mail(state, effect))
        if state.policy.sender is None:
            log.warning("relay_denied", reason="not authenticated and not in smtp.unauthenticated")
        elif effect.text.startswith("2"):
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
        return effect.text

    async def handle_RCPT(self, server: RelaySMTP, session: AiosmtpdSession, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        state = _state(server)
        effect = state.policy.rcpt(address)
        if isinstance(effect, core.UpstreamRcpt):
            effect = await self._upstream_rcpt(state, effect)
        if effect.text.startswith("2"):
            envelope.rcpt_tos.append(address)
        return effect.text

    async def _upstream_rcpt(self, state: Session, it: core.UpstreamRcpt) -> core.Reply:
        """This RCPT upstream (with the held MAIL, when the policy holds one); the policy's reply."""
        outcome: core.Accepted | core.Failed | None
        if it.mail is not None:
            mail, outcome = await self._upstream_envelope(state, it.rcpt, it.mail)
            reply = state.policy.envelope_done(it.rcpt, mail, outcome)
        else:
            up = state.upstream
            if up is None or not up.connected:
                outcome = core.Failed(replies.CONNECTION_LOST_RCPT, lost=True)
            else:
                try:
                    outcome = accepted(await up.rcpt(it.rcpt))
                except RelayError as exc:
                    outcome = self._failed(state, exc, "rcpt", recipient=it.rcpt)
            reply = state.policy.rcpt_done(it.rcpt, outcome)
        fell_back = state.policy.fell_back
        if outcome is not None and fell_back is not None and fell_back == outcome_reply(outcome):
            log.info("smtp_fallback_spool", recipient=it.rcpt, reason=fell_back)
        return reply

    def new_body(self) -> Body:
        return Body(self.body_dir)

    async def begin_data(self, server: RelaySMTP, body: Body) -> Transfer:
        """The client's DATA starts: where it goes is decided now (the content does not change
        that), so a direct message streams upstream as it arrives."""
        transfer = Transfer(self, _state(server), body)
        await transfer.begin()
        return transfer

    # -- the rest of aiosmtpd's hooks ----------------------------------------------------------

    async def handle_PROXY(self, server: RelaySMTP, session: AiosmtpdSession, envelope: Envelope,
                           proxy_data: Any) -> bool:
        """A trusted proxy told us who the client really is: use that address from now on."""
        state = _state(server)
        if proxy_data is None or not proxy_data.valid:
            log.warning("proxy_header_invalid")
            return False
        real = real_client(proxy_data)
        if real is None:  # LOCAL: the proxy's own health check
            return True
        refused = self.limits.admit(real)
        if refused:
            log.warning("connection_refused", peer=real, reason=refused)
            return False
        self.limits.release(state.peer)
        log.info("proxied", proxy=state.peer, peer=real)
        structlog.contextvars.bind_contextvars(peer=real)
        state.peer = state.policy.peer = real
        return True

    async def handle_exception(self, error: Exception) -> str:
        log.error("smtp_internal_error", error=type(error).__name__, exc_info=error)
        return replies.INTERNAL_ERROR

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _state(server: RelaySMTP) -> Session:
    assert server.state is not None, "a hook ran for a connection that was never admitted"
    return server.state


def outcome_reply(outcome: core.Accepted | core.Failed) -> str | None:
    return outcome.reply if isinstance(outcome, core.Failed) else None
