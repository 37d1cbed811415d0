"""Local user passwords: scrypt hashes in the config, checked in constant time off the event loop.

Format (PHC string style): `$scrypt$ln=15,r=8,p=1$<salt, base64>$<key, base64>`; N = 2**ln. scrypt is
in the standard library (hashlib, through OpenSSL), memory-hard, and needs no new dependency.

A scrypt check costs tens of milliseconds of CPU by design, which would cap logins per second.
`Verifier` therefore remembers credentials it has already verified, as an HMAC under a key that only
lives in this process's memory: a repeat login of a scanner costs one HMAC, a wrong password still
pays the full scrypt price, and nothing reversible is kept.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import os
import re

from .secret import Secret

DEFAULT_LN = 15  # N = 32768, r = 8: 32 MiB and ~50-100 ms per hash on a small server
_FORMAT = re.compile(r"\$scrypt\$ln=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")
_MAX_CACHE = 4096
PARALLEL = max(1, min(4, os.cpu_count() or 1))  # scrypts at once: they are CPU-bound


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password: bytes, salt: bytes, ln: int, r: int, p: int) -> bytes:
    n = 1 << ln
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=256 * n * r, dklen=32)


def hash_password(password: str, ln: int = DEFAULT_LN, r: int = 8, p: int = 1) -> str:
    salt = os.urandom(16)
    key = _scrypt(password.encode(), salt, ln, r, p)
    return f"$scrypt$ln={ln},r={r},p={p}${_b64(salt)}${_b64(key)}"


def check_hash_format(text: str) -> str | None:
    """None when `text` is a hash we can check, else what is wrong with it."""
    m = _FORMAT.fullmatch(text.strip())
    if not m:
        return "not a relay365 password hash (make one with: relay365 hash-password)"
    ln, r, p = (int(x) for x in m.group(1, 2, 3))
    if not (10 <= ln <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
        return "scrypt parameters out of range (ln 10-20, r 1-32, p 1-16)"
    try:
        _unb64(m.group(4)), _unb64(m.group(5))
    except binascii.Error:
        return "salt or key is not valid base64 (copy the whole line relay365 hash-password printed)"
    return None


def verify_password(password: str, stored: str) -> bool:
    m = _FORMAT.fullmatch(stored.strip())
    if not m:
        return False
    ln, r, p = (int(x) for x in m.group(1, 2, 3))
    try:
        salt, expected = _unb64(m.group(4)), _unb64(m.group(5))
    except binascii.Error:
        return False
    key = _scrypt(password.encode(), salt, ln, r, p)
    return hmac.compare_digest(key, expected)


class Verifier:
    """Checks (username, password) against the configured hashes without blocking the loop.

    A verified login is remembered as an HMAC under a key of this process (never the password),
    so a known client's next login costs one HMAC, not an scrypt; `configure` keeps that memory
    across reloads (an entry stops matching by itself when the user's hash changes). Logins that
    arrive together with the same credentials share one scrypt, and at most `PARALLEL` run at once:
    after an upstream restart a thousand clients log in again at the same moment, and each scrypt
    takes 32 MiB and 50-100 ms of a core (the soak saw 294 MiB and a minute of CPU before this).
    """

    def __init__(self, hashes: dict[str, Secret]) -> None:
        self._hashes = hashes
        self._key = os.urandom(32)
        self._verified: dict[str, bytes] = {}
        self._flights: dict[bytes, asyncio.Future[bool | None]] = {}
        self._slots = asyncio.Semaphore(PARALLEL)

    def configure(self, hashes: dict[str, Secret]) -> None:
        self._hashes = hashes

    def _fingerprint(self, username: str, password: str, stored: str) -> bytes:
        msg = b"\0".join((username.encode(), password.encode(), stored.encode()))
        return hmac.digest(self._key, msg, "sha256")

    async def verify(self, username: str, password: Secret) -> bool:
        stored = self._hashes.get(username)
        # Unknown users cost the same scrypt as known ones, so timing does not reveal who exists.
        target = stored.reveal() if stored else _dummy_hash()
        fp = self._fingerprint(username, password.reveal(), target)
        cached = self._verified.get(username)
        if cached is not None and hmac.compare_digest(cached, fp):
            return True
        while (flight := self._flights.get(fp)) is not None:  # being checked right now
            shared = await asyncio.shield(flight)
            if shared is not None:
                return shared
        flight = self._flights[fp] = asyncio.get_running_loop().create_future()
        ok: bool | None = None
        try:
            async with self._slots:
                ok = await asyncio.to_thread(verify_password, password.reveal(), target)
            ok = ok and stored is not None
            if ok:
                if len(self._verified) >= _MAX_CACHE:
                    self._verified.pop(next(iter(self._verified)))
                self._verified[username] = fp
            return ok
        finally:
            del self._flights[fp]
            flight.set_result(ok)  # None: this check did not finish (cancelled): a waiter checks


@functools.cache
def _dummy_hash() -> str:
    return hash_password("relay365-no-such-user", ln=DEFAULT_LN)
