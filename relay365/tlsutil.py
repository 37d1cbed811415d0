"""TLS contexts. Verification is always on; an operator's `ca_file` adds trust, never replaces it."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import certifi


def client_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """System trust + certifi's bundle (what requests would use) + the operator's extra CA file."""
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(certifi.where())
    if ca_file:
        ctx.load_verify_locations(str(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """For our local listeners. TLS 1.0 and 1.1 stay off even for old devices: Python's OpenSSL
    refuses them anyway, and a device that old is what `tls: none` on a trusted LAN is for."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


def nodelay(transport) -> None:
    """Turn Nagle off, as asyncio's own loop does for every TCP transport and uvloop does not:
    SMTP and IMAP are request/reply protocols of small writes, where Nagle only adds latency."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
