"""A recording forwarder between relay365 and the test Postfix, to see the SMTP commands as sent.

Theory of operation. The relay speaks to Office 365 over TLS only, so a plain TCP forwarder would
see ciphertext. `RecordingForwarder` is a TLS endpoint of its own: the relay connects to it with
implicit TLS (the test CA's certificate), and for each connection it dials Postfix, says
`EHLO`/`STARTTLS` itself, and from then on passes bytes both ways between the two TLS sessions
unchanged - the relay's EHLO, AUTH and everything after reach Postfix as the relay wrote them, in
the same reads. Postfix's greeting is the one the relay hears.

Every read is recorded in order as (`"up"` relay->Postfix | `"down"` Postfix->relay, bytes), per
connection. One read from the relay is what one write of the relay became on the wire (a TLS
record each; on loopback nothing splits a small one), so `reads()` shows what was sent together -
MAIL and the RCPTs in one read, before Postfix answered any of it, is RFC 2920 pipelining.

It runs its own event loop in a thread; start/stop it around a test (or use it as a context
manager). Only what it started is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from pathlib import Path


class RecordingForwarder:
    def __init__(self, target_port: int, ca_file: Path, cert_file: Path, key_file: Path,
                 target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_tls.load_cert_chain(str(cert_file), str(key_file))
        self.client_tls = ssl.create_default_context(cafile=str(ca_file))
        self.port = 0
        self.sessions: list[list[tuple[str, bytes]]] = []  # per connection, every read in order
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- what was seen ---------------------------------------------------------------------------

    def reads(self, session: int = -1) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.sessions[session]) if self.sessions else []

    def commands(self, session: int = -1) -> list[tuple[str, list[bytes]]]:
        """The reads of a session as lists of lines (CRLF dropped): [("up", [b"MAIL FROM:<..>",
        b"RCPT TO:<..>"]), ("down", [b"250 2.1.0 Ok", ...]), ...]; a read of message content is
        a list of its lines too."""
        return [(d, data.split(b"\r\n")[:-1] if data.endswith(b"\r\n") else data.split(b"\r\n"))
                for d, data in self.reads(session)]

    def clear(self) -> None:
        with self._lock:
            self.sessions.clear()

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> RecordingForwarder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="recording-forwarder", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the recording forwarder did not start")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.server_tls)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
        for w in list(self._writers):  # end every session with an EOF, then let its pipes finish
            w.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- one connection --------------------------------------------------------------------------

    async def _serve(self, relay_r: asyncio.StreamReader, relay_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(relay_w)
        with self._lock:
            self.sessions.append([])
            log = self.sessions[-1]
        try:
            up_r, up_w, greeting = await self._dial()
        except (OSError, ssl.SSLError, ValueError):
            relay_w.close()
            return
        self._writers.add(up_w)
        try:
            relay_w.write(greeting)
            await relay_w.drain()
            await asyncio.gather(self._pipe(relay_r, up_w, "up", log),
                                 self._pipe(up_r, relay_w, "down", log))
        finally:
            self._writers.difference_update((relay_w, up_w))
            self._tasks.discard(task)

    async def _dial(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        """Postfix, after its greeting, our own EHLO and STARTTLS: a TLS session whose next reply
        is to whatever the relay sends first (its EHLO)."""
        r, w = await asyncio.open_connection(*self.target)
        greeting = await _reply(r)
        w.write(b"EHLO recorder.test\r\n")
        await _reply(r)
        w.write(b"STARTTLS\r\n")
        if not (await _reply(r)).startswith(b"220"):
            raise ValueError("no STARTTLS")
        await w.start_tls(self.client_tls, server_hostname=self.target[0])
        return r, w, greeting

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, direction: str,
                    log: list[tuple[str, bytes]]) -> None:
        try:
            while data := await r.read(65536):
                with self._lock:
                    log.append((direction, data))
                w.write(data)
                await w.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
                w.close()


async def _reply(r: asyncio.StreamReader) -> bytes:
    """One whole (multi-line) SMTP reply."""
    out = b""
    while True:
        line = await r.readline()
        if not line:
            raise ValueError("connection closed")
        out += line
        if line[3:4] != b"-":
            return out
