"""The token keeper (`TokenManager.maintain`) with nobody logging in, against the fake identity
platform on a settable clock: time moves by assignment, the keeper runs rounds every 10 ms, and
the identity platform's counters say what it did."""

from __future__ import annotations

import asyncio
import time

import pytest

from relay365.config import load_config
from relay365.errors import TokenError
from relay365.onboard import Onboarding
from relay365.standins.fakeidp import FakeIdP
from relay365.tokens.manager import TokenManager
from relay365.tokens.store import TokenStore

MAILBOX = "printer@example.test"
DAY = 86400.0


@pytest.fixture
def idp(certs, clock):
    with FakeIdP(certs.cert_file, certs.key_file, clock=clock) as idp:
        idp.add_client("app", "secret")
        yield idp
        assert idp.errors == []


def make_config(tmp_path, idp, certs, extra: str = "", seed: bool = True):
    path = tmp_path / "relay.yaml"
    rt = f', refresh_token: "{idp.issue_refresh_token(MAILBOX)}"' if seed else ""
    path.write_text(f"""
state_dir: state
apps:
  default: {{client_id: app, client_secret: secret, tenant: t, authority: "{idp.url}",
            ca_file: "{certs.ca_file}"}}
accounts: [{{mailbox: {MAILBOX}{rt}}}]
smtp: {{unauthenticated: [{{network: 10.0.0.0/8, mailbox: {MAILBOX}}}]}}
{extra}
""")
    return load_config(path)


class Keeper:
    """`maintain()` running as a task; `rounds()` waits for whole rounds to pass."""

    def __init__(self, manager: TokenManager) -> None:
        self.manager = manager
        self.done = 0
        save = manager.save_status

        async def counted() -> None:  # each round ends with one save_status; count them
            await save()
            self.done += 1

        manager.save_status = counted

    async def __aenter__(self) -> Keeper:
        self.task = asyncio.create_task(self.manager.maintain(interval=0.01))
        return self

    async def __aexit__(self, *exc) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def rounds(self, n: int = 5) -> None:
        # a refresh also calls save_status; waiting for n + 2 calls covers n whole rounds
        target = self.done + n + 2
        await until(lambda: self.done >= target)

    async def until(self, condition) -> None:
        """Wait for `condition`, then for the keeper to finish what it was doing."""
        await until(condition)
        await self.rounds(1)


async def until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the keeper did not get there"
        await asyncio.sleep(0.005)


def run(coro) -> None:
    asyncio.run(coro)


def test_refreshes_ahead_of_expiry_so_a_login_never_waits(tmp_path, idp, certs, clock):
    cfg = make_config(tmp_path, idp, certs)  # token_refresh_margin: 600 (default)
    manager = TokenManager(cfg, TokenStore(cfg.state_dir), clock=clock, retry_delays=())

    async def scenario() -> None:
        async with Keeper(manager) as keeper:
            await keeper.until(lambda: idp.grants["refresh_token"] == 1)  # nobody asked
            await keeper.rounds()
            assert idp.grants["refresh_token"] == 1  # a fresh token is left alone
            clock.now += 3600 - 600 - 200  # 800 s left: more than margin + two rounds' lead
            await keeper.rounds()
            assert idp.grants["refresh_token"] == 1
            clock.now += 190  # 610 s left: a login would still be served from memory ...
            await keeper.until(lambda: idp.grants["refresh_token"] == 2)  # ... but it's renewed
            assert manager.view(MAILBOX).expires_at - clock.now > 3500
            # the identity platform goes away; a login is answered from memory, with a token
            # that has well over the margin left
            idp.down = True
            token = await manager.get(MAILBOX)
            assert token.from_cache and idp.valid_token(token.token.reveal(), MAILBOX)
            assert token.expires_at - clock.now > cfg.token_refresh_margin
        assert idp.grants["refresh_token"] == 2

    run(scenario())


def test_keeper_refreshes_are_not_counted_as_use(tmp_path, idp, certs, clock):
    """`relay365 accounts` shows LAST USE: that is a client's login, not the keeper's work."""
    cfg = make_config(tmp_path, idp, certs)
    manager = TokenManager(cfg, TokenStore(cfg.state_dir), clock=clock, retry_delays=())

    async def scenario() -> None:
        async with Keeper(manager) as keeper:
            await keeper.until(lambda: idp.grants["refresh_token"] == 1)
            clock.now += 3000
            await keeper.until(lambda: idp.grants["refresh_token"] == 2)
            await keeper.rounds()
            assert manager.snapshot()[0]["last_use"] is None
            assert manager.snapshot()[0]["last_refresh"] == clock.now
            await manager.get(MAILBOX)
            assert manager.snapshot()[0]["last_use"] == clock.now

    run(scenario())


