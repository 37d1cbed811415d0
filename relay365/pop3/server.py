"""The local POP3 listener: the thin asyncio adapter around `relay365.pop3.core.Pop3Preauth`.

Theory of operation. Built exactly like `relay365.imap.server`. Before login, client bytes go into
the sans-IO core and the adapter carries out its effects: write, upgrade to TLS (STLS), check a
login, close. For a login it checks the local user (`relay365.localauth`: the same rules and
throttling as SMTP and IMAP), enforces the optional per-mailbox session cap, logs in upstream with
XOAUTH2 (`relay365.pop3.upstream`) and tells the core the outcome. After a successful login it
forwards what the client pipelined and hands both connections to the byte splice: RETR, TOP, UIDL,
DELE and RSET reach the upstream untouched. One `pop3_session` line sums up each connection.
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
from ..config import Config, Pop3Config
from ..errors import TokenError, UpstreamError
from ..imap.splice import splice
from ..localauth import LocalAuth
from ..proxyproto import PROXY_TIMEOUT, is_trusted, real_client
from ..states import ClosedBy, LoginResult
from ..states import ImapOutcome as Outcome  # the same outcomes for POP3
from ..throttle import ConnectionLimits
from ..tlsutil import ServerTLS, client_context, nodelay, reload_tls
from ..tokens.manager import TokenManager
from .core import Authenticate, Close, Effect, LoginFailure, Pop3Preauth, SendToClient, StartSplice, StartTLS
from .upstream import UpstreamPOP3, open_upstream

log = structlog.get_logger("relay365.pop3")
_conn_ids = itertools.count(1)
READ_SIZE = 16 * 1024  # before login; the core caps what it buffers


@dataclass
class Pop3Session:
    conn_id: int
    peer: str
    started: float = field(default_factory=time.monotonic)
    user: str | None = None
    mailbox: str | None = None
    auth_failures: int = 0
    outcome: Outcome = Outcome.NO_LOGIN
    closed_by: ClosedBy | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    counted: str | None = None  # the mailbox whose session cap this session holds a place in


class Pop3Handler:
    def __init__(self, config: Config, tokens: TokenManager, auth: LocalAuth) -> None:
        self.tokens = tokens
        self.auth = auth
        self.limits = ConnectionLimits(config.limits.max_connections,
                                       config.limits.max_connections_per_ip)
        self.active: collections.Counter[str] = collections.Counter()  # sessions per mailbox
        self.writers: dict[asyncio.StreamWriter, Pop3Session] = {}  # open connections
        self.stopping = False
        self.tls: ServerTLS | None = None
        self.configure(config)

    @property
    def connections(self) -> int:
        return len(self.writers)

    def configure(self, config: Config) -> None:
        assert config.pop3 is not None
        self.config = config
        self.pop3: Pop3Config = config.pop3
        self.limits.max_total = config.limits.max_connections
        self.limits.max_per_ip = config.limits.max_connections_per_ip
        self.upstream_tls = client_context(config.upstream.ca_file)
        self.tls = reload_tls(self.tls, self.pop3)

    def shutdown(self) -> None:
        """SIGTERM. Before login: `-ERR [SYS/TEMP]` now. Spliced: closed now; after the splice
        the relay cannot know where one POP3 response ends, so it adds nothing into the stream.
        An unfinished POP3 session commits no DELE (RFC 1939 s.6), so nothing is lost."""
        self.stopping = True
        for writer, session in list(self.writers.items()):
            if session.outcome != Outcome.SPLICED:
                with contextlib.suppress(Exception):
                    writer.write(b"-ERR [SYS/TEMP] Server shutting down\r\n")
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str((writer.get_extra_info("peername") or ("?", 0))[0])
        if self.pop3.proxy_protocol:
            real = await self._proxied(peer, reader)
            if real is None:
                writer.close()
                return
            peer = real
        refused = self.limits.admit(peer)
        if refused:
            log.warning("connection_refused", proto="pop3", peer=peer, reason=refused)
            metrics.SESSIONS.labels("pop3", refused).inc()
            writer.write(b"-ERR [SYS/TEMP] Too many connections; try again later\r\n")
            writer.close()
            return
        nodelay(writer.transport)
        session = Pop3Session(next(_conn_ids), peer)
        structlog.contextvars.bind_contextvars(conn=session.conn_id, proto="pop3", peer=peer)
        self.writers[writer] = session
        if self.stopping:
            writer.close()
        upstream: UpstreamPOP3 | None = None
        try:
            upstream = await self._preauth(session, reader, writer)
            if upstream is not None:
                result = await splice((reader, writer), (upstream.reader, upstream.writer),
                                      idle_timeout=self.pop3.idle_timeout,
                                      max_time=self.pop3.max_session_time)
                session.closed_by = result.closed_by
                session.bytes_up, session.bytes_down = result.bytes_up, result.bytes_down
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            session.closed_by = session.closed_by or ClosedBy.CLIENT_ERROR
        except Exception as exc:  # never a traceback to the client; one event for us
            session.outcome = Outcome.INTERNAL_ERROR
            log.error("pop3_internal_error", error=type(exc).__name__,
                      exc_info=exc)
        finally:
            writer.close()
            if upstream is not None:
                upstream.writer.close()
            self._ended(session, writer)

    def _ended(self, session: Pop3Session, writer: asyncio.StreamWriter) -> None:
        """Release what the session held; its summary line and metrics."""
        if session.counted:
            self.active[session.counted] -= 1
            if self.active[session.counted] <= 0:
                del self.active[session.counted]
        self.writers.pop(writer, None)
        self.limits.release(session.peer)
        metrics.SESSIONS.labels("pop3", session.outcome).inc()
        metrics.BYTES.labels("pop3", "up").inc(session.bytes_up)
        metrics.BYTES.labels("pop3", "down").inc(session.bytes_down)
        log.info("pop3_session", conn=session.conn_id, peer=session.peer, user=session.user,
                 mailbox=session.mailbox, outcome=session.outcome, closed_by=session.closed_by,
                 bytes_up=session.bytes_up, bytes_down=session.bytes_down,
                 auth_failures=session.auth_failures,
                 seconds=round(time.monotonic() - session.started, 3))

    async def _proxied(self, peer: str, reader: asyncio.StreamReader) -> str | None:
        """The real client address from a trusted proxy's PROXY header; None to close."""
        if not is_trusted(peer, self.pop3.trusted_proxies):
            log.warning("connection_refused", proto="pop3", peer=peer, reason="untrusted_proxy")
            return None
        try:
            data = await asyncio.wait_for(get_proxy(reader), PROXY_TIMEOUT)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            data = None
        if data is None or not data.valid:
            log.warning("proxy_header_invalid", proto="pop3", peer=peer)
            return None
        return real_client(data) or peer

    async def _preauth(self, session: Pop3Session, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> UpstreamPOP3 | None:
        """Run the core until login succeeds (returns the upstream) or the session ends (None)."""
        loop = asyncio.get_running_loop()
        core = Pop3Preauth(tls_active=self.pop3.tls == "implicit",
                           starttls_available=self.pop3.tls == "starttls",
                           allow_plaintext_auth=self.pop3.allow_plaintext_auth)
        deadline = loop.time() + self.pop3.login_timeout
        pending = collections.deque(core.greeting())
        upstream: UpstreamPOP3 | None = None
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
                session.outcome = Outcome.LOGIN_TIMEOUT
                pending.extend(core.timeout())
                continue
            if not data:
                session.closed_by = ClosedBy.CLIENT
                return None
            pending.extend(core.receive_data(data))

    async def _start_tls(self, core: Pop3Preauth, reader: asyncio.StreamReader,
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

    async def _login(self, core: Pop3Preauth, session: Pop3Session,
                     auth: Authenticate) -> tuple[UpstreamPOP3 | None, list[Effect]]:
        outcome = await self.auth.login("pop3", session.peer, auth.username, auth.password,
                                        auth.mechanism, session.conn_id)
        user = outcome.user
        if user is None:
            session.auth_failures += 1
            session.outcome = (Outcome.AUTH_BLOCKED if outcome.result is LoginResult.BLOCKED
                               else Outcome.AUTH_FAILED)
            return None, core.login_failed(
                LoginFailure.AUTH_FAILED if outcome.result is LoginResult.FAILED
                else LoginFailure.UNAVAILABLE)
        session.user, session.mailbox = user.username, user.mailbox
        key = user.mailbox.lower()
        cap = self.pop3.max_sessions_per_mailbox
        if cap is not None and self.active[key] >= cap:
            log.warning("pop3_session_limit", mailbox=user.mailbox, limit=cap)
            session.outcome = Outcome.LIMIT
            return None, core.login_failed(LoginFailure.LIMIT)
        self.active[key] += 1
        session.counted = key
        try:
            upstream = await open_upstream(self.config, self.tokens, user.mailbox, self.upstream_tls,
                                           account=user.token_account)
        except (TokenError, UpstreamError) as exc:
            self.active[key] -= 1
            session.counted = None
            session.outcome = Outcome.UNAVAILABLE
            fields = dict(user=user.username,
                          mailbox=user.mailbox, error=str(exc))
            if isinstance(exc, TokenError):
                log.warning("pop3_token_unavailable", code=exc.code, **fields)
            else:
                log.warning("pop3_upstream_failed", **fields)
            return None, core.login_failed(LoginFailure.UNAVAILABLE)
        session.outcome = Outcome.SPLICED
        metrics.UPSTREAM_LATENCY.labels("pop3", "login").observe(upstream.seconds)
        log.info("pop3_login", user=user.username,
                 mailbox=user.mailbox, upstream_seconds=round(upstream.seconds, 3))
        return upstream, core.login_succeeded()


async def bind_pop3(handler: Pop3Handler) -> list[asyncio.Server]:
    """Bind every `pop3.listen` address of the handler's current config."""
    pop3 = handler.pop3
    ssl = handler.tls.context if handler.tls is not None and pop3.tls == "implicit" else None
    servers: list[asyncio.Server] = []
    try:
        for addr in pop3.listen:
            servers.append(await asyncio.start_server(
                handler.handle, addr.host, addr.port, reuse_address=True, backlog=pop3.backlog,
                ssl=ssl, limit=64 * 1024))
    except BaseException:
        for server in servers:
            server.close()
        raise
    return servers
