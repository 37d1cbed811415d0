"""The PROXY v1/v2 header as the IMAP and POP3 listeners read it (aiosmtpd's `get_proxy` on the
connection's stream, then `relay365.proxyproto.real_client`)."""

from __future__ import annotations

import asyncio
import ipaddress

from aiosmtpd.proxy_protocol import get_proxy

from relay365.proxyproto import real_client

_loop: asyncio.AbstractEventLoop | None = None


async def _parse(data: bytes) -> object:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    try:
        return await get_proxy(reader)
    except asyncio.IncompleteReadError:  # the listeners catch this one (and timeouts)
        return None


def proxy_header(data: bytes) -> None:
    """Oracle: the parser returns (or stops at the end of input, which the listeners handle); a
    header it calls valid gives either no address (LOCAL, UNKNOWN, unix) or one IP address that
    the limits and logs can use, IPv4-mapped IPv6 unwrapped."""
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
    parsed = _loop.run_until_complete(_parse(data))
    if parsed is None or not parsed.valid:  # type: ignore[attr-defined]
        return
    real = real_client(parsed)
    if real is None:
        return
    ip = ipaddress.ip_address(real)  # raises if it is not an address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        raise AssertionError(f"IPv4-mapped address not unwrapped: {real}")
