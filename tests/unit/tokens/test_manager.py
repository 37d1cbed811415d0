"""TokenManager against the fake identity platform (real msal, real HTTPS), with a settable clock."""

from __future__ import annotations

import asyncio
import threading

import pytest

from relay365.config import load_config
from relay365.standins.fakeidp import FakeIdP
from relay365.tokens.manager import TokenManager
from relay365.tokens.store import TokenStore

MAILBOX = "scanner@example.test"


@pytest.fixture
def idp(certs, clock):
    with FakeIdP(certs.cert_file, certs.key_file, clock=clock) as idp:
        idp.add_client("app", "secret")
        yield idp
        assert idp.errors == []


def config(tmp_path, idp, certs, seed: str):
    path = tmp_path / "relay.yaml"
    path.write_text(f"""
state_dir: state
apps:
  default: {{client_id: app, client_secret: secret, tenant: t, authority: "{idp.url}",
            ca_file: "{certs.ca_file}"}}
accounts: [{{mailbox: {MAILBOX}, refresh_token: "{seed}"}}]
smtp: {{unauthenticated: [{{network: 10.0.0.0/8, mailbox: {MAILBOX}}}]}}
""")
    return load_config(path)


def test_keeper_refreshes_ahead_of_expiry_with_no_login(tmp_path, idp, certs, clock):
    cfg = config(tmp_path, idp, certs, idp.issue_refresh_token(MAILBOX))
    manager = TokenManager(cfg, TokenStore(cfg.state_dir), clock=clock)

    async def run() -> None:
        keeper = asyncio.create_task(manager.maintain(interval=0.01))
        try:
            # a quiet account: nobody logs in, the keeper gets the first token by itself
            while MAILBOX not in manager._cache:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            assert idp.grants["refresh_token"] == 1  # and not again while the token is fresh
            first = manager._cache[MAILBOX].token
            # 50 minutes later less than the margin (10 min) is left: refreshed before anyone asks
            clock.now += 3600 - 600 + 1
            while manager._cache[MAILBOX].token == first:  # the keeper's work, not a login's
                await asyncio.sleep(0.01)
            assert idp.grants["refresh_token"] == 2
            token = await manager.get(MAILBOX)
            assert token.from_cache and token.token != first  # the login did not wait for it
            # the machine slept for four days: the next round redeems the refresh token again
            clock.now += 4 * 86400
            while idp.grants["refresh_token"] < 3:
                await asyncio.sleep(0.01)
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    asyncio.run(run())
    assert idp.token_requests == 3
    status = TokenStore(cfg.state_dir).get(MAILBOX)
    assert status is not None  # every rotation was stored


def test_fifty_concurrent_logins_one_request(tmp_path, idp, certs, clock):
    cfg = config(tmp_path, idp, certs, idp.issue_refresh_token(MAILBOX))
    manager = TokenManager(cfg, TokenStore(cfg.state_dir), clock=clock)

    async def run():
        return await asyncio.gather(*(manager.get(MAILBOX) for _ in range(50)))

    tokens = asyncio.run(run())
    assert len({t.token.reveal() for t in tokens}) == 1
    assert idp.token_requests == 1


def test_two_processes_rotating_at_once_never_lose_the_newest_token(tmp_path, idp, certs, clock):
    """Like the daemon and `relay365 auth` (or two daemons) on one state_dir: each round both
    start with no cached token and redeem; rotation makes a redeemed token worthless, so a lost
    update would show up as invalid_grant."""
    cfg = config(tmp_path, idp, certs, idp.issue_refresh_token(MAILBOX))
    errors: list[BaseException] = []

    def process(rounds: int) -> None:
        for _ in range(rounds):
            manager = TokenManager(cfg, TokenStore(cfg.state_dir), clock=clock)
            try:
                asyncio.run(manager.get(MAILBOX))
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=process, args=(8,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert idp.grants["refresh_token"] == 24
    # the stored token is the newest one: it still works
    manager = TokenManager(cfg, TokenStore(cfg.state_dir), clock=clock)
    asyncio.run(manager.get(MAILBOX))
    assert idp.grants["refresh_token"] == 25


def test_public_view_and_the_spools_hold_follow_the_token_state(tmp_path, idp, certs, clock):
    """What app, spool and CLI read: `views()`, `view()`, `needs_auth()` - never the internals."""
    from relay365.errors import TokenError
    from relay365.spool.handoff import make_token_hold
    from relay365.states import AccountState

    cfg = config(tmp_path, idp, certs, idp.issue_refresh_token(MAILBOX))
    manager = TokenManager(cfg, TokenStore(cfg.state_dir), clock=clock, retry_delays=())
    held = make_token_hold(manager)
    assert [v.state for v in manager.views()] == [AccountState.UNKNOWN]
    assert manager.view("nobody@example.test") is None and not held("nobody@example.test")

    asyncio.run(manager.get(MAILBOX))
    view = manager.view(MAILBOX.upper())
    assert view is not None and view.state is AccountState.OK and view.code is None
    assert not held(MAILBOX)

    idp.fail_next(1, "invalid_grant", (70008,))
    clock.now += 3600  # the cached token has expired: the next get() redeems and fails

    async def fail() -> None:
        with pytest.raises(TokenError):
            await manager.get(MAILBOX)

    asyncio.run(fail())
    view = manager.view(MAILBOX)
    assert view is not None and view.state is AccountState.NEEDS_AUTH
    assert view.code == "AADSTS70008" and "relay365 auth" in (view.action or "")
    assert held(MAILBOX) and manager.needs_auth(MAILBOX)
    assert manager.snapshot()[0]["state"] == "needs-auth"  # the word accounts.json keeps
