"""The refresh-token store: one encrypted file in state_dir, safe between processes.

Theory of operation. Refresh tokens rotate on every use, so the newest one must be on disk before
anything else happens; losing it means a human has to re-authorise the mailbox. Every change is a
read-modify-write of `tokens.enc` under an exclusive `flock` on `tokens.lock`, written to a temp file,
fsynced, renamed over the old file and the directory fsynced: a crash leaves either the old or the new
file, never half of one. The daemon, `relay365 auth` and a second daemon all take the same lock.

Saving a rotated token is compare-and-swap (`put(..., expect=old)`): if someone else stored a different
token for the mailbox in the meantime (an operator re-authorised it while the daemon was refreshing),
theirs is newer and wins.

The file is Fernet-encrypted (AES-128-CBC + HMAC-SHA256, from `cryptography`). The key comes from
`$RELAY365_STORE_KEY`, else the systemd credential `$CREDENTIALS_DIRECTORY/store-key`, else the key file
`state_dir/store.key`, created 0600 on first use. A wrong key or a damaged file is an error that names
the file and what to do - never a silently empty store.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NotRequired, TypedDict, cast

from cryptography.fernet import Fernet, InvalidToken

from ..errors import RelayError
from ..fsutil import crash_point, locked, write_atomic
from ..secret import Secret

KEY_ENV = "RELAY365_STORE_KEY"
CRASH_ENV = "RELAY365_TOKEN_CRASH_AT"  # tests only: "<point>[:<nth time>]" -> SIGKILL there
_FORMAT_VERSION = 1


class StoreError(RelayError):
    pass


@dataclass(frozen=True)
class StoredToken:
    refresh_token: Secret
    updated_at: float
    seed_fingerprint: str | None = None
    public: bool = False  # from a public client flow (device code): refreshed without the secret


class _Entry(TypedDict):
    """One mailbox in the file, under its lower-cased address."""
    refresh_token: str
    updated_at: NotRequired[float]  # time.time() of the put
    seed_fingerprint: NotRequired[str]  # of the config's refresh_token this one descends from
    public: NotRequired[bool]  # from a public-client flow (device code): refreshed without the secret


class TokenStore:
    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / "tokens.enc"
        self.key_path = self.dir / "store.key"
        self._fernet: Fernet | None = None

    # -- key handling ---------------------------------------------------------------------------

    def _key(self) -> Fernet:
        if self._fernet is None:
            self._fernet = Fernet(self._load_key())
        return self._fernet

    def _load_key(self) -> bytes:
        if os.environ.get(KEY_ENV):
            return self._check_key(os.environ[KEY_ENV].encode(), f"${KEY_ENV}")
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if cred_dir and (Path(cred_dir) / "store-key").is_file():
            return self._key_file(Path(cred_dir) / "store-key")
        if self.key_path.is_file():
            return self._key_file(self.key_path)
        if self.path.exists():
            raise StoreError(
                f"{self.path} exists but its key {self.key_path} is missing: restore the key file "
                f"(or set ${KEY_ENV}); without it the stored tokens cannot be read. To start over, "
                f"move {self.path} away and re-authorise every mailbox.")
        self._ensure_dir()
        key = Fernet.generate_key()
        # Written whole to a temp file, then linked into place: link() fails if the key exists, so
        # a process that loses the race reads the winner's complete key, never an empty new file.
        tmp = self.key_path.with_name(f".{self.key_path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, self.key_path)
        except FileExistsError:  # another process created it just now
            return self._key_file(self.key_path)
        except OSError as exc:
            raise StoreError(f"cannot create the store key {self.key_path}: {exc.strerror}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return key

    def _key_file(self, path: Path) -> bytes:
        try:
            key = path.read_bytes().strip()
        except OSError as exc:
            raise StoreError(f"cannot read the store key {path}: {exc.strerror}; it must be readable "
                             f"by the user relay365 runs as") from None
        return self._check_key(key, str(path))

    @staticmethod
    def _check_key(key: bytes, where: str) -> bytes:
        try:
            if len(base64.urlsafe_b64decode(key)) == 32:
                return key
        except ValueError:
            pass
        raise StoreError(f"{where}: not a valid store key (expected 32 bytes, url-safe base64; "
                         f"make one with: python3 -c 'import os,base64;"
                         f"print(base64.urlsafe_b64encode(os.urandom(32)).decode())')")

    def _ensure_dir(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StoreError(f"cannot create state_dir {self.dir}: {exc.strerror}") from None

    # -- reading and writing --------------------------------------------------------------------

    def _read(self) -> dict[str, _Entry]:
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            data = json.loads(self._key().decrypt(blob.strip()))
        except InvalidToken:
            raise StoreError(
                f"{self.path} cannot be decrypted: the key ({self._key_source()}) is not the one it "
                f"was written with, or the file is damaged. Restore the right key or the file from "
                f"backup; or move the file away and re-authorise every mailbox.") from None
        except ValueError:
            raise StoreError(f"{self.path} is damaged (not valid JSON after decryption); restore it "
                             f"from backup or move it away and re-authorise every mailbox") from None
        if not isinstance(data, dict) or data.get("version") != _FORMAT_VERSION:
            version = data.get("version") if isinstance(data, dict) else None
            raise StoreError(f"{self.path}: unknown format version {version!r}")
        # only _write makes this file, and Fernet's HMAC proves it was us: trust the shape
        return cast(dict[str, _Entry], data.get("accounts", {}))

    def _key_source(self) -> str:
        if os.environ.get(KEY_ENV):
            return f"${KEY_ENV}"
        cred = os.environ.get("CREDENTIALS_DIRECTORY")
        if cred and (Path(cred) / "store-key").is_file():
            return str(Path(cred) / "store-key")
        return str(self.key_path)

    def _write(self, accounts: dict[str, _Entry]) -> None:
        blob = self._key().encrypt(json.dumps({"version": _FORMAT_VERSION, "accounts": accounts},
                                              sort_keys=True).encode())
        try:
            write_atomic(self.path, blob + b"\n",
                         before_rename=lambda: crash_point(CRASH_ENV, "store_before_rename"))
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc.strerror}") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._ensure_dir()
        path = self.dir / "tokens.lock"
        with locked(path, lambda exc: StoreError(f"cannot open {path}: {exc.strerror}")):
            yield

    @contextlib.contextmanager
    def account_lock(self, mailbox: str) -> Iterator[None]:
        """Held across redeeming a mailbox's refresh token and storing the rotated one, by every
        process, so the same token is never redeemed twice."""
        locks = self.dir / "locks"
        name = hashlib.sha256(mailbox.lower().encode()).hexdigest()[:24]

        def error(exc: OSError) -> StoreError:
            return StoreError(f"cannot create a lock in {locks}: {exc.strerror}")

        try:
            locks.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise error(exc) from None
        with locked(locks / f"{name}.lock", error):
            yield

    def check(self) -> int:
        """Open the store (creating the key if new); returns how many mailboxes it holds."""
        self._key()
        return len(self._read())

    def get(self, mailbox: str) -> StoredToken | None:
        entry = self._read().get(mailbox.lower())
        if not entry:
            return None
        return StoredToken(Secret(entry["refresh_token"]), entry.get("updated_at", 0.0),
                           entry.get("seed_fingerprint"), bool(entry.get("public", False)))

    def put(self, mailbox: str, refresh_token: Secret, *, expect: Secret | None = None,
            check_expect: bool = False, seed_fingerprint: str | None = None,
            public: bool | None = None) -> bool:
        """Store a refresh token. With check_expect, only if the stored one is still `expect`.
        `public`: it came from a public client flow (None: as the stored one; a rotated token
        keeps its kind).

        Returns False (and changes nothing) when the compare-and-swap found a different token.
        """
        with self._locked():
            accounts = self._read()
            current = accounts.get(mailbox.lower())
            if check_expect:
                now = current["refresh_token"] if current else None
                if now != (expect.reveal() if expect else None):
                    return False
            entry: _Entry = {"refresh_token": refresh_token.reveal(), "updated_at": time.time()}
            fp = seed_fingerprint or (current.get("seed_fingerprint") if current else None)
            if fp:
                entry["seed_fingerprint"] = fp
            if public is None:
                public = bool(current.get("public", False)) if current else False
            if public:
                entry["public"] = True
            accounts[mailbox.lower()] = entry
            self._write(accounts)
            crash_point(CRASH_ENV, "store_after_rename")
            return True

    def delete(self, mailbox: str) -> None:
        with self._locked():
            accounts = self._read()
            if accounts.pop(mailbox.lower(), None) is not None:
                self._write(accounts)

    def mailboxes(self) -> list[str]:
        return sorted(self._read())
