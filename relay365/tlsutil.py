"""TLS contexts. Verification is always on; an operator's `ca_file` adds trust, never replaces it."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
from pathlib import Path
from typing import Protocol

import certifi

Seen = tuple[tuple[int, int, int] | None, ...]  # each trust file's (inode, size, mtime), None: absent
# (purpose, ca_file) -> (the trust files as they were when it was made, the context)
_SHARED: dict[tuple[str, Path | None], tuple[Seen, ssl.SSLContext]] = {}
_SHARED_LOCK = threading.Lock()


def client_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """System trust + certifi's bundle (what requests would use) + the operator's extra CA file,
    for the mail protocols (IMAP, POP3, SMTP upstream).

    One context per CA file, shared by every caller: each one holds the ~290 parsed certificates
    of both stores, about 1.2 MiB, and the relay made six of them at start-up. A context is
    immutable once made (nothing here or in aiosmtplib sets options on it later), so sharing it
    changes nothing for a connection. It is made again when a file it was made from changes on
    disk (the CA file, the system bundle, certifi's), so a reload after the operator replaced one
    trusts the new one, as it did when every reload made new contexts."""
    return _shared("mail", ca_file)


def https_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """The same trust for the HTTPS clients (msal's requests, httpx for Graph and webhooks).
    Apart from the mail one because httpcore and urllib3 set ALPN `http/1.1` on the context they
    are given, which an IMAP or SMTP handshake must not offer."""
    return _shared("https", ca_file)


def _stat(path: str | Path | None) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path) if path else None
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns) if st else None


def _shared(purpose: str, ca_file: Path | None) -> ssl.SSLContext:
    if ca_file and _stat(ca_file) is None:  # let _new_client_context say what is wrong, as before
        return _new_client_context(ca_file)
    seen = tuple(map(_stat, (ca_file, certifi.where(), ssl.get_default_verify_paths().cafile)))
    with _SHARED_LOCK:
        held = _SHARED.get((purpose, ca_file))
        if held is None or held[0] != seen:
            held = (seen, _new_client_context(ca_file))
            _SHARED[(purpose, ca_file)] = held
        return held[1]


def _new_client_context(ca_file: Path | None) -> ssl.SSLContext:
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
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # said, not left to OpenSSL's defaults
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


def nodelay(transport: asyncio.BaseTransport | None) -> None:
    """Turn Nagle off, as asyncio's own loop does for every TCP transport and uvloop does not:
    SMTP and IMAP are request/reply protocols of small writes, where Nagle only adds latency."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class ServerTLS:
    """A listener's TLS that follows the certificate on disk across reloads.

    `context` is the one context a listener is bound with; its SNI callback (run for every
    handshake, with or without SNI) hands the connection the newest loaded context. So after
    `load()` every new connection - implicit TLS and STARTTLS alike - presents the certificate
    now on disk, and sessions already open keep theirs. `load()` raises (ssl.SSLError, OSError)
    without changing anything when the new files do not load: the reload is refused, the old
    certificate stays."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.current = server_context(cert_file, key_file)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.sni_callback = self._pick
        # the front context needs a certificate of its own for the handshake to start
        self.context.load_cert_chain(str(cert_file), str(key_file))

    def load(self, cert_file: Path, key_file: Path) -> None:
        self.current = server_context(cert_file, key_file)

    def _pick(self, conn: ssl.SSLObject | ssl.SSLSocket, name: str | None,
              ctx: ssl.SSLContext) -> None:
        conn.context = self.current


class _HasTLS(Protocol):
    @property
    def tls(self) -> str: ...
    @property
    def cert_file(self) -> Path | None: ...
    @property
    def key_file(self) -> Path | None: ...


def reload_tls(current: ServerTLS | None, section: _HasTLS) -> ServerTLS | None:
    """A listener section's TLS after a (re)load: the same holder with the files loaded again
    (so listeners bound with it serve the new certificate), a new one, or None for `tls: none`."""
    if section.tls == "none" or section.cert_file is None or section.key_file is None:
        return None
    if current is None:
        return ServerTLS(section.cert_file, section.key_file)
    current.load(section.cert_file, section.key_file)
    return current
