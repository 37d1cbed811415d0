"""The outbound half of the SMTP adapter: the upstream session, its commands, and the spool.

Each method carries out one effect of the policy core (`policy`) and returns the outcome for it
(`Accepted`, `Failed`, `Spooled`, `SpoolFailed`), logging the fact once; exceptions are turned
into replies with `relay365.replies`, never their text.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from .. import metrics, replies
from ..config import Config, SmtpConfig
from ..delivery import Deliverer, Outgoing, UpstreamSMTP, open_session
from ..delivery.message import Body
from ..delivery.pipeline import Envelope
from ..delivery.pool import UpstreamPool
from ..delivery.route import auth_disabled_error
from ..delivery.smtp import refused
from ..errors import RelayError, TokenError, UpstreamError
from ..spool.entry import SpoolError, SpoolFullError
from ..spool.worker import SpoolWorker
from ..tokens.manager import TokenManager
from . import policy as core
from .rewrite import rewrite_message
from .session import Session

log = structlog.get_logger("relay365.smtp")


class Outbound:
    config: Config
    smtp: SmtpConfig
    tokens: TokenManager
    spool: SpoolWorker | None
    pool: UpstreamPool
    upstream_tls: Any
    graph: Deliverer | None  # Microsoft Graph, for accounts with send_via graph (or auto, switched)

    async def _upstream_mail(self, state: Session, mail: core.UpstreamMail
                             ) -> core.Accepted | core.Failed | core.ViaGraph | core.Pipelined:
        if self.graph is not None and self.tokens.sends_via_graph(mail.mailbox):
            return core.ViaGraph()
        try:
            upstream = await self._upstream(state, mail.mailbox)
            if upstream.pipelining:
                return core.Pipelined()  # MAIL goes with the first RCPT
            try:
                return accepted(await upstream.mail(mail.sender, list(mail.options)))
            except UpstreamError as exc:
                if exc.code is not None or not state.reused:
                    raise
                # a parked session the server had closed meanwhile: once more, on a new one
                log.info("upstream_reuse_failed", mailbox=mail.mailbox)
                upstream = await self._upstream(state, mail.mailbox)
                return accepted(await upstream.mail(mail.sender, list(mail.options)))
        except RelayError as exc:
            if await self._switched_to_graph(state, mail.mailbox, exc):
                return core.ViaGraph()
            return self._failed(state, exc, "mail")

    async def _upstream_envelope(self, state: Session, rcpt: str, mail: core.UpstreamMail
                                 ) -> tuple[core.Accepted | core.Failed | core.ViaGraph,
                                            core.Accepted | core.Failed | None]:
        """The held MAIL and this RCPT in one write: the outcome of each (no RCPT outcome when
        MAIL failed). A parked session found dead here is replaced once, as at MAIL."""
        try:
            env = await self._envelope(state, mail, rcpt)
            if not env.mail_ok:
                raise refused(env.mail, "the sender")
        except RelayError as exc:
            if await self._switched_to_graph(state, mail.mailbox, exc):
                return core.ViaGraph(), None
            return self._failed(state, exc, "mail"), None
        sender_ok, reply = accepted(str(env.mail)), env.rcpts[0]
        if env.accepted:
            return sender_ok, accepted(str(reply))
        return sender_ok, self._failed(state, refused(reply, "the recipient"), "rcpt", recipient=rcpt)

    async def _envelope(self, state: Session, mail: core.UpstreamMail, rcpt: str) -> Envelope:
        upstream = await self._upstream(state, mail.mailbox)
        try:
            return await upstream.envelope(mail.sender, mail.options, [rcpt], reset=False)
        except UpstreamError as exc:
            if exc.code is not None or not state.reused:
                raise
            log.info("upstream_reuse_failed", mailbox=mail.mailbox)
            upstream = await self._upstream(state, mail.mailbox)
            return await upstream.envelope(mail.sender, mail.options, [rcpt], reset=False)

    async def _switched_to_graph(self, state: Session, mailbox: str, exc: RelayError) -> bool:
        """send_via auto and Office 365 says SMTP AUTH is off: this message and later ones go
        through Graph (the SMTP session, if any, is of no use to this mailbox any more)."""
        if (self.graph is None or not auth_disabled_error(exc)
                or not self.tokens.may_switch_to_graph(mailbox)):
            return False
        assert isinstance(exc, UpstreamError)
        await self.tokens.switch_to_graph(mailbox, f"{exc.code} {replies.one_line(exc.text, 200)}")
        up, state.upstream = state.upstream, None
        if up is not None:
            await up.close()
        return self.tokens.sends_via_graph(mailbox)

    async def _graph_send(self, state: Session, it: core.GraphSend,
                          message: Body) -> core.Accepted | core.Failed:
        """The whole message through Microsoft Graph: accepted for every recipient, or none."""
        assert self.graph is not None
        data = rewrite_message(message, it.rewrite_to) if it.rewrite_to else message
        started = time.monotonic()
        try:
            await self.graph.deliver(Outgoing(it.mailbox, it.sender, it.rcpts, data))
        except RelayError as exc:
            return self._failed(state, exc, "graph", size=data.size)
        return self._relayed(state, replies.GRAPH_ACCEPTED, data.size, time.monotonic() - started,
                             via="graph")

    def _relayed(self, state: Session, reply: str, size: int, seconds: float,
                 via: str = "smtp") -> core.Accepted:
        """Office 365 took the message: count it, say so once."""
        if via == "smtp":  # GraphDeliverer counts its own
            metrics.UPSTREAM_LATENCY.labels("smtp", "data").observe(seconds)
            metrics.MESSAGES.inc(via="smtp")
            metrics.BYTES.labels("smtp", "up").inc(size)
        state.bytes += size
        p = state.policy
        log.info("message_relayed", via=via, user=p.sender.user if p.sender else None,
                 mailbox=p.sender.mailbox if p.sender else None,
                 recipients=len(server_rcpts(state)), size=size,
                 upstream_reply=replies.one_line(reply, 120), seconds=round(seconds, 3))
        return accepted(reply)

    async def _spool(self, state: Session, it: core.SpoolIt,
                     message: Body) -> core.Spooled | core.SpoolFailed:
        assert self.spool is not None
        if it.reset_first and state.upstream is not None:
            await state.upstream.rset()  # end the upstream's half-open transaction
        if it.reason is not None and it.rcpts == tuple(server_rcpts(state)):
            log.info("smtp_fallback_spool", user=state.policy.sender and state.policy.sender.user,
                     mailbox=it.mailbox, reason=it.reason)
        data = rewrite_message(message, it.rewrite_to) if it.rewrite_to else message
        started = time.monotonic()
        try:
            entry_id = await self.spool.submit(it.mailbox, it.sender, it.rcpts, data,
                                               mail_options=it.options)
        except SpoolError as exc:
            reply = replies.SPOOL_FULL if isinstance(exc, SpoolFullError) else replies.SPOOL_ERROR
            log.error("spool_refused", mailbox=it.mailbox, error=str(exc), reply=reply)
            return core.SpoolFailed(reply)
        metrics.SPOOLED.inc()
        state.bytes += data.size
        log.info("message_queued", user=state.policy.sender and state.policy.sender.user,
                 mailbox=it.mailbox, id=entry_id, recipients=len(it.rcpts), size=data.size,
                 fallback=it.reason, seconds=round(time.monotonic() - started, 3))
        return core.Spooled(entry_id)

    # -- the upstream session ----------------------------------------------------------------

    async def _upstream(self, state: Session, mailbox: str) -> UpstreamSMTP:
        up = state.upstream
        if up is not None and up.connected and up.mailbox == mailbox:
            return up
        state.upstream = None
        if up is not None:
            await self.pool.give(up)  # another mailbox now; this one may serve someone else
        up = self.pool.take(mailbox)
        state.reused = up is not None
        if up is not None:
            state.upstream = up
            log.info("upstream_reused", mailbox=mailbox,
                     age=round(time.monotonic() - (up.opened_at or 0), 1))
            return up
        up = await open_session(self.config.upstream, self.upstream_tls, self.tokens, mailbox,
                                local_hostname=self.smtp.hostname)
        state.upstream = up
        metrics.UPSTREAM_LATENCY.labels("smtp", "login").observe(up.connect_seconds or 0)
        log.info("upstream_connected", mailbox=mailbox, host=self.config.upstream.smtp.host,
                 seconds=round(up.connect_seconds or 0, 3))
        return up

    def _failed(self, state: Session, exc: RelayError, stage: str, **extra: Any) -> core.Failed:
        reply = replies.for_exception(exc)
        sender = state.policy.sender
        fields = dict(user=sender.user if sender else None, mailbox=sender.mailbox if sender else None,
                      stage=stage, reply=reply, **extra)
        if isinstance(exc, TokenError):
            log.warning("smtp_token_unavailable", code=exc.code, error=exc.error, **fields)
        elif isinstance(exc, UpstreamError):
            log.warning("smtp_upstream_failed", error=str(exc), **fields)
        lost = isinstance(exc, UpstreamError) and (exc.code is None or exc.code == 421)
        return core.Failed(reply, lost=lost)


def accepted(reply: str) -> core.Accepted:
    return core.Accepted(int(reply[:3]), reply[4:])


def server_rcpts(state: Session) -> list[str]:
    return state.policy.rcpts
