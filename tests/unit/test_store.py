"""The encrypted token store: at rest, keys, damage, and two writers at once."""

from __future__ import annotations

import base64
import os
import stat
import threading

import pytest

from relay.secret import Secret
from relay.tokens.store import StoreError, TokenStore

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
