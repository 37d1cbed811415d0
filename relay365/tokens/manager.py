"""Access tokens per upstream mailbox: cached, refreshed early, one request at a time per account.

Theory of operation.
- `get(mailbox)` answers from memory while the token has more than `margin` (default 10 min) left.
- Otherwise one *flight* per account redeems the refresh token (or the client credentials); every
  caller that arrives meanwhile awaits that same flight, so 50 simultaneous logins cost one request,
  and a failed flight fails all its waiters at once instead of each of them retrying.
- msal is synchronous (requests), so a flight runs in a worker thread (`relay365.tokens.msalapp`).
  There, under the store's per-account lock (shared with other processes), it reads the newest
  refresh token, redeems it and stores the rotated one before the lock is released: two processes
  never redeem the same token.
- msal's error dicts become `TokenError`s (`relay365.tokens.classify`) right where msal is called.
  Transient errors are retried with backoff within the flight; after a failed flight, new flights for
  that account are held back for a short, growing interval. Errors that need the operator are logged
  once, clearly, and then answered from memory until the stored refresh token changes (someone ran
  `relay365 auth`) or `NEEDS_AUTH_RECHECK` has passed.
- msal replays an identical failed request from its HTTP cache for 60 s; the cache is dropped after any
  failure so a recovery is seen at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import structlog

from .. import metrics
from ..config import AccountConfig, AppConfig, Config
from ..errors import TokenError
from ..fsutil import crash_point, write_atomic
from ..secret import Secret
from ..states import AccountState
from .http import TokenHTTPSession
from .msalapp import call_msal
from .pending import Pending
from .status import AccessToken, AccountStatus, AccountView, fingerprint, view_of
from .store import CRASH_ENV, StoredToken, StoreError, TokenStore

__all__ = ["GRAPH", "MAIL", "AccessToken", "AccountView", "TokenManager", "fingerprint"]

log = structlog.get_logger("relay365.tokens")

RETRY_DELAYS = (0.5, 2.0)  # within one flight, for transient errors
HOLD_MAX = 30.0  # seconds a failing account is held back between flights, at most
NEEDS_AUTH_RECHECK = 300.0
PENDING_RETRY = 2.0  # seconds between tries to store a rotated token state_dir refused
BACKGROUND_INTERVAL = 60.0
STATUS_FILE = "accounts.json"


MAIL = "mail"  # the Office 365 mail resource (IMAP, POP, SMTP): the default
GRAPH = "graph"  # Microsoft Graph (upstream.graph): the same refresh token redeems for it


def _cache_key(key: str, resource: str) -> str:
    return key if resource == MAIL else f"{key} {resource}"


class TokenManager:
    def __init__(self, config: Config, store: TokenStore, *, clock: Callable[[], float] = time.time,
                 retry_delays: tuple[float, ...] = RETRY_DELAYS) -> None:
        self._clock = clock
        self._retry_delays = retry_delays
        self.store = store
        self._cache: dict[str, AccessToken] = {}
        self._flights: dict[str, asyncio.Task[AccessToken]] = {}
        self._sessions: dict[str, TokenHTTPSession] = {}
        self._http_caches: dict[str, dict[str, Any]] = {}
        self._status: dict[str, AccountStatus] = {}
        self._pending: dict[str, Pending] = {}  # rotated refresh tokens state_dir refused
        self.configure(config)
        self._restore_routes()

    def configure(self, config: Config) -> None:
        """Take a (re)loaded config; cached tokens of unchanged accounts stay valid."""
        self.config = config
        self._sessions.clear()
        for a in config.accounts:
            key = a.mailbox.lower()
            old = self._status.get(key)
            new = replace(old, flow=a.flow) if old else AccountStatus(a.mailbox, a.flow)
            new.send_via = a.send_via
            if a.send_via != "auto":
                new.graph_since = new.graph_reason = None
            self._status[key] = new
        for key in set(self._status) - {a.mailbox.lower() for a in config.accounts}:
            self._status.pop(key)
            self._cache.pop(key, None)
            self._cache.pop(_cache_key(key, GRAPH), None)

    # -- the public interface ----------------------------------------------------------------

    async def get(self, mailbox: str, *, rejected: Secret | None = None,
                  resource: str = MAIL) -> AccessToken:
        """A token with at least `margin` left. `rejected`: the upstream refused this one, get another.
        `resource`: MAIL (Office 365 IMAP/POP/SMTP) or GRAPH; each has its own cached token."""
        key = mailbox.lower()
        if key in self._status:
            self._status[key].last_use = self._clock()
        return await self._get(key, rejected=rejected, resource=resource)

    async def _get(self, key: str, *, rejected: Secret | None = None,
                   force: bool = False, resource: str = MAIL) -> AccessToken:
        """`get` without counting as use; `force`: redeem even if the cached token is fresh."""
        account = self.config.account(key)
        if account is None:
            raise KeyError(key)
        status = self._status[key]
        key = _cache_key(key, resource)  # one token and one flight per (account, resource)
        cached = self._cache.get(key)
        if cached and cached.token != rejected and not force and self._fresh(cached):
            return replace(cached, from_cache=True)
        if rejected is not None and cached is not None and cached.token == rejected:
            self._cache.pop(key, None)
        flight = self._flights.get(key)
        if flight is None:  # the flight is a task of its own: a caller's cancellation cannot kill it
            flight = asyncio.create_task(self._fly(account, status, resource),
                                         name=f"token-flight:{key}")
            self._flights[key] = flight
            flight.add_done_callback(functools.partial(self._landed, key))
        return await asyncio.shield(flight)

    def _landed(self, key: str, flight: asyncio.Task[AccessToken]) -> None:
        self._flights.pop(key, None)
        if not flight.cancelled():
            flight.exception()  # retrieved here, so an unawaited failure is not reported as lost

    def _fresh(self, token: AccessToken) -> bool:
        return token.expires_at - self._clock() > self.config.token_refresh_margin

    # -- one flight --------------------------------------------------------------------------

    async def _fly(self, account: AccountConfig, status: AccountStatus,
                   resource: str = MAIL) -> AccessToken:
        now = self._clock()
        if status.error is not None and now < status.hold_until and (
                not status.error.needs_auth or await self._stored_fp(account) == status.rt_seen):
            raise status.error
        previous = status.state
        status.state = AccountState.REFRESHING
        for attempt, delay in enumerate((*self._retry_delays, None)):
            try:
                token = await asyncio.to_thread(self._redeem_translated, account, resource)
            except TokenError as exc:
                if exc.transient and delay is not None:
                    log.info("token_retry", account=account.mailbox, code=exc.code, attempt=attempt + 1)
                    await asyncio.sleep(delay)
                    continue
                self._failed(status, exc, previous)
                code = f"AADSTS{exc.code}" if isinstance(exc.code, int) else str(exc.code)
                metrics.TOKEN_REFRESHES.labels("failed", code).inc()
                await self.save_status()
                raise
            metrics.TOKEN_REFRESHES.labels("ok", "").inc()
            status.state, status.error, status.failures = AccountState.OK, None, 0
            status.expires_at, status.last_refresh = token.expires_at, self._clock()
            self._cache[_cache_key(account.mailbox.lower(), resource)] = token
            log.info("token_refreshed", account=account.mailbox, flow=account.flow, resource=resource,
                     expires_in=int(token.expires_at - self._clock()))
            await self.save_status()
            return token
        raise AssertionError("unreachable")

    def _failed(self, status: AccountStatus, exc: TokenError, previous: str) -> None:
        status.failures += 1
        repeated = status.error is not None and status.error.code == exc.code
        status.error = exc
        if exc.transient:
            status.state = AccountState.ERROR
            status.hold_until = self._clock() + min(2.0 ** (status.failures - 1), HOLD_MAX)
        else:
            status.state = AccountState.NEEDS_AUTH if exc.needs_auth else AccountState.ERROR
            status.hold_until = self._clock() + NEEDS_AUTH_RECHECK
        event = log.warning if (exc.transient or repeated) else log.error
        event("token_failed", account=exc.account, error=exc.error,
              code=f"AADSTS{exc.code}" if isinstance(exc.code, int) else exc.code,
              transient=exc.transient, action=exc.action, description=exc.description,
              state=status.state)

    async def _stored_fp(self, account: AccountConfig) -> str | None:
        if account.flow != "refresh_token":
            return None
        stored = await asyncio.to_thread(self.store.get, account.mailbox)
        return fingerprint(stored.refresh_token if stored else account.refresh_token)

    # -- in a worker thread ------------------------------------------------------------------

    def _redeem_translated(self, account: AccountConfig, resource: str) -> AccessToken:
        """`_redeem`, with the store's failures (a lock in a read-only state_dir) as TokenError."""
        try:
            return self._redeem(account, resource)
        except StoreError as exc:
            raise TokenError(account=account.mailbox, error="token_store", code="store",
                             transient=True, action=str(exc)) from None

    def _redeem(self, account: AccountConfig, resource: str = MAIL) -> AccessToken:
        app_cfg = self.config.apps[account.app]
        scopes = (self.config.scopes_for(account) if resource == MAIL
                  else self.config.graph_scopes_for(account))
        if account.flow == "client_credentials":
            result = self._call_msal(account, app_cfg, lambda app: app.acquire_token_for_client(scopes))
            return self._token(account, result)
        with self.store.account_lock(account.mailbox):
            rt, seeded, public = self._current_refresh_token(account)
            if rt is None:
                raise TokenError(
                    account=account.mailbox, error="no_refresh_token", code=None, transient=False,
                    action="no refresh token yet: run relay365 auth MAILBOX -c CONFIG, or seed "
                           "accounts[].refresh_token")
            # remembered so a needs-auth account is retried as soon as a different token is stored
            self._status[account.mailbox.lower()].rt_seen = fingerprint(rt)
            result = self._call_msal(
                account, app_cfg, lambda app: app.acquire_token_by_refresh_token(rt.reveal(), scopes),
                public=public)
            token = self._token(account, result)
            crash_point(CRASH_ENV, "after_idp_answer")  # tests: the platform rotated, nothing stored
            new_rt = result.get("refresh_token")
            if new_rt and (new_rt != rt.reveal() or seeded):
                held = self._pending.get(account.mailbox.lower())
                self._save_rotated(account.mailbox, held.rotated(Secret(new_rt)) if held else Pending(
                    Secret(new_rt), rt, not seeded, fingerprint(account.refresh_token), public))
            return token

    def _save_rotated(self, mailbox: str, rotated: Pending) -> None:
        """Store a rotated refresh token. When state_dir refuses it (read-only, full), the old
        one may already be dead: keep the new one in memory as the newest, redeem from there,
        and write it as soon as the directory takes it (`flush_pending`, every keeper step)."""
        try:
            rotated.save(self.store, mailbox)
        except StoreError as exc:
            self._pending[mailbox.lower()] = rotated
            log.error("token_store_failed", account=mailbox, error=str(exc),
                      action="the rotated refresh token is held in memory and written when "
                             "state_dir is writable again; until then a restart loses it")
        else:
            self._pending.pop(mailbox.lower(), None)

    def flush_pending(self) -> None:
        """Write rotated refresh tokens that state_dir refused earlier (in a worker thread)."""
        for key, rotated in list(self._pending.items()):
            with contextlib.suppress(StoreError), self.store.account_lock(key):  # not yet: later
                if self._pending.get(key) is rotated and (stored := rotated.try_save(self.store, key)):
                    self._pending.pop(key, None)
                    log.info("token_store_recovered", account=key, stored=stored == "stored")

    def _current_refresh_token(self, account: AccountConfig) -> tuple[Secret | None, bool, bool]:
        """The newest refresh token, whether it is the config's seed (which wins only when it is
        new to the store), and whether it is a public client's (`relay365 auth --device`)."""
        held = self._pending.get(account.mailbox.lower())
        if held is not None:  # newer than anything on disk: state_dir refused to store it
            return held.token, False, held.public
        stored: StoredToken | None = self.store.get(account.mailbox)
        seed = account.refresh_token
        if seed and (stored is None or stored.seed_fingerprint != fingerprint(seed)):
            return seed, True, False
        if stored is None:
            return None, False, False
        return stored.refresh_token, False, stored.public

    def _call_msal(self, account: AccountConfig, app_cfg: AppConfig,
                   call: Callable[[Any], Any], public: bool = False) -> dict[str, Any]:
        return call_msal(account.mailbox, app_cfg, self._session(account.app, app_cfg),
                         self._http_caches.setdefault(account.app, {}), call, public)

    def _session(self, name: str, app_cfg: AppConfig) -> TokenHTTPSession:
        if name not in self._sessions:
            self._sessions[name] = TokenHTTPSession(app_cfg.ca_file, app_cfg.timeout)
        return self._sessions[name]

    def _token(self, account: AccountConfig, result: dict[str, Any]) -> AccessToken:
        lifetime = float(result.get("expires_in") or 3600)
        return AccessToken(Secret(result["access_token"]), self._clock() + lifetime)

    # -- which way an account's messages go (send_via) ------------------------------------------

    def sends_via_graph(self, mailbox: str) -> bool:
        """True for `send_via: graph`, and for `auto` once Office 365 said SMTP AUTH is off."""
        st = self._status.get(mailbox.lower())
        return st is not None and st.sending_via == "graph"

    def may_switch_to_graph(self, mailbox: str) -> bool:
        st = self._status.get(mailbox.lower())
        return st is not None and st.send_via == "auto"

    async def switch_to_graph(self, mailbox: str, reason: str) -> bool:
        """`send_via: auto` and SMTP AUTH is off for the mailbox: from now on it sends through
        Graph (kept in accounts.json across restarts). True when this call made the switch."""
        st = self._status.get(mailbox.lower())
        if st is None or st.send_via != "auto" or st.graph_since is not None:
            return False
        st.graph_since, st.graph_reason = self._clock(), reason
        log.warning("send_via_switched", account=st.mailbox, to="graph", reason=reason,
                    action="SMTP AUTH is disabled for this mailbox or tenant; messages now go "
                           "through Microsoft Graph (needs Mail.Send)")
        await self.save_status()
        return True

    def _restore_routes(self) -> None:
        """An `auto` account that switched to Graph in an earlier run stays switched."""
        try:
            rows = json.loads((self.store.dir / STATUS_FILE).read_text()).get("accounts", [])
        except (OSError, ValueError, AttributeError):
            return
        for row in rows if isinstance(rows, list) else []:
            if not isinstance(row, dict) or not isinstance(row.get("graph_since"), (int, float)):
                continue
            st = self._status.get(str(row.get("mailbox", "")).lower())
            if st is not None and st.send_via == "auto":
                st.graph_since = float(row["graph_since"])

    # -- status for `relay365 accounts`, /readyz, metrics and the spool ------------------------

    def views(self) -> list[AccountView]:
        """Every configured account's state, in config order; no secrets."""
        return [view_of(st) for st in self._status.values()]

    def view(self, mailbox: str) -> AccountView | None:
        st = self._status.get(mailbox.lower())
        return view_of(st) if st is not None else None

    def needs_auth(self, mailbox: str) -> bool:
        """True while the account waits for the operator (`relay365 auth`): don't burn retries."""
        st = self._status.get(mailbox.lower())
        return st is not None and st.state is AccountState.NEEDS_AUTH

    def snapshot(self) -> list[dict[str, Any]]:
        """The views as JSON-ready rows (`accounts.json`)."""
        return [v.as_dict() for v in self.views()]

    async def save_status(self) -> None:
        """Write the snapshot to state_dir/accounts.json for `relay365 accounts` (best effort).

        Accounts this manager has not dealt with keep what the file says about them: `relay365
        auth` and `check --upstream` write here too, and must not blank out the daemon's view."""
        try:
            await asyncio.to_thread(self._write_status)
        except OSError as exc:
            log.warning("status_write_failed", error=exc.strerror)

    def _write_status(self) -> None:
        path = self.store.dir / STATUS_FILE
        rows = self.snapshot()
        try:
            before = json.loads(path.read_text()).get("accounts", [])
            kept = {r["mailbox"].lower(): r for r in before if isinstance(r, dict) and "mailbox" in r}
        except (OSError, ValueError, AttributeError, TypeError):
            kept = {}
        rows = [kept.get(r["mailbox"].lower(), r) if r["state"] == AccountState.UNKNOWN else r
                for r in rows]
        data = json.dumps({"written_at": self._clock(), "accounts": rows}, indent=1)
        write_atomic(path, data.encode(), 0o600)

    # -- keeping tokens alive ----------------------------------------------------------------

    async def maintain(self, interval: float = BACKGROUND_INTERVAL) -> None:
        """Refresh ahead of expiry so logins never wait, and redeem quiet refresh tokens every
        `token_keepalive` so the 90-day inactivity limit never bites. Runs until cancelled.
        The keeper's own refreshes do not count as use (`last_use` is a client's login)."""
        while True:
            for key, status in list(self._status.items()):
                if self._due(key, status, interval):
                    try:
                        await self._get(key, force=True)
                    except (TokenError, KeyError):
                        pass  # already logged and recorded in status
            await self.save_status()  # last_use moves with every login; written once a minute
            await self._sleep_flushing(interval)

    async def _sleep_flushing(self, interval: float) -> None:
        """Sleep `interval`, writing held rotated tokens every PENDING_RETRY meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + interval
        while (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(left, PENDING_RETRY))
            if self._pending:
                await asyncio.to_thread(self.flush_pending)

    def _due(self, key: str, status: AccountStatus, interval: float) -> bool:
        now = self._clock()
        if status.error is not None and now < status.hold_until:
            # held back; but for needs-auth a look is free (no request unless `relay365 auth`
            # stored a new refresh token meanwhile), so a re-authorised account recovers at once
            return status.error.needs_auth
        if status.error is not None or status.last_refresh is None:
            return True
        if now - status.last_refresh >= self.config.token_keepalive:
            return True  # quiet for days: redeem the refresh token, whatever the access token's age
        cached = self._cache.get(key)
        # refresh a little before get() would have to (two rounds, at least two minutes ahead),
        # so no login ever waits for it
        lead = 2 * max(interval, BACKGROUND_INTERVAL)
        return cached is None or cached.expires_at - now < self.config.token_refresh_margin + lead
