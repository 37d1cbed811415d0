"""SMTP command lines and AUTH payloads: the real listener (aiosmtpd + `relay365.smtp`) in this
process, on 127.0.0.1, fed each input over a real TCP connection.

Two listeners: a plain one (one local user; no unauthenticated network), and one behind PROXY
(127.0.0.1 trusted, 10.0.0.0/8 may send without a password). Both spool, so nothing leaves the
machine; the worker is not started. The first input byte picks the listener, the rest is what
the client sends, then it QUITs and reads until the relay closes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import traceback

from structlog.testing import capture_logs

from relay365.config import load_config
from relay365.localauth import LocalAuth
from relay365.passwords import hash_password
from relay365.smtp.listen import bind_smtp
from relay365.smtp.server import RelayHandler
from relay365.spool.queue import SpoolQueue
from relay365.spool.worker import SpoolWorker
from relay365.tokens.manager import TokenManager
from relay365.tokens.store import TokenStore

from .files import _dir

USER, PASSWORD = "scanner", "pw"
# AUTH PLAIN for scanner/pw is AHNjYW5uZXIAcHc=; LOGIN is c2Nhbm5lcg== then cHc=
TIMEOUT = 5.0  # seconds the relay gets to answer everything and close
END = b"\r\n.\r\nQUIT\r\n"
_REPLY = re.compile(rb"[2-5]\d\d[ -]")

_CONFIG = """
state_dir: {state}
apps: {{default: {{tenant: contoso.test, client_id: fuzz, client_secret: s, authority: "https://127.0.0.1:1"}}}}
accounts:
  - {{mailbox: scanner@contoso.test, refresh_token: x}}
  - {{mailbox: printer@contoso.test, refresh_token: y}}
users: [{{username: {user}, password_hash: "{hash}", mailbox: scanner@contoso.test, delivery: spool}}]
limits: {{auth_failure_delay: 0, auth_max_delay: 0, auth_block_after: 1000000}}
smtp:
  listen: ["127.0.0.1:0"]
  max_message_size: 20000
  timeout: 3
{extra}
"""


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}")


class _World:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.errors = _Errors()
        self.ports = self.loop.run_until_complete(self._start())

    async def _start(self) -> list[int]:
        ports = []
        pw = hash_password(PASSWORD, ln=10)
        for name, extra in (("plain", ""), ("proxy", "  proxy_protocol: true\n  trusted_proxies: [127.0.0.1/32]\n"  # noqa: E501
                            "  unauthenticated: [{network: 10.0.0.0/8, mailbox: printer@contoso.test}]\n")):
            state = _dir() / f"smtp-{name}"
            path = _dir() / f"smtp-{name}.yaml"
            cfg = load_config(path, _CONFIG.format(state=state, user=USER, hash=pw, extra=extra))
            spool = SpoolWorker(SpoolQueue(cfg.state_dir), _never)
            handler = RelayHandler(cfg, TokenManager(cfg, TokenStore(cfg.state_dir)), LocalAuth(cfg), spool)
            servers = await bind_smtp(handler)
            ports.append(servers[0].sockets[0].getsockname()[1])
        return ports

    async def session(self, port: int, data: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            # end any DATA or AUTH step and QUIT, as clients do (a half-close is answered too
            # since 5c9ab17, but then every session would wait for its own end of input)
            writer.write(data + END)
            await writer.drain()
        except ConnectionError:
            pass
        out = bytearray()
        try:
            async with asyncio.timeout(TIMEOUT):
                while chunk := await reader.read(65536):
                    out += chunk
        except ConnectionError:
            pass
        except TimeoutError:
            raise AssertionError(f"no close within {TIMEOUT} s (the session timeout is 3 s); "
                                 f"got {bytes(out[-300:])!r}") from None
        finally:
            writer.close()
        return bytes(out)


async def _never(entry: object) -> None:
    raise AssertionError("the spool worker is not started here")


# Bugs found here that live in a module this target's author may not change, tolerated until
# fixed so the run can find others (each has an xfail(strict) test in tests/test_fuzz.py):
# `MAIL FROM:<` or `RCPT TO:<` - aiosmtpd's address parser (the stdlib's get_angle_addr) raises
# IndexError; the client hears 451 4.3.0 (internal error) instead of 501, with a traceback logged.
KNOWN: tuple[str, ...] = ()  # crashes we know of and tolerate while fuzzing (none now)


def _known(exc: object) -> bool:
    if not isinstance(exc, BaseException):
        return False
    names = {frame.name for frame in traceback.extract_tb(exc.__traceback__)}
    return any(k in names for k in KNOWN) and os.environ.get("FUZZ_STRICT") != "1"


_world: _World | None = None


def smtp_session(data: bytes) -> None:
    """Oracle: every line the relay sends is an SMTP reply (three digits, space or dash), none is
    the internal-error reply or carries exception text, nothing is logged at error level, and
    the relay closes the connection within TIMEOUT."""
    global _world
    if _world is None:
        _world = _World()
    w = _world
    port = w.ports[data[0] % 2 if data else 0]
    root = logging.getLogger()
    root.addHandler(w.errors)
    try:  # capture_logs restores the structlog configuration afterwards
        with capture_logs() as logs:
            out = w.loop.run_until_complete(w.session(port, data[1:]))
    finally:
        root.removeHandler(w.errors)
    bad = [e for e in logs if e.get("log_level") in ("error", "critical")]
    known = sum(1 for e in bad if _known(e.get("exc_info")))
    struct_errors = [repr(e) for e in bad if not _known(e.get("exc_info"))]
    for line in out.split(b"\r\n")[:-1]:
        if not _REPLY.match(line):
            raise AssertionError(f"not an SMTP reply: {line[:200]!r}")
        if line.startswith(b"451 4.3.0 Internal") and known:
            continue
        if line.startswith((b"451 4.3.0 Internal", b"500 Error: (")) or b"Traceback" in line:
            raise AssertionError(f"internal error reply: {line[:200]!r}")
    if out and not out.endswith(b"\r\n"):
        raise AssertionError(f"reply cut short: {out[-100:]!r}")
    problems = w.errors.records + struct_errors
    w.errors.records = []
    if problems:
        raise AssertionError("logged at error level: " + "; ".join(problems)[:2000])
