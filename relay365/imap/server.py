"""The local IMAP listener: the thin asyncio adapter around `relay365.imap.core.ImapPreauth`.

Theory of operation. Before login, bytes from the client go into the sans-IO core and the adapter
carries out the effects it returns: write to the client, upgrade to TLS, check a login, close. For a
login it checks the local user (`relay365.localauth`: the same rules and throttling as SMTP),
enforces the optional per-mailbox session cap, logs in upstream with XOAUTH2 (`relay365.imap.upstream`)
and tells the core the outcome; the core answers the client with its own tag. After a successful
login the adapter forwards anything the client pipelined, then hands both connections to the byte
splice (`relay365.imap.splice`) until either side closes. One `imap_session` line sums it up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import time
from dataclasses import dataclass, field

import structlog
from aiosmtpd.proxy_protocol import get_proxy

from .. import metrics
from ..config import Config, ImapConfig
from ..errors import TokenError, UpstreamError
from ..localauth import LocalAuth
from ..proxyproto import PROXY_TIMEOUT, is_trusted, real_client
from ..states import ClosedBy, ImapOutcome, LoginResult
from ..throttle import ConnectionLimits
from ..tlsutil import ServerTLS, client_context, nodelay, reload_tls
from ..tokens.manager import TokenManager
from .core import Authenticate, Close, Effect, ImapPreauth, LoginFailure, SendToClient, StartSplice, StartTLS
from .splice import splice
from .upstream import UpstreamIMAP, open_upstream

log = structlog.get_logger("relay365.imap")
_conn_ids = itertools.count(1)
READ_SIZE = 16 * 1024  # before login; the core caps what it buffers


@dataclass
class ImapSession:
    conn_id: int
    peer: str
    started: float = field(default_factory=time.monotonic)
    user: str | None = None
    mailbox: str | None = None
    auth_failures: int = 0
    outcome: ImapOutcome = ImapOutcome.NO_LOGIN
    closed_by: ClosedBy | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    counted: str | None = None  # the mailbox whose session cap this session holds a place in


class ImapHandler:
    def __init__(self, config: Config, tokens: TokenManager, auth: LocalAuth) -> None:
        self.tokens = tokens
        self.auth = auth
        self.limits = ConnectionLimits(config.limits.max_connections,
                                       config.limits.max_connections_per_ip)
        self.active: collections.Counter[str] = collections.Counter()  # sessions per mailbox
        self.writers: dict[asyncio.StreamWriter, ImapSession] = {}  # open connections
        self.stopping = False
        self.tls: ServerTLS | None = None
        self.configure(config)

    @property
    def connections(self) -> int:
        return len(self.writers)

    def configure(self, config: Config) -> None:
        assert config.imap is not None
        self.config = config
        self.imap: ImapConfig = config.imap
        self.limits.max_total = config.limits.max_connections
        self.limits.max_per_ip = config.limits.max_connections_per_ip
        self.upstream_tls = client_context(config.upstream.ca_file)
        self.tls = reload_tls(self.tls, self.imap)

    def shutdown(self) -> None:
        """SIGTERM. Before login: `* BYE` now. Spliced: closed now, as Dovecot does at shutdown
        (shutdown_clients=yes): an IDLE client would never finish on its own, and after the
        splice the relay cannot know where one IMAP response ends, so it adds no BYE of its own
        into the stream; the client sees the connection close and logs in again."""
        self.stopping = True
        for writer, session in list(self.writers.items()):
            if session.outcome != ImapOutcome.SPLICED:
                with contextlib.suppress(Exception):
                    writer.write(b"* BYE Server shutting down\r\n")
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str((writer.get_extra_info("peername") or ("?", 0))[0])
        if self.imap.proxy_protocol:
            real = await self._proxied(peer, reader)
            if real is None:
                writer.close()
                return
            peer = real
        refused = self.limits.admit(peer)
        if refused:
            log.warning("connection_refused", proto="imap", peer=peer, reason=refused)
            metrics.SESSIONS.labels("imap", refused).inc()
            writer.write(b"* BYE Too many connections; try again later\r\n")
            writer.close()
            return
        nodelay(writer.transport)
        session = ImapSession(next(_conn_ids), peer)
        structlog.contextvars.bind_contextvars(conn=session.conn_id, proto="imap", peer=peer)
        self.writers[writer] = session
        if self.stopping:
            writer.close()
        upstream: UpstreamIMAP | None = None
        try:
            upstream = await self._preauth(session, reader, writer)
            if upstream is not None:
                result = await splice((reader, writer), (upstream.reader, upstream.writer),
                                      idle_timeout=self.imap.idle_timeout,
                                      max_time=self.imap.max_session_time)
                session.closed_by = result.closed_by
                session.bytes_up, session.bytes_down = result.bytes_up, result.bytes_down
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            session.closed_by = session.closed_by or ClosedBy.CLIENT_ERROR
        except Exception as exc:  # never a traceback to the client; one event for us
            session.outcome = ImapOutcome.INTERNAL_ERROR
            log.error("imap_internal_error", error=type(exc).__name__,
                      exc_info=exc)
        finally:
            writer.close()
            if upstream is not None:
                upstream.writer.close()
            self._ended(session, writer)

    def _ended(self, session: ImapSession, writer: asyncio.StreamWriter) -> None:
        """Release what the session held; its summary line and metrics."""
        if session.counted:
            self.active[session.counted] -= 1
            if self.active[session.counted] <= 0:
                del self.active[session.counted]
        self.writers.pop(writer, None)
        self.limits.release(session.peer)
        metrics.SESSIONS.labels("imap", session.outcome).inc()
        metrics.BYTES.labels("imap", "up").inc(session.bytes_up)
        metrics.BYTES.labels("imap", "down").inc(session.bytes_down)
        log.info("imap_session", conn=session.conn_id, peer=session.peer, user=session.user,
                 mailbox=session.mailbox, outcome=session.outcome, closed_by=session.closed_by,
                 bytes_up=session.bytes_up, bytes_down=session.bytes_down,
                 auth_failures=session.auth_failures,
                 seconds=round(time.monotonic() - session.started, 3))
        metrics.record_session("imap", peer=session.peer, user=session.user, mailbox=session.mailbox, outcome=str(session.outcome), size=session.bytes_up + session.bytes_down, seconds=round(time.monotonic() - session.started, 3))  # noqa: E501

    async def _proxied(self, peer: str, reader: asyncio.StreamReader) -> str | None:
        """The real client address from a trusted proxy's PROXY header; None to close."""
        if not is_trusted(peer, self.imap.trusted_proxies):
            log.warning("connection_refused", proto="imap", peer=peer, reason="untrusted_proxy")
            return None
        try:
            data = await asyncio.wait_for(get_proxy(reader), PROXY_TIMEOUT)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            data = None
        if data is None or not data.valid:
            log.warning("proxy_header_invalid", proto="imap", peer=peer)
            return None
        return real_client(data) or peer

    async def _preauth(self, session: ImapSession, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> UpstreamIMAP | None:
        """Run the core until login succeeds (returns the upstream) or the session ends (None)."""
        loop = asyncio.get_running_loop()
        core = ImapPreauth(tls_active=self.imap.tls == "implicit",
                           starttls_available=self.imap.tls == "starttls",
                           allow_plaintext_auth=self.imap.allow_plaintext_auth)
        deadline = loop.time() + self.imap.login_timeout
        pending = collections.deque(core.greeting())
        upstream: UpstreamIMAP | None = None
        while True:
            while pending:
                effect = pending.popleft()
                if isinstance(effect, SendToClient):
                    writer.write(effect.data)
                elif isinstance(effect, StartTLS):
                    pending.extend(await self._start_tls(core, reader, writer))
                elif isinstance(effect, Authenticate):
                    await writer.drain()
                    upstream, effects = await self._login(core, session, effect)
                    pending.extend(effects)
                elif isinstance(effect, StartSplice):
                    assert upstream is not None
                    await writer.drain()
                    early = core.take_buffered()
                    if early:  # commands the client pipelined after its LOGIN
                        upstream.writer.write(early)
                    return upstream
                elif isinstance(effect, Close):
                    await writer.drain()
                    return None
            await writer.drain()
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                data = await asyncio.wait_for(reader.read(READ_SIZE), remaining)
            except TimeoutError:
                session.outcome = ImapOutcome.LOGIN_TIMEOUT
                pending.extend(core.timeout())
                continue
            if not data:
                session.closed_by = ClosedBy.CLIENT
                return None
            pending.extend(core.receive_data(data))

    async def _start_tls(self, core: ImapPreauth, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> list[Effect]:
        await writer.drain()
        # Plaintext sent behind STARTTLS sits in the reader's buffer, and start_tls() would hand
        # it back as if it came over TLS (RFC 3207/9051 injection). The core refuses it; the
        # buffer is only reachable through a private attribute.
        early = bytes(getattr(reader, "_buffer", b""))
        if early:
            return core.receive_data(early)
        assert self.tls is not None
        await writer.start_tls(self.tls.current)
        return core.tls_started()

    async def _login(self, core: ImapPreauth, session: ImapSession,
                     auth: Authenticate) -> tuple[UpstreamIMAP | None, list[Effect]]:
        outcome = await self.auth.login("imap", session.peer, auth.username, auth.password,
                                        auth.mechanism, session.conn_id)
        user = outcome.user
        if user is None:
            session.auth_failures += 1
            session.outcome = (ImapOutcome.AUTH_BLOCKED if outcome.result is LoginResult.BLOCKED
                               else ImapOutcome.AUTH_FAILED)
            return None, core.login_failed(
                LoginFailure.AUTH_FAILED if outcome.result is LoginResult.FAILED
                else LoginFailure.UNAVAILABLE)
        session.user, session.mailbox = user.username, user.mailbox
        key = user.mailbox.lower()
        cap = self.imap.max_sessions_per_mailbox
        if cap is not None and self.active[key] >= cap:
            log.warning("imap_session_limit", mailbox=user.mailbox, limit=cap)
            session.outcome = ImapOutcome.LIMIT
            return None, core.login_failed(LoginFailure.LIMIT)
        self.active[key] += 1
        session.counted = key
        try:
            upstream = await open_upstream(self.config, self.tokens, user.mailbox, self.upstream_tls,
                                           account=user.token_account)
        except (TokenError, UpstreamError) as exc:
            self.active[key] -= 1
            session.counted = None
            session.outcome = ImapOutcome.UNAVAILABLE
            fields = dict(user=user.username,
                          mailbox=user.mailbox, error=str(exc))
            if isinstance(exc, TokenError):
                log.warning("imap_token_unavailable", code=exc.code, **fields)
            else:
                log.warning("imap_upstream_failed", **fields)
            return None, core.login_failed(LoginFailure.UNAVAILABLE)
        session.outcome = ImapOutcome.SPLICED
        metrics.UPSTREAM_LATENCY.labels("imap", "login").observe(upstream.seconds)
        log.info("imap_login", user=user.username,
                 mailbox=user.mailbox, upstream_seconds=round(upstream.seconds, 3))
        return upstream, core.login_succeeded(upstream.capabilities)


async def bind_imap(handler: ImapHandler) -> list[asyncio.Server]:
    """Bind every `imap.listen` address of the handler's current config."""
    imap = handler.imap
    ssl = handler.tls.context if handler.tls is not None and imap.tls == "implicit" else None
    servers: list[asyncio.Server] = []
    try:
        for addr in imap.listen:
            servers.append(await asyncio.start_server(
                handler.handle, addr.host, addr.port, reuse_address=True, backlog=imap.backlog,
                ssl=ssl, limit=64 * 1024))
    except BaseException:
        for server in servers:
            server.close()
        raise
    return servers
