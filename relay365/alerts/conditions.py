"""What is wrong now: plain facts about the relay in, `Condition`s out. Pure, time as `now`.

The adapter gathers `Facts` (the token manager's account views, when each refresh token was last
redeemed, the apps' secret expiry dates, the spool's age and its dead letters); `observe` turns them
into the `Observation` the alert core works on. Every word of an alert is made here, from views
that carry no secret (`relay365.tokens.status.AccountView`) and from config names and dates.

A secret expiring on `2027-05-01` is taken to expire at the start of that day (UTC): Entra ID stops
accepting it some time that day, and an hour early is better than an hour late.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..config import AlertsConfig
from ..states import AccountState
from ..tokens.status import AccountView
from .core import Condition, Kind, Observation

DAY = 86400.0
# the codes of a broken app credential: fixing the config, not signing in again, is the cure
APP_SECRET_CODES = {"AADSTS7000222", "AADSTS7000215", "AADSTS7000218", "AADSTS700016"}
UNDECIDED_STATES = (AccountState.UNKNOWN, AccountState.REFRESHING)


@dataclass(frozen=True)
class DeadLetter:
    id: str
    mailbox: str
    rcpts: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Facts:
    config_path: str
    views: Sequence[AccountView]
    last_redeemed: dict[str, float] = field(default_factory=dict)  # lower-cased mailbox -> time
    secret_expiry: dict[str, datetime.date] = field(default_factory=dict)  # app -> date
    spool_depth: int = 0
    spool_oldest: float = 0.0  # seconds
    dead: Sequence[DeadLetter] = ()


def observe(facts: Facts, cfg: AlertsConfig, now: float) -> Observation:
    active: list[Condition] = []
    undecided: set[str] = set()
    for view in facts.views:
        problem = needs_auth(view, facts.config_path)
        if problem is not None:
            active.append(problem)
        elif view.state in UNDECIDED_STATES:  # not tried yet in this run: neither start nor clear
            undecided |= {f"{Kind.NEEDS_AUTH}:{view.mailbox}",
                          f"{Kind.REFRESH_TOKEN_STALE}:{view.mailbox}"}
            continue
        stale = stale_refresh_token(view, facts.last_redeemed.get(view.mailbox.lower()),
                                    cfg.refresh_token_stale_days, now, facts.config_path)
        if stale is not None:
            active.append(stale)
    for app, expires in sorted(facts.secret_expiry.items()):
        soon = secret_expiry(app, expires, cfg.secret_warn_days, now, facts.config_path)
        if soon is not None:
            active.append(soon)
    if facts.spool_depth and facts.spool_oldest > cfg.spool_oldest_after:
        active.append(spool_stuck(facts.spool_depth, facts.spool_oldest, cfg.spool_oldest_after,
                                  facts.config_path))
    active += [dead_letter(d, facts.config_path) for d in facts.dead]
    return Observation(tuple(active), frozenset(undecided))


def needs_auth(view: AccountView, config_path: str) -> Condition | None:
    """The account waits for the operator: a refresh token to renew, or an app to fix."""
    if not (view.state is AccountState.NEEDS_AUTH
            or (view.state is AccountState.ERROR and view.attention)):
        return None
    code = view.code or "no code"
    if view.code in APP_SECRET_CODES or view.flow == "client_credentials":
        command = f"relay365 check -c {config_path} --upstream"
        what = "fix the app registration's credentials in the config, reload, then check"
    else:
        command = f"relay365 auth {view.mailbox} -c {config_path}"
        what = "re-authorise the mailbox"
    return Condition(
        Kind.NEEDS_AUTH, view.mailbox, f"{view.mailbox} needs attention: {code}",
        detail=(f"Office 365 refused the account's token ({code}, {view.error or 'error'}); "
                f"its mail is held until this is fixed."),
        action=view.action or what, command=command, severity="critical")


def stale_refresh_token(view: AccountView, last: float | None, days: float, now: float,
                        config_path: str) -> Condition | None:
    """A refresh token nobody has redeemed successfully for `days` (90 days idle kills it)."""
    if view.flow != "refresh_token" or last is None or now - last < days * DAY:
        return None
    idle = int((now - last) // DAY)
    return Condition(
        Kind.REFRESH_TOKEN_STALE, view.mailbox,
        f"{view.mailbox}: refresh token not redeemed for {idle} days",
        detail=(f"The last successful refresh was {idle} days ago; Entra ID expires a refresh "
                f"token unused for 90 days (AADSTS700082)."),
        action="see why refreshing fails (relay365 accounts); re-authorise if it keeps failing",
        command=f"relay365 auth {view.mailbox} -c {config_path}")


def secret_stage(expires: datetime.date, warn_days: Sequence[int], now: float) -> str | None:
    """`30d`, `7d`, `1d` (the smallest threshold reached), `expired`, or None (not yet)."""
    at = datetime.datetime.combine(expires, datetime.time(), datetime.UTC).timestamp()
    left = at - now
    if left <= 0:
        return "expired"
    reached = [d for d in warn_days if left <= d * DAY]
    return f"{min(reached)}d" if reached else None


def secret_expiry(app: str, expires: datetime.date, warn_days: Sequence[int], now: float,
                  config_path: str) -> Condition | None:
    stage = secret_stage(expires, warn_days, now)
    if stage is None:
        return None
    iso = expires.isoformat()
    if stage == "expired":
        title = f"app {app}: client secret expired on {iso}"
        detail = ("Entra ID refuses an expired secret (AADSTS7000222): every account of this app "
                  "stops getting tokens.")
    else:
        title = f"app {app}: client secret expires on {iso} (within {stage.removesuffix('d')} days)"
        detail = "When it expires, Entra ID refuses it (AADSTS7000222) and mail stops."
    return Condition(
        Kind.SECRET_EXPIRY, app, title, detail=detail,
        action=(f"create a new client secret in the app registration (Certificates & secrets), "
                f"put it in apps.{app}.client_secret, set apps.{app}.client_secret_expires, reload"),
        command=f"relay365 check -c {config_path} --upstream", stage=stage,
        severity="critical" if stage in ("expired", "1d") else "warning")


def spool_stuck(depth: int, oldest: float, threshold: float, config_path: str) -> Condition:
    return Condition(
        Kind.SPOOL_STUCK, "spool", f"spool: oldest of {depth} queued message(s) waits for over "
                                   f"{_span(threshold)}",
        detail=f"The oldest message has waited {_span(oldest)}; Office 365 is not taking mail.",
        action="see why (relay365 queue list, relay365 accounts)",
        command=f"relay365 queue list -c {config_path}")


def dead_letter(d: DeadLetter, config_path: str) -> Condition:
    return Condition(
        Kind.SPOOL_FAILED, d.id, f"message from {d.mailbox} moved to failed/ ({d.id})",
        detail=f"To {', '.join(d.rcpts)}: {d.reason}",
        action="retry it once the cause is fixed, or delete it",
        command=f"relay365 queue retry {d.id} -c {config_path}")


def _span(seconds: float) -> str:
    if seconds >= 2 * DAY:
        return f"{int(seconds // DAY)} days"
    if seconds >= 7200:
        return f"{int(seconds // 3600)} hours"
    if seconds >= 120:
        return f"{int(seconds // 60)} minutes"
    return f"{int(seconds)} seconds"