def test_quiet_refresh_token_is_redeemed_every_few_days_even_with_a_long_lived_access_token(
        tmp_path, idp, certs, clock):
    """The 90-day inactivity limit is about the refresh token. An access token that lives longer
    than the keepalive interval (token lifetime policies, CAE tokens) must not postpone it."""
    idp.access_token_lifetime = int(10 * DAY)
    cfg = make_config(tmp_path, idp, certs)
    assert cfg.token_keepalive == 3 * DAY  # the default
    store = TokenStore(cfg.state_dir)
    manager = TokenManager(cfg, store, clock=clock, retry_delays=())

    async def scenario() -> None:
        async with Keeper(manager) as keeper:
            await keeper.until(lambda: idp.grants["refresh_token"] == 1)
            await keeper.rounds()
            first = store.get(MAILBOX).refresh_token
            clock.now += 3 * DAY - 60  # quiet for almost three days: nothing to do
            await keeper.rounds()
            assert idp.grants["refresh_token"] == 1
            clock.now += 61
            await keeper.until(lambda: idp.grants["refresh_token"] == 2)
            await keeper.rounds()
            # redeemed, and the rotated refresh token is what the store holds now
            assert store.get(MAILBOX).refresh_token != first
            clock.now += DAY  # and not again a day later
            await keeper.rounds()
            assert idp.grants["refresh_token"] == 2
            clock.now += 2 * DAY
            await keeper.until(lambda: idp.grants["refresh_token"] == 3)

    run(scenario())


def test_keepalive_interval_is_the_token_keepalive_key(tmp_path, idp, certs, clock):
    idp.access_token_lifetime = int(10 * DAY)
    cfg = make_config(tmp_path, idp, certs, extra="token_keepalive: 7200")
    manager = TokenManager(cfg, TokenStore(cfg.state_dir), clock=clock, retry_delays=())

    async def scenario() -> None:
        async with Keeper(manager) as keeper:
            await keeper.until(lambda: idp.grants["refresh_token"] == 1)
            clock.now += 7000
            await keeper.rounds()
            assert idp.grants["refresh_token"] == 1
            clock.now += 201
            await keeper.until(lambda: idp.grants["refresh_token"] == 2)

    run(scenario())


def test_needs_auth_account_picks_up_relay365_auth_without_a_login(tmp_path, idp, certs, clock):
    """The refresh token died; the operator runs `relay365 auth`. The daemon must notice without
    a client logging in, so /readyz and `relay365 accounts` stop saying needs-auth at once - and
    until then it must not hammer the identity platform with the dead token."""
    cfg = make_config(tmp_path, idp, certs)
    manager = TokenManager(cfg, TokenStore(cfg.state_dir), clock=clock, retry_delays=())
    idp.fail_next(1, "invalid_grant", (70008,), retry_after=0)

    async def scenario() -> None:
        async with Keeper(manager) as keeper:
            await keeper.until(lambda: manager.view(MAILBOX).state == "needs-auth")
            await keeper.rounds(10)
            assert idp.token_requests == 1  # the dead token is not tried again and again
            assert manager.snapshot()[0]["code"] == "AADSTS70008"
            # what `relay365 auth` does once the operator has signed in
            onboarding = Onboarding(cfg, cfg.accounts[0])
            try:
                await asyncio.to_thread(onboarding.store,
                                        {"refresh_token": idp.issue_refresh_token(MAILBOX)})
            finally:
                onboarding.close()
            await keeper.until(lambda: manager.view(MAILBOX).state == "ok")
            assert idp.token_requests == 2

    run(scenario())


def test_a_second_process_does_not_wipe_the_daemons_status(tmp_path, idp, certs, clock):
    """`relay365 auth` (its --verify) and `check --upstream` run a TokenManager of their own on the
    daemon's state_dir. Writing accounts.json, they must not turn what the daemon knows about the
    other accounts into 'unknown' for `relay365 accounts`."""
    import json

    other = "other@example.test"
    cfg = make_config(tmp_path, idp, certs)
    text = (tmp_path / "relay.yaml").read_text().replace(
        "accounts: [",
        f'accounts: [{{mailbox: {other}, refresh_token: "{idp.issue_refresh_token(other)}"}}, ')
    cfg = load_config(tmp_path / "relay.yaml", text=text)
    daemon = TokenManager(cfg, TokenStore(cfg.state_dir), clock=clock, retry_delays=())
    idp.fail_next(1, "invalid_grant", (70008,), retry_after=0)

    async def scenario() -> None:
        with pytest.raises(TokenError):
            await daemon.get(other)  # needs-auth
        await daemon.get(MAILBOX)
        clock.now += 30
        cli = TokenManager(cfg, TokenStore(cfg.state_dir), clock=clock, retry_delays=())
        await cli.get(MAILBOX)  # writes accounts.json

    run(scenario())
    rows = {r["mailbox"]: r for r in json.loads((cfg.state_dir / "accounts.json").read_text())["accounts"]}
    assert rows[other]["state"] == "needs-auth" and rows[other]["code"] == "AADSTS70008"
    assert rows[MAILBOX]["state"] == "ok" and rows[MAILBOX]["last_refresh"] == clock.now
