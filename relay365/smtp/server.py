"""The local SMTP listener: aiosmtpd in front, one upstream Office 365 session behind each client.

Theory of operation. aiosmtpd parses SMTP; `RelayHandler`'s hooks hold our policy:
- AUTH PLAIN / LOGIN are our own async `auth_*` hooks; the check itself (scrypt in a thread,
  throttling, the `auth_failed` line for fail2ban) is `relay365.localauth`, shared with IMAP.
- MAIL decides who the client is sending as: its user's mailbox after AUTH, or the mailbox of the
  `unauthenticated` network it comes from; anyone else gets 530 - never an open relay. The upstream
  session (TLS + XOAUTH2) is opened then, and the MAIL, each RCPT and DATA are passed on as they come,
  so the client gets the upstream's own answer to each (250 only once Office 365 accepted).
- With `sender: rewrite` the envelope sender and the From header become the mailbox.
- Every failure becomes a reply chosen in `relay365.replies`; nothing of an exception's text.
- Delivery modes (per user and per `unauthenticated` network): `direct` is the above; `spool` opens
  no upstream session at all - MAIL and RCPT are answered here and DATA is answered 250 only once
  the message is durably in the spool (`relay365.spool`), which delivers it later; `fallback: spool`
  is direct until the answer would be a 4xx (network, TLS, token, or the upstream's own 4xx), then
  the transaction continues into the spool and the client hears 250. 5xx always goes back as 5xx.
One summary line per session (`smtp_session`) says who, as whom, how much and how it ended.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import time
from dataclasses import dataclass, field

import structlog
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from .. import metrics, replies
from ..config import Config, SmtpConfig, UnauthenticatedNet
from ..delivery.pool import UpstreamPool
from ..delivery.smtp import UpstreamSMTP, open_session
from ..errors import RelayError, TokenError, UpstreamError
from ..localauth import LocalAuth
from ..proxyproto import PROXY_TIMEOUT, is_trusted, real_client
from ..sasl import SaslError, b64decode_strict, decode_plain, decode_text
from ..secret import Secret
from ..spool.queue import SpoolError, SpoolFullError
from ..spool.worker import SpoolWorker
from ..throttle import ConnectionLimits
from ..tlsutil import client_context, nodelay, server_context
from ..tokens.manager import TokenManager
from .rewrite import rewrite_from

log = structlog.get_logger("relay365.smtp")
_conn_ids = itertools.count(1)


@dataclass
class SessionState:
    conn_id: int
    peer: str
    started: float = field(default_factory=time.monotonic)
    user: str | None = None
    mailbox: str | None = None
    upstream: UpstreamSMTP | None = None
    messages: int = 0
    recipients: int = 0
    bytes: int = 0
    auth_failures: int = 0
    last_reply: str | None = None
    outcome: str = "no_mail"
    reused: bool = False  # the upstream session came from the pool
    delivery: str = "direct"  # of the current sender (user or network): direct | spool
    fallback: str = "none"
    txn: Transaction | None = None


@dataclass
class Transaction:
    """One MAIL ... DATA. `spooled` switches the rest of it to the spool (spool mode or fallback)."""

    sender: str
    options: list[str]
    spooled: bool
    deferred: list[str] = field(default_factory=list)  # fallback: recipients the upstream 4xx'd
    accepted: int = 0  # recipients the upstream accepted
    reason: str | None = None  # why a direct transaction fell back to the spool


class RelaySMTP(SMTP):
    """aiosmtpd's protocol with a per-connection `state` and a summary line when it ends."""

    refused: str | None = None

    def connection_made(self, transport) -> None:
        first = self._original_transport is None and getattr(self, "state", None) is None
        if first:
            peer = str((transport.get_extra_info("peername") or ("?", 0))[0])
            cfg = self.event_handler.smtp
            if cfg.proxy_protocol and not is_trusted(peer, cfg.trusted_proxies):
                self.refused = "untrusted_proxy"  # closed without a word: it speaks PROXY, not SMTP
                log.warning("connection_refused", proto="smtp", peer=peer, reason=self.refused)
                transport.close()
                return
            self.refused = self.event_handler.limits.admit(peer)
            if self.refused:  # answered here, before aiosmtpd starts the session
                log.warning("connection_refused", proto="smtp", peer=peer, reason=self.refused)
                metrics.SESSIONS.labels("smtp", self.refused).inc()
                transport.write(replies.TOO_MANY_CONNECTIONS.encode() + b"\r\n")
                transport.close()
                return
        super().connection_made(transport)
        if first:
            nodelay(transport)
            self.state = SessionState(next(_conn_ids), peer)
            self.event_handler.active += 1
            self._expiry = self.loop.call_later(self.event_handler.smtp.max_session_time, self._expired)

    def _expired(self) -> None:
        """The session is older than smtp.max_session_time: RFC 5321 allows a 421 at any time."""
        if self.transport is not None and not self.transport.is_closing():
            self.state.outcome = "session_time"
            log.warning("smtp_session_time_limit", conn=self.state.conn_id, peer=self.state.peer,
                        seconds=self.event_handler.smtp.max_session_time)
            self.transport.write(replies.SESSION_TIME_LIMIT.encode() + b"\r\n")
            self.transport.close()

    def connection_lost(self, error) -> None:
        if self.refused:
            return
        expiry = getattr(self, "_expiry", None)
        if expiry is not None:
            expiry.cancel()
        super().connection_lost(error)
        self.event_handler.session_ended(self)


