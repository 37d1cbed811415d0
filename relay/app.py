"""The daemon's lifecycle: startup -> serve -> shutdown, in the shape of uvicorn's server.

`Relay.start()` opens the token store, binds every listener and starts the token keeper; `serve()`
waits for SIGTERM/SIGINT; `stop()` closes the listeners, gives sessions in progress `drain_timeout`
seconds, then cancels what is left. Every task here has an owner (a reference kept until done).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog

from .config import Config
from .smtp.server import RelayHandler, start_smtp
from .tokens.manager import TokenManager
from .tokens.store import TokenStore

log = structlog.get_logger("relay.app")


class Relay:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = TokenStore(config.state_dir)
        self.tokens = TokenManager(config, self.store)
        self.smtp: RelayHandler | None = None
        self.imap = None  # relay.imap.server.ImapHandler when imap: is configured
        self.servers: list[asyncio.Server] = []
        self._keeper: asyncio.Task | None = None
        self._stop = asyncio.Event()

    @property
    def addresses(self) -> dict[str, list[tuple[str, int]]]:
        """Bound addresses by protocol (port 0 in the config becomes the real port here)."""
        out: dict[str, list[tuple[str, int]]] = {}
        for proto, server in self._bound:
            for sock in server.sockets:
                out.setdefault(proto, []).append(sock.getsockname()[:2])
        return out

    async def start(self) -> None:
        await asyncio.to_thread(self.store.check)  # a bad key or damaged store stops us here
        self._bound: list[tuple[str, asyncio.Server]] = []
        if self.config.smtp is not None:
            self.smtp, servers = await start_smtp(self.config, self.tokens)
            self._bound += [("smtp", s) for s in servers]
        if self.config.imap is not None:
            from .imap.server import start_imap  # the IMAP side is optional

            self.imap, servers = await start_imap(self.config, self.tokens)
            self._bound += [("imap", s) for s in servers]
        self.servers = [s for _, s in self._bound]
        self._keeper = asyncio.create_task(self.tokens.maintain(), name="token-keeper")
        log.info("relay_started", listeners={p: [f"{h}:{port}" for h, port in a]
                                            for p, a in self.addresses.items()},
                 accounts=len(self.config.accounts), users=len(self.config.users))

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        await self._stop.wait()

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self, drain_timeout: float = 30.0) -> None:
        log.info("relay_stopping", drain_timeout=drain_timeout)
        for server in self.servers:
            server.close()
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        waits = [asyncio.create_task(s.wait_closed()) for s in self.servers]
        if waits:
            done, pending = await asyncio.wait(waits, timeout=drain_timeout)
            for server in self.servers:
                with contextlib.suppress(AttributeError):
                    server.close_clients()  # Python 3.13+; below that the loop closes them
            for task in pending:
                task.cancel()
        if self.smtp is not None:
            await self.smtp.drain()
        log.info("relay_stopped")
