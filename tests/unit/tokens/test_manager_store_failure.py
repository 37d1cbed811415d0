"""A rotated refresh token that state_dir will not take (read-only, full) is not lost.

Found by the read-only-state_dir chaos test: the StoreError from `put` escaped the flight, so the
client heard the internal-error reply although the access token had been issued, and the rotated
refresh token was dropped - with a single-use refresh token (`rotate`), the only live one. Now it is
held in memory, redeemed from there and written when the directory takes it again.
"""

from __future__ import annotations

import asyncio

from relay365.secret import Secret
from relay365.tokens.manager import TokenManager
from relay365.tokens.store import StoreError, TokenStore
from tests.unit.tokens.test_manager import MAILBOX, config, idp  # noqa: F401 (fixture)


class FlakyStore(TokenStore):
    refuse = False

    def put(self, mailbox: str, refresh_token: Secret, **kw) -> bool:  # type: ignore[override]
        if self.refuse:
            raise StoreError(f"cannot write {self.path}: Read-only file system")
        return super().put(mailbox, refresh_token, **kw)


def live(server, token: Secret | None) -> bool:
    return token is not None and token.reveal() in server._refresh


def test_a_refused_rotation_is_held_used_and_written_later(tmp_path, idp, certs, clock):  # noqa: F811
    cfg = config(tmp_path, idp, certs, idp.issue_refresh_token(MAILBOX))
    store = FlakyStore(cfg.state_dir)
    manager = TokenManager(cfg, store, clock=clock)

    async def run() -> None:
        first = await manager.get(MAILBOX)  # seed redeemed, rotation stored
        assert live(idp, store.get(MAILBOX).refresh_token)
        store.refuse = True
        second = await manager.get(MAILBOX, rejected=first.token)  # a token, not an error
        assert second.token != first.token
        assert not live(idp, store.get(MAILBOX).refresh_token)  # disk: retired by the rotation
        third = await manager.get(MAILBOX, rejected=second.token)  # redeemed from memory
        assert third.token != second.token
        manager.flush_pending()  # still refused: kept
        assert manager._pending
        store.refuse = False
        manager.flush_pending()
        assert not manager._pending

    asyncio.run(run())
    assert live(idp, TokenStore(cfg.state_dir).get(MAILBOX).refresh_token)  # the newest one
    # and a fresh manager (a restart) logs in with what is on disk
    fresh = TokenManager(cfg, TokenStore(cfg.state_dir), clock=clock)
    assert asyncio.run(fresh.get(MAILBOX)).token


def test_a_lock_the_store_cannot_open_is_a_transient_token_error(tmp_path, idp, certs, clock):  # noqa: F811
    import pytest

    from relay365.errors import TokenError

    cfg = config(tmp_path, idp, certs, idp.issue_refresh_token(MAILBOX))
    (cfg.state_dir).mkdir(parents=True)
    (cfg.state_dir / "locks").write_text("not a directory")  # the account lock cannot be made
    manager = TokenManager(cfg, TokenStore(cfg.state_dir), clock=clock, retry_delays=())
    with pytest.raises(TokenError) as failed:
        asyncio.run(manager.get(MAILBOX))
    assert failed.value.transient and failed.value.code == "store"
    assert "cannot create a lock" in failed.value.action


def test_a_flush_that_cannot_even_lock_is_retried_later_not_raised(tmp_path, idp, certs, clock):  # noqa: F811
    cfg = config(tmp_path, idp, certs, idp.issue_refresh_token(MAILBOX))
    store = FlakyStore(cfg.state_dir)
    manager = TokenManager(cfg, store, clock=clock)
    first = asyncio.run(manager.get(MAILBOX))
    store.refuse = True
    asyncio.run(manager.get(MAILBOX, rejected=first.token))
    assert manager._pending
    locks = cfg.state_dir / "locks"
    locks.rename(cfg.state_dir / "locks.away")
    locks.write_text("not a directory")  # the keeper's flush cannot take the account lock
    manager.flush_pending()  # no exception: it would have ended the keeper task
    assert manager._pending