class RelayHandler:
    def __init__(self, config: Config, tokens: TokenManager, auth: LocalAuth,
                 spool: SpoolWorker | None = None) -> None:
        self.tokens = tokens
        self.auth = auth
        self.spool = spool
        self.limits = ConnectionLimits(config.limits.max_connections,
                                       config.limits.max_connections_per_ip)
        self.active = 0  # connections now
        self._tasks: set[asyncio.Task] = set()
        self.pool = UpstreamPool(config.upstream.smtp_pool_idle)
        self.configure(config)

    def configure(self, config: Config) -> None:
        assert config.smtp is not None
        self.config = config
        self.smtp: SmtpConfig = config.smtp
        self.limits.max_total = config.limits.max_connections
        self.limits.max_per_ip = config.limits.max_connections_per_ip
        self.upstream_tls = client_context(config.upstream.ca_file)
        if config.upstream != getattr(self, "_upstream_cfg", config.upstream):
            self._background(self.pool.close_all())  # parked sessions belong to the old upstream
        self._upstream_cfg = config.upstream
        self.pool.idle_seconds = config.upstream.smtp_pool_idle

    # -- who is sending ----------------------------------------------------------------------

    def _unauthenticated_net(self, peer: str) -> UnauthenticatedNet | None:
        try:
            ip = ipaddress.ip_address(peer.split("%")[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        for net in self.smtp.unauthenticated:
            if ip.version == net.network.version and ip in net.network:
                return net
        return None

    async def auth_PLAIN(self, server: RelaySMTP, args: list[str]) -> AuthResult:
        blob = args[1] if len(args) > 1 else None
        if blob is None:
            raw = await server.challenge_auth("")
            if not isinstance(raw, bytes):
                return AuthResult(success=False, handled=True)
        else:
            try:
                raw = b64decode_strict(blob)
            except SaslError:
                return AuthResult(success=False, handled=False, message="501 5.5.2 Cannot decode base64")
        try:
            creds = decode_plain(raw)
        except SaslError as exc:
            server.state.auth_failures += 1
            log.info("auth_malformed", conn=server.state.conn_id, peer=server.state.peer, reason=str(exc))
            return AuthResult(success=False, handled=False, message="501 5.5.2 " + str(exc))
        return await self._check(server, "PLAIN", creds.username, creds.password)

    async def auth_LOGIN(self, server: RelaySMTP, args: list[str]) -> AuthResult:
        try:
            if len(args) > 1:
                user_raw = b64decode_strict(args[1])
            else:
                user_raw = await server.challenge_auth("Username:")
                if not isinstance(user_raw, bytes):
                    return AuthResult(success=False, handled=True)
            pw_raw = await server.challenge_auth("Password:")
            if not isinstance(pw_raw, bytes):
                return AuthResult(success=False, handled=True)
            user, password = decode_text(user_raw, "user name"), decode_text(pw_raw, "password")
        except SaslError as exc:
            return AuthResult(success=False, handled=False, message="501 5.5.2 " + str(exc))
        return await self._check(server, "LOGIN", user, Secret(password))

    async def _check(self, server: RelaySMTP, mech: str, username: str, password: Secret) -> AuthResult:
        state = server.state
        outcome = await self.auth.login("smtp", state.peer, username, password, mech, state.conn_id)
        if outcome.user is not None:
            state.user, state.mailbox = outcome.user.username, outcome.user.mailbox
            state.delivery, state.fallback = outcome.user.delivery, outcome.user.fallback
            return AuthResult(success=True, auth_data=username)
        state.auth_failures += 1
        return AuthResult(success=False, handled=False, message=(
            replies.AUTH_BLOCKED if outcome.result == "blocked" else replies.AUTH_FAILED))

    # -- the transaction, passed on as it comes -----------------------------------------------

    async def handle_MAIL(self, server: RelaySMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        state = server.state
        if state.user is None:
            net = self._unauthenticated_net(state.peer)
            if net is None:
                log.warning("relay_denied", conn=state.conn_id, peer=state.peer,
                            reason="not authenticated and not in smtp.unauthenticated")
                return replies.AUTH_REQUIRED
            state.mailbox, state.delivery, state.fallback = net.mailbox, net.delivery, net.fallback
        assert state.mailbox is not None
        sender = state.mailbox if self.smtp.sender == "rewrite" else address
        spooling = state.delivery == "spool" and self.spool is not None
        state.txn = txn = Transaction(sender, list(mail_options), spooled=spooling)
        if not spooling:
            try:
                upstream = await self._upstream(state)
                try:
                    reply = await upstream.mail(sender, mail_options)
                except UpstreamError as exc:
                    if exc.code is not None or not state.reused:
                        raise
                    # a parked session the server had closed meanwhile: once more, on a new one
                    log.info("upstream_reuse_failed", conn=state.conn_id, mailbox=state.mailbox)
                    upstream = await self._upstream(state)
                    reply = await upstream.mail(sender, mail_options)
            except RelayError as exc:
                reply = self._failed(state, exc, "mail")
                if not self._fall_back(state, reply):
                    state.txn = None
                    return reply
                reply = "250 2.1.0 Sender OK"
        else:
            reply = "250 2.1.0 Sender OK"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return reply

    def _fall_back(self, state: SessionState, reply: str) -> bool:
        """Continue this transaction into the spool instead of answering `reply` (a 4xx)?"""
        txn = state.txn
        if txn is None or state.fallback != "spool" or self.spool is None or not reply.startswith("4"):
            return False
        if not txn.spooled:
            txn.spooled, txn.reason = True, reply
            log.info("smtp_fallback_spool", conn=state.conn_id, peer=state.peer, user=state.user,
                     mailbox=state.mailbox, reason=reply)
        return True

    async def handle_RCPT(self, server: RelaySMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        state, txn = server.state, server.state.txn
        if txn is None:
            return "503 5.5.1 Error: need MAIL command"
        if txn.spooled:
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 Recipient OK"
        if state.upstream is None or not state.upstream.connected:
            reply = "451 4.4.1 Office 365 connection was lost; start the transaction again"
            if not self._fall_back(state, reply):
                return reply
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 Recipient OK"
        try:
            reply = await state.upstream.rcpt(address)
        except RelayError as exc:
            reply = self._failed(state, exc, "rcpt", recipient=address)
            lost = isinstance(exc, UpstreamError) and (exc.code is None or exc.code == 421)
            if lost and self._fall_back(state, reply):  # the session is gone: spool all of it
                envelope.rcpt_tos.append(address)
                return "250 2.1.5 Recipient OK"
            if not lost and state.fallback == "spool" and self.spool and reply.startswith("4"):
                txn.deferred.append(address)  # this one recipient goes by the spool
                envelope.rcpt_tos.append(address)
                log.info("smtp_fallback_spool", conn=state.conn_id, peer=state.peer,
                         user=state.user, mailbox=state.mailbox, recipient=address, reason=reply)
                return "250 2.1.5 Recipient OK"
            return reply
        txn.accepted += 1
        envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:
        state, txn = server.state, server.state.txn
        state.txn = None
        if txn is None:
            return "503 5.5.1 Error: need MAIL command"
        message = envelope.original_content or b""
        if self.smtp.sender == "rewrite":
            message = rewrite_from(message, state.mailbox or "")
        if txn.spooled or txn.accepted == 0:  # all by the spool (also: every recipient deferred)
            if not txn.spooled and state.upstream is not None:
                await state.upstream.rset()  # end the upstream's half-open transaction
            return await self._spool(state, txn, envelope.rcpt_tos, message)
        if state.upstream is None or not state.upstream.connected:
            reply = "451 4.4.1 Office 365 connection was lost; try again"
            if self._fall_back(state, reply):
                return await self._spool(state, txn, envelope.rcpt_tos, message)
            return reply
        started = time.monotonic()
        try:
            reply = await state.upstream.data(message)
        except RelayError as exc:
            reply = self._failed(state, exc, "data", size=len(message))
            if self._fall_back(state, reply):
                return await self._spool(state, txn, envelope.rcpt_tos, message)
            return reply
        if txn.deferred:
            # Office 365 has it for the others; the 4xx'd recipients go by the spool. If that
            # fails the client must hear it, even though a resend duplicates for the others.
            spooled = await self._spool(state, txn, txn.deferred, message)
            if not spooled.startswith("2"):
                return spooled
        metrics.UPSTREAM_LATENCY.labels("smtp", "data").observe(time.monotonic() - started)
        metrics.MESSAGES.inc()
        metrics.BYTES.labels("smtp", "up").inc(len(message))
        state.messages += 1
        state.recipients += len(envelope.rcpt_tos)
        state.bytes += len(message)
        state.last_reply, state.outcome = replies.one_line(reply, 120), "relayed"
        log.info("message_relayed", conn=state.conn_id, peer=state.peer, user=state.user,
                 mailbox=state.mailbox, recipients=len(envelope.rcpt_tos), size=len(message),
                 upstream_reply=state.last_reply, seconds=round(time.monotonic() - started, 3))
        return replies.upstream_reply(int(reply[:3]), reply[4:])

    async def handle_PROXY(self, server: RelaySMTP, session: Session, envelope: Envelope,
                           proxy_data) -> bool:
        """A trusted proxy told us who the client really is: use that address from now on."""
        state = server.state
        real = real_client(proxy_data)
        if proxy_data is None or not proxy_data.valid:
            log.warning("proxy_header_invalid", proto="smtp", peer=state.peer)
            return False
        if real is None:  # LOCAL: the proxy's own health check
            return True
        refused = self.limits.admit(real)
        if refused:
            log.warning("connection_refused", proto="smtp", peer=real, reason=refused)
            return False
        self.limits.release(state.peer)
        log.info("proxied", proto="smtp", conn=state.conn_id, proxy=state.peer, peer=real)
        state.peer = real
        return True

    async def _spool(self, state: SessionState, txn: Transaction, rcpts: list[str],
                     message: bytes) -> str:
        assert self.spool is not None and state.mailbox is not None
        started = time.monotonic()
        try:
            entry_id = await self.spool.submit(state.mailbox, txn.sender, rcpts, message,
                                               mail_options=txn.options)
        except SpoolFullError as exc:
            reply = replies.SPOOL_FULL
            log.error("spool_refused", conn=state.conn_id, peer=state.peer, mailbox=state.mailbox,
                      error=str(exc), reply=reply)
        except SpoolError as exc:
            reply = replies.SPOOL_ERROR
            log.error("spool_refused", conn=state.conn_id, peer=state.peer, mailbox=state.mailbox,
                      error=str(exc), reply=reply)
        else:
            metrics.SPOOLED.inc()
            state.messages += 1
            state.recipients += len(rcpts)
            state.bytes += len(message)
            reply = f"250 2.0.0 OK queued as {entry_id}"
            state.last_reply, state.outcome = reply, "queued"
            log.info("message_queued", conn=state.conn_id, peer=state.peer, user=state.user,
                     mailbox=state.mailbox, id=entry_id, recipients=len(rcpts), size=len(message),
                     fallback=txn.reason, seconds=round(time.monotonic() - started, 3))
            return reply
        state.last_reply, state.outcome = reply, "deferred"
        return reply

    async def handle_RSET(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:
        server.state.txn = None
        if server.state.upstream is not None:
            await server.state.upstream.rset()
        return "250 OK"

    async def handle_exception(self, error: Exception) -> str:
        log.error("smtp_internal_error", error=type(error).__name__, exc_info=error)
        return replies.INTERNAL_ERROR

    async def _upstream(self, state: SessionState) -> UpstreamSMTP:
        assert state.mailbox is not None
        up = state.upstream
        if up is not None and up.connected and up.mailbox == state.mailbox:
            return up
        state.upstream = None
        if up is not None:
            await self.pool.give(up)  # another mailbox now; this one may serve someone else
        up = self.pool.take(state.mailbox)
        state.reused = up is not None
        if up is not None:
            state.upstream = up
            log.info("upstream_reused", conn=state.conn_id, mailbox=state.mailbox,
                     age=round(time.monotonic() - (up.opened_at or 0), 1))
            return up
        cfg = self.config.upstream
        up = await open_session(cfg, self.upstream_tls, self.tokens, state.mailbox,
                                local_hostname=self.smtp.hostname)
        state.upstream = up
        metrics.UPSTREAM_LATENCY.labels("smtp", "login").observe(up.connect_seconds or 0)
        log.info("upstream_connected", conn=state.conn_id, mailbox=state.mailbox,
                 host=cfg.smtp.host, seconds=round(up.connect_seconds or 0, 3))
        return up

    def _failed(self, state: SessionState, exc: RelayError, stage: str, **extra) -> str:
        reply = replies.for_exception(exc)
        state.last_reply = reply[:120]
        state.outcome = "rejected" if reply.startswith("5") else "deferred"
        fields = dict(conn=state.conn_id, peer=state.peer, user=state.user, mailbox=state.mailbox,
                      stage=stage, reply=reply, **extra)
        if isinstance(exc, TokenError):
            log.warning("smtp_token_unavailable", code=exc.code, error=exc.error, **fields)
        elif isinstance(exc, UpstreamError):
            log.warning("smtp_upstream_failed", error=str(exc), **fields)
        return reply

    # -- session end ---------------------------------------------------------------------------

    def session_ended(self, server: RelaySMTP) -> None:
        state: SessionState | None = getattr(server, "state", None)
        if state is None:
            return
        self.active -= 1
        self.limits.release(state.peer)
        metrics.SESSIONS.labels("smtp", state.outcome).inc()
        log.info("smtp_session", conn=state.conn_id, peer=state.peer, user=state.user,
                 mailbox=state.mailbox, messages=state.messages, recipients=state.recipients,
                 size=state.bytes, upstream_reply=state.last_reply, outcome=state.outcome,
                 auth_failures=state.auth_failures,
                 seconds=round(time.monotonic() - state.started, 3))
        if state.upstream is not None:
            self._background(self.pool.give(state.upstream))
            state.upstream = None

    def _background(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pool.close_all()


async def start_smtp(config: Config, tokens: TokenManager, auth: LocalAuth,
                     spool: SpoolWorker | None = None) -> tuple[RelayHandler, list[asyncio.Server]]:
    """Bind every `smtp.listen` address; returns the handler (for reloads) and the servers."""
    smtp = config.smtp
    assert smtp is not None
    handler = RelayHandler(config, tokens, auth, spool)
    tls = server_context(smtp.cert_file, smtp.key_file) if smtp.tls != "none" else None

    def factory() -> RelaySMTP:
        cfg = handler.smtp
        return RelaySMTP(
            handler, hostname=cfg.hostname, ident="relay365", data_size_limit=cfg.max_message_size,
            enable_SMTPUTF8=True, decode_data=False, timeout=cfg.timeout,
            tls_context=tls if cfg.tls == "starttls" else None,
            # STARTTLS is not required for everything: allowed unauthenticated devices may lack it
            auth_required=False,
            # implicit TLS is TLS from the first byte, which aiosmtpd's check does not see
            auth_require_tls=not cfg.allow_plaintext_auth and cfg.tls != "implicit",
            proxy_protocol_timeout=PROXY_TIMEOUT if cfg.proxy_protocol else None,
        )

    loop = asyncio.get_running_loop()
    servers = []
    for addr in smtp.listen:
        servers.append(await loop.create_server(
            factory, addr.host, addr.port, ssl=tls if smtp.tls == "implicit" else None,
            reuse_address=True, backlog=1024))
    return handler, servers
