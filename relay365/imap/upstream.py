"""Log in to the upstream IMAP server (Office 365) with XOAUTH2, then hand over the raw connection.

Theory of operation. Only the few lines before login are parsed here - greeting, CAPABILITY,
AUTHENTICATE - and never with a client's tag in them: after `open_upstream` returns, the reader and
writer carry the session's bytes untouched (see `relay365.imap.splice`). SASL-IR is used when the server
offers it, else the token goes after the `+` continuation. On failure Exchange sends a base64 JSON
challenge; it is answered with an empty line and the final NO is read. A NO for a token that came
from the cache gets one fresh token and one more try.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from ..config import Config, Endpoint
from ..errors import UpstreamAuthError, UpstreamError
from ..sasl import decode_xoauth2_error, xoauth2_initial_response
from ..secret import Secret
from ..tlsutil import client_context, nodelay
from ..tokens.manager import TokenManager

log = structlog.get_logger("relay365.imap.upstream")

MAX_LINE = 64 * 1024  # a CAPABILITY line of a big server is a few hundred bytes; this is generous
_CAPS = re.compile(rb"\[CAPABILITY ([^\]]*)\]", re.I)


@dataclass
class UpstreamIMAP:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    capabilities: str  # after login, for the client's `OK [CAPABILITY ...]`
    seconds: float


async def _readline(reader: asyncio.StreamReader, timeout: float) -> bytes:
    try:
        line = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
    except asyncio.IncompleteReadError:
        raise UpstreamError("upstream closed the connection during login") from None
    except asyncio.LimitOverrunError:
        raise UpstreamError("upstream sent an over-long line during login") from None
    return line


async def _command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tag: bytes,
                   line: bytes, timeout: float,
                   on_continue: Callable[[bytes], bytes] | None = None) -> tuple[bytes, list[bytes]]:
    """Send one command, collect untagged lines, answer continuations; return (tagged, untagged)."""
    writer.write(line)
    await writer.drain()
    untagged: list[bytes] = []
    while True:
        resp = await _readline(reader, timeout)
        if resp.startswith(tag + b" "):
            return resp, untagged
        if resp.startswith(b"+"):
            writer.write(on_continue(resp) if on_continue else b"*\r\n")
            await writer.drain()
        else:
            untagged.append(resp)


def _caps_from(lines: list[bytes]) -> str | None:
    for line in lines:
        m = _CAPS.search(line)
        if m:
            return m.group(1).decode("ascii", "replace")
        if line.upper().startswith(b"* CAPABILITY "):
            return line[13:].strip().decode("ascii", "replace")
    return None


async def _connect(endpoint: Endpoint, tls: ssl.SSLContext,
                   timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    if endpoint.tls == "implicit":
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            endpoint.host, endpoint.port, ssl=tls, server_hostname=endpoint.host, limit=MAX_LINE), timeout)
        nodelay(writer.transport)
        greeting = await _greeting(reader, timeout)
    else:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(endpoint.host, endpoint.port, limit=MAX_LINE), timeout)
        nodelay(writer.transport)
        await _greeting(reader, timeout)
        resp, _ = await _command(reader, writer, b"s1", b"s1 STARTTLS\r\n", timeout)
        if not resp.upper().startswith(b"S1 OK"):
            raise UpstreamError("upstream refused STARTTLS", transient=False)
        await writer.start_tls(tls, server_hostname=endpoint.host)
        greeting = b""  # capabilities from before TLS must not be trusted
    return reader, writer, greeting


async def _greeting(reader: asyncio.StreamReader, timeout: float) -> bytes:
    greeting = await _readline(reader, timeout)
    if not greeting.upper().startswith(b"* OK"):
        text = greeting[:100].decode("ascii", "replace").strip()
        raise UpstreamError(f"upstream greeting was not OK: {text}")
    return greeting


async def open_upstream(config: Config, tokens: TokenManager, mailbox: str,
                        tls: ssl.SSLContext | None = None, *,
                        account: str | None = None) -> UpstreamIMAP:
    """Connect, TLS, XOAUTH2 `user=mailbox` with the token of `account` (default: the mailbox
    itself; a shared mailbox is opened with a delegate's token, Exchange's FullAccess).
    Raises TokenError, UpstreamAuthError or UpstreamError."""
    started = time.monotonic()
    cfg = config.upstream
    account = account or mailbox
    token = await tokens.get(account)
    tls = tls or client_context(cfg.ca_file)
    try:
        reader, writer, greeting = await _connect(cfg.imap, tls, cfg.connect_timeout)
    except (TimeoutError, OSError, ssl.SSLError) as exc:
        raise UpstreamError(f"cannot reach upstream IMAP: {type(exc).__name__}: {exc}") from None
    try:
        caps = _caps_from([greeting]) if greeting else None
        if caps is None:
            _, untagged = await _command(reader, writer, b"c1", b"c1 CAPABILITY\r\n", cfg.timeout)
            caps = _caps_from(untagged) or ""
        upper = caps.upper().split()
        if "AUTH=XOAUTH2" not in upper:
            raise UpstreamError("upstream IMAP does not offer AUTH=XOAUTH2", transient=False)
        sasl_ir = "SASL-IR" in upper
        for attempt in (1, 2):
            ok, lines = await _authenticate(reader, writer, mailbox, token.token, sasl_ir, cfg.timeout,
                                            tag=b"x%d" % attempt)
            if ok:
                break
            if attempt == 1 and token.from_cache:
                log.info("upstream_auth_retry", proto="imap", account=mailbox)
                token = await tokens.get(account, rejected=token.token)
                continue
            detail = lines[-1].split(b" ", 2)[-1].decode("utf-8", "replace").strip() if lines else ""
            raise UpstreamAuthError("upstream refused XOAUTH2", text=detail)
        after = _caps_from(lines)
        if after is None:
            _, untagged = await _command(reader, writer, b"c2", b"c2 CAPABILITY\r\n", cfg.timeout)
            after = _caps_from(untagged) or "IMAP4rev1"
    except (TimeoutError, OSError, ssl.SSLError) as exc:
        writer.close()
        raise UpstreamError(f"upstream IMAP failed during login: {type(exc).__name__}") from None
    except BaseException:
        writer.close()
        raise
    return UpstreamIMAP(reader, writer, after, time.monotonic() - started)


async def _authenticate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mailbox: str,
                        token: Secret, sasl_ir: bool, timeout: float,
                        tag: bytes) -> tuple[bool, list[bytes]]:
    ir = xoauth2_initial_response(mailbox, token).encode()
    challenge: dict[str, object] = {}
    sent = sasl_ir

    def on_continue(line: bytes) -> bytes:
        nonlocal sent
        if not sent:  # no SASL-IR: the first "+" asks for the initial response
            sent = True
            return ir + b"\r\n"
        challenge.update(decode_xoauth2_error(line[1:].strip()))  # error JSON: answer with empty line
        return b"\r\n"

    line = tag + b" AUTHENTICATE XOAUTH2" + (b" " + ir if sasl_ir else b"") + b"\r\n"
    resp, untagged = await _command(reader, writer, tag, line, timeout, on_continue)
    ok = resp[len(tag) + 1:].upper().startswith(b"OK")
    if not ok and challenge:
        log.info("upstream_auth_challenge", proto="imap", account=mailbox,
                 status=challenge.get("status"), schemes=challenge.get("schemes"))
    return ok, [*untagged, resp]


async def check_login(config: Config, tokens: TokenManager, mailbox: str) -> str:
    """For `relay365 check --upstream`: log in and out, say how it went."""
    up = await open_upstream(config, tokens, mailbox)
    try:
        up.writer.write(b"z1 LOGOUT\r\n")
        await up.writer.drain()
    finally:
        up.writer.close()
    return "ok"
