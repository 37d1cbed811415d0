"""Binding the SMTP listeners: one aiosmtpd protocol per connection, all served by one handler.

The factory reads the handler's configuration and TLS at connection time, so after a reload new
connections get the new settings and the certificate now on disk (`tlsutil.ServerTLS`), while
the listening sockets and the sessions already open stay as they are.
"""

from __future__ import annotations

import asyncio

from ..proxyproto import PROXY_TIMEOUT
from .protocol import RelaySMTP
from .server import RelayHandler


def protocol_factory(handler: RelayHandler) -> RelaySMTP:
    cfg = handler.smtp
    return RelaySMTP(
        handler, hostname=cfg.hostname, ident="relay365", data_size_limit=cfg.max_message_size,
        enable_SMTPUTF8=True, decode_data=False, timeout=cfg.timeout,
        tls_context=handler.tls.current if handler.tls and cfg.tls == "starttls" else None,
        # STARTTLS is not required for everything: allowed unauthenticated devices may lack it
        auth_required=False,
        # implicit TLS is TLS from the first byte, which aiosmtpd's check does not see
        auth_require_tls=not cfg.allow_plaintext_auth and cfg.tls != "implicit",
        proxy_protocol_timeout=PROXY_TIMEOUT if cfg.proxy_protocol else None,
    )


async def bind_smtp(handler: RelayHandler) -> list[asyncio.Server]:
    """Bind every `smtp.listen` address of the handler's current config."""
    cfg = handler.smtp
    loop = asyncio.get_running_loop()
    ssl = handler.tls.context if handler.tls and cfg.tls == "implicit" else None
    servers = []
    try:
        for addr in cfg.listen:
            servers.append(await loop.create_server(
                lambda: protocol_factory(handler), addr.host, addr.port, ssl=ssl,
                reuse_address=True, backlog=cfg.backlog))
    except BaseException:
        for server in servers:
            server.close()
        raise
    return servers
