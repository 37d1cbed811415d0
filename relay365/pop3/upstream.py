"""Log in to the upstream POP3 server (Office 365) with XOAUTH2, then hand over the raw connection.

Theory of operation. Only the greeting and the AUTH exchange are read here. Exchange does not take
an initial response on POP3, so the relay sends `AUTH XOAUTH2`, waits for the `+ ` continuation and
then sends the base64 string on its own line. On failure Exchange answers with a second `+ ` and a
base64 JSON challenge; that is answered with an empty line and the final `-ERR` is read. A refusal
of a token that came from the cache gets one fresh token and one more try. After `open_upstream`
returns, the reader and writer carry the session's bytes untouched (`relay365.imap.splice`).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from typing import Any

import structlog

from ..config import Config, Endpoint
from ..errors import UpstreamAuthError, UpstreamError
from ..sasl import decode_xoauth2_error, xoauth2_initial_response
from ..secret import Secret
from ..tlsutil import client_context, nodelay
from ..tokens.manager import TokenManager

log = structlog.get_logger("relay365.pop3.upstream")

MAX_LINE = 64 * 1024


@dataclass
class UpstreamPOP3:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    seconds: float


async def _readline(reader: asyncio.StreamReader, timeout: float) -> bytes:
    try:
        return await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
    except asyncio.IncompleteReadError:
        raise UpstreamError("upstream closed the connection during login") from None
    except asyncio.LimitOverrunError:
        raise UpstreamError("upstream sent an over-long line during login") from None


async def _send(writer: asyncio.StreamWriter, line: bytes) -> None:
    writer.write(line)
    await writer.drain()


async def _connect(endpoint: Endpoint, tls: ssl.SSLContext,
                   timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    implicit = endpoint.tls == "implicit"
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        endpoint.host, endpoint.port, ssl=tls if implicit else None,
        server_hostname=endpoint.host if implicit else None, limit=MAX_LINE), timeout)
    nodelay(writer.transport)
    greeting = await _readline(reader, timeout)
    if not greeting.startswith(b"+OK"):
        text = greeting[:100].decode("ascii", "replace").strip()
        writer.close()
        raise UpstreamError(f"upstream greeting was not +OK: {text}")
    if not implicit:
        await _send(writer, b"STLS\r\n")
        if not (await _readline(reader, timeout)).startswith(b"+OK"):
            writer.close()
            raise UpstreamError("upstream refused STLS", transient=False)
        await writer.start_tls(tls, server_hostname=endpoint.host)
    return reader, writer


async def authenticate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mailbox: str,
                       token: Secret, timeout: float) -> tuple[bool, bytes]:
    """One `AUTH XOAUTH2` exchange, the response on its own line; (ok, final line)."""
    await _send(writer, b"AUTH XOAUTH2\r\n")
    resp = await _readline(reader, timeout)
    if not resp.startswith(b"+ ") and resp.rstrip() != b"+":
        return False, resp
    await _send(writer, xoauth2_initial_response(mailbox, token).encode("ascii") + b"\r\n")
    resp = await _readline(reader, timeout)
    challenge: dict[str, Any] = {}
    if resp.startswith(b"+") and not resp.startswith(b"+OK"):  # failure: base64 JSON challenge
        challenge = decode_xoauth2_error(resp[1:].strip())
        await _send(writer, b"\r\n")
        resp = await _readline(reader, timeout)
    ok = resp.startswith(b"+OK")
    if not ok and challenge:
        log.info("upstream_auth_challenge", proto="pop3", account=mailbox,
                 status=challenge.get("status"), schemes=challenge.get("schemes"))
    return ok, resp


async def open_upstream(config: Config, tokens: TokenManager, mailbox: str,
                        tls: ssl.SSLContext | None = None, *,
                        account: str | None = None) -> UpstreamPOP3:
    """Connect, TLS, XOAUTH2 `user=mailbox` with the token of `account` (default: the mailbox
    itself; a shared mailbox is opened with a delegate's token, Exchange's FullAccess).
    Raises TokenError, UpstreamAuthError or UpstreamError."""
    started = time.monotonic()
    cfg = config.upstream
    account = account or mailbox
    token = await tokens.get(account)
    tls = tls or client_context(cfg.ca_file)
    try:
        reader, writer = await _connect(cfg.pop3, tls, cfg.connect_timeout)
    except (TimeoutError, OSError, ssl.SSLError) as exc:
        raise UpstreamError(f"cannot reach upstream POP3: {type(exc).__name__}: {exc}") from None
    try:
        for attempt in (1, 2):
            ok, last = await authenticate(reader, writer, mailbox, token.token, cfg.timeout)
            if ok:
                break
            if attempt == 1 and token.from_cache:
                log.info("upstream_auth_retry", proto="pop3", account=mailbox)
                token = await tokens.get(account, rejected=token.token)
                continue
            detail = last.decode("utf-8", "replace").strip()[:200]
            raise UpstreamAuthError("upstream refused XOAUTH2", text=detail)
    except (TimeoutError, OSError, ssl.SSLError) as exc:
        writer.close()
        raise UpstreamError(f"upstream POP3 failed during login: {type(exc).__name__}") from None
    except BaseException:
        writer.close()
        raise
    return UpstreamPOP3(reader, writer, time.monotonic() - started)
