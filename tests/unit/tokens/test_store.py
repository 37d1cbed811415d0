"""The encrypted token store: at rest, keys, damage, and two writers at once."""

from __future__ import annotations

import base64
import os
import stat
import threading
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from relay365.secret import Secret
from relay365.tokens.store import StoreError, TokenStore

RT = "0.AXYZ-refresh-token-" + "r" * 200


@pytest.fixture(autouse=True)
def _no_key_from_the_environment(monkeypatch):
    monkeypatch.delenv("RELAY365_STORE_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


def key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def test_encrypted_at_rest_and_key_file_0600(tmp_path):
    store = TokenStore(tmp_path)
    store.put("Scanner@Contoso.com", Secret(RT))
    raw = (tmp_path / "tokens.enc").read_bytes()
    assert RT.encode() not in raw and b"scanner" not in raw.lower()
    assert stat.S_IMODE((tmp_path / "store.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tokens.enc").stat().st_mode) == 0o600
    assert TokenStore(tmp_path).get("scanner@contoso.com").refresh_token.reveal() == RT


def test_key_from_environment_and_from_systemd_credential(tmp_path, monkeypatch):
    k = key()
    monkeypatch.setenv("RELAY365_STORE_KEY", k)
    TokenStore(tmp_path / "a").put("a@x.test", Secret(RT))
    assert not (tmp_path / "a" / "store.key").exists()
    monkeypatch.delenv("RELAY365_STORE_KEY")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "store-key").write_text(k + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert TokenStore(tmp_path / "a").get("a@x.test").refresh_token.reveal() == RT


def test_wrong_key_names_the_file_and_what_to_do(tmp_path, monkeypatch):
    TokenStore(tmp_path).put("a@x.test", Secret(RT))
    monkeypatch.setenv("RELAY365_STORE_KEY", key())
    with pytest.raises(StoreError) as err:
        TokenStore(tmp_path).get("a@x.test")
    msg = str(err.value)
    assert str(tmp_path / "tokens.enc") in msg and "$RELAY365_STORE_KEY" in msg
    assert "re-authorise" in msg


def test_missing_key_with_an_existing_store_is_not_a_silently_empty_store(tmp_path):
    TokenStore(tmp_path).put("a@x.test", Secret(RT))
    (tmp_path / "store.key").unlink()
    with pytest.raises(StoreError) as err:
        TokenStore(tmp_path).check()
    assert "store.key is missing" in str(err.value) and "restore the key file" in str(err.value)
    assert not (tmp_path / "store.key").exists()  # no new key was made over the old store


def test_damaged_file_is_a_clear_error(tmp_path):
    store = TokenStore(tmp_path)
    store.put("a@x.test", Secret(RT))
    path = tmp_path / "tokens.enc"
    path.write_bytes(path.read_bytes()[:40] + b"garbage")
    with pytest.raises(StoreError) as err:
        TokenStore(tmp_path).get("a@x.test")
    assert "cannot be decrypted" in str(err.value) and str(path) in str(err.value)


def test_malformed_key_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.setenv("RELAY365_STORE_KEY", "too-short")
    with pytest.raises(StoreError) as err:
        TokenStore(tmp_path).check()
    assert "not a valid store key" in str(err.value) and "urlsafe_b64encode" in str(err.value)


def test_compare_and_set_refuses_a_stale_writer(tmp_path):
    store = TokenStore(tmp_path)
    store.put("a@x.test", Secret("rt-1"))
    assert store.put("a@x.test", Secret("rt-2"), expect=Secret("rt-1"), check_expect=True)
    # a writer that still thinks rt-1 is current must not overwrite rt-2
    assert not store.put("a@x.test", Secret("rt-3"), expect=Secret("rt-1"), check_expect=True)
    assert store.get("a@x.test").refresh_token.reveal() == "rt-2"


def test_many_writers_at_once_lose_no_account(tmp_path):
    """Threads take the same flock as processes (one open file description each)."""
    TokenStore(tmp_path).check()

    def writer(n: int) -> None:
        s = TokenStore(tmp_path)
        for i in range(20):
            s.put(f"box{n}@x.test", Secret(f"rt-{n}-{i}"))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = TokenStore(tmp_path)
    assert store.mailboxes() == [f"box{n}@x.test" for n in range(6)]
    assert [store.get(f"box{n}@x.test").refresh_token.reveal() for n in range(6)] == \
        [f"rt-{n}-19" for n in range(6)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp") or p.suffix == ".tmp"]


# -- keys: where they come from, and every way they can be wrong ---------------------------------

def test_key_precedence_env_then_credential_then_file(tmp_path, monkeypatch):
    file_key, cred_key, env_key = key(), key(), key()
    (tmp_path / "store.key").write_text(file_key + "\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "store-key").write_text(cred_key)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("RELAY365_STORE_KEY", env_key)
    assert TokenStore(tmp_path)._load_key() == env_key.encode()
    monkeypatch.delenv("RELAY365_STORE_KEY")
    assert TokenStore(tmp_path)._load_key() == cred_key.encode()
    (creds / "store-key").unlink()  # a credential directory without our key: the file is next
    assert TokenStore(tmp_path)._load_key() == file_key.encode()


def test_a_new_key_file_is_a_valid_key_created_0600_with_a_0700_dir(tmp_path):
    store = TokenStore(tmp_path / "state")
    assert store.check() == 0
    k = (tmp_path / "state" / "store.key").read_bytes()
    assert k.endswith(b"\n") and len(base64.urlsafe_b64decode(k.strip())) == 32
    assert stat.S_IMODE((tmp_path / "state" / "store.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["store.key"]  # no temp file left


def test_many_first_users_agree_on_one_key(tmp_path):
    """Threads (or processes) opening a new state_dir at once: one key, never a half-written one."""
    for attempt in range(25):
        d = tmp_path / str(attempt)
        results: list = []

        def first_use() -> None:
            try:
                results.append(TokenStore(d)._load_key())
            except Exception as exc:
                results.append(exc)

        threads = [threading.Thread(target=first_use) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [(d / "store.key").read_bytes().strip()] * 4


def test_wrong_key_from_a_systemd_credential_names_that_file(tmp_path, monkeypatch):
    TokenStore(tmp_path / "s").put("a@x.test", Secret(RT))
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "store-key").write_text(key())
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    with pytest.raises(StoreError) as err:
        TokenStore(tmp_path / "s").get("a@x.test")
    assert str(err.value) == (
        f"{tmp_path / 's' / 'tokens.enc'} cannot be decrypted: the key ({creds / 'store-key'}) is not the "
        f"one it was written with, or the file is damaged. Restore the right key or the file from backup; "
        f"or move the file away and re-authorise every mailbox.")


def test_an_unreadable_key_file_is_a_clear_error(tmp_path, monkeypatch):
    TokenStore(tmp_path).put("a@x.test", Secret(RT))
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "store.key":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(StoreError) as err:
        TokenStore(tmp_path).get("a@x.test")
    assert str(err.value) == (f"cannot read the store key {tmp_path / 'store.key'}: "
                              f"Permission denied; it must "
                              f"be readable by the user relay365 runs as")


def test_a_key_that_cannot_be_created_is_a_clear_error(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("relay365.tokens.store.os.link", refuse)
    with pytest.raises(StoreError) as err:
        TokenStore(tmp_path).check()
    assert str(err.value) == f"cannot create the store key {tmp_path / 'store.key'}: Read-only file system"
    assert list(tmp_path.iterdir()) == []  # the temp key did not stay behind


def test_a_key_path_that_is_a_directory_is_a_clear_error(tmp_path):
    (tmp_path / "store.key").mkdir()
    with pytest.raises(StoreError) as err:
        TokenStore(tmp_path).check()
    assert str(err.value).startswith(f"cannot read the store key {tmp_path / 'store.key'}: Is a directory")


@pytest.mark.parametrize("bad", ["", "x" * 44, base64.urlsafe_b64encode(os.urandom(16)).decode(), "é" * 44])
def test_malformed_keys(tmp_path, monkeypatch, bad):
    (tmp_path / "store.key").write_text(bad)
    with pytest.raises(StoreError) as err:
        TokenStore(tmp_path).check()
    assert str(err.value).startswith(f"{tmp_path / 'store.key'}: not a valid store key (expected 32 bytes, "
                                     f"url-safe base64; make one with: python3 -c ")


def test_missing_key_with_a_systemd_credential_directory_still_refuses(tmp_path, monkeypatch):
    TokenStore(tmp_path).put("a@x.test", Secret(RT))
    (tmp_path / "store.key").unlink()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "no-creds"))
    with pytest.raises(StoreError, match="is missing: restore the key file"):
        TokenStore(tmp_path).get("a@x.test")


# -- the file: damage in every form is an error, never an empty store ----------------------------

def encrypt_with_the_stores_key(tmp_path, payload: bytes) -> None:
    TokenStore(tmp_path).check()
    f = Fernet((tmp_path / "store.key").read_bytes().strip())
    (tmp_path / "tokens.enc").write_bytes(f.encrypt(payload))


@pytest.mark.parametrize("payload, message", [
    (b"[1, 2]", "{path}: unknown format version None"),
    (b"7", "{path}: unknown format version None"),
    (b'{"version": 2, "accounts": {}}', "{path}: unknown format version 2"),
    (b"{not json", "{path} is damaged (not valid JSON after decryption); restore it from backup or move it "
                   "away and re-authorise every mailbox"),
    (b"\xff\xfe", "{path} is damaged (not valid JSON after decryption); restore it from backup or move it "
                  "away and re-authorise every mailbox"),
])
def test_a_decryptable_but_wrong_file(tmp_path, payload, message):
    encrypt_with_the_stores_key(tmp_path, payload)
    with pytest.raises(StoreError) as err:
        TokenStore(tmp_path).mailboxes()
    assert str(err.value) == message.format(path=tmp_path / "tokens.enc")


@pytest.mark.parametrize("damage", [lambda b: b"", lambda b: b[:-10], lambda b: b"x" + b[1:],
                                    lambda b: os.urandom(len(b))])
def test_damage_is_never_a_silently_empty_store(tmp_path, damage):
    TokenStore(tmp_path).put("a@x.test", Secret(RT))
    path = tmp_path / "tokens.enc"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(StoreError, match="cannot be decrypted"):
        TokenStore(tmp_path).mailboxes()


def test_an_unreadable_store_file(tmp_path):
    (tmp_path / "tokens.enc").mkdir()
    (tmp_path / "store.key").write_text(key())
    with pytest.raises(StoreError) as err:
        TokenStore(tmp_path).get("a@x.test")
    assert str(err.value) == f"cannot read {tmp_path / 'tokens.enc'}: Is a directory"


def test_a_state_dir_that_cannot_be_made(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError) as err:
        TokenStore(tmp_path / "file" / "state").check()
    assert str(err.value) == f"cannot create state_dir {tmp_path / 'file' / 'state'}: Not a directory"


# -- writes: atomic, compare-and-set, lower-cased mailboxes --------------------------------------

def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    store = TokenStore(tmp_path)
    store.put("a@x.test", Secret("rt-1"))
    before = (tmp_path / "tokens.enc").read_bytes()

    def no_space(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("relay365.tokens.store.os.replace", no_space)
    with pytest.raises(StoreError) as err:
        store.put("a@x.test", Secret("rt-2"))
    assert str(err.value) == f"cannot write {tmp_path / 'tokens.enc'}: No space left on device"
    assert (tmp_path / "tokens.enc").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.key", "tokens.enc", "tokens.lock"]


def test_compare_and_set_against_absent_and_lower_case_keys(tmp_path):
    store = TokenStore(tmp_path)
    assert store.put("New@X.test", Secret("rt-1"), expect=None, check_expect=True)  # absent: as expected
    assert not store.put("new@x.test", Secret("rt-2"), expect=None, check_expect=True)  # now present
    assert store.put("NEW@x.TEST", Secret("rt-2"), expect=Secret("rt-1"), check_expect=True)
    assert store.mailboxes() == ["new@x.test"]
    assert store.get("new@X.test").refresh_token.reveal() == "rt-2"
    assert not store.put("gone@x.test", Secret("rt"), expect=Secret("rt-0"), check_expect=True)
    assert store.get("gone@x.test") is None


def test_seed_fingerprint_survives_rotation_and_delete(tmp_path):
    store = TokenStore(tmp_path)
    store.put("a@x.test", Secret("rt-1"), seed_fingerprint="fp-1")
    store.put("a@x.test", Secret("rt-2"))
    got = store.get("a@x.test")
    assert (got.refresh_token.reveal(), got.seed_fingerprint) == ("rt-2", "fp-1") and got.updated_at > 0
    store.put("b@x.test", Secret("rt"))
    assert store.get("b@x.test").seed_fingerprint is None
    store.delete("A@x.test")
    store.delete("never@x.test")
    assert store.mailboxes() == ["b@x.test"] and store.check() == 1


def test_account_lock_excludes_a_second_holder(tmp_path):
    store = TokenStore(tmp_path)
    order: list[str] = []
    inside = threading.Event()

    def second() -> None:
        with TokenStore(tmp_path).account_lock("A@x.test"):  # same mailbox, any case
            order.append("second")

    with store.account_lock("a@x.test"):
        t = threading.Thread(target=second)
        t.start()
        inside.wait(0.2)  # give the second holder time to block on the lock
        order.append("first")
    t.join(5)
    assert order == ["first", "second"]
    with store.account_lock("a@x.test"), TokenStore(tmp_path).account_lock("b@x.test"):
        pass  # another mailbox's lock is independent (this would deadlock otherwise)
