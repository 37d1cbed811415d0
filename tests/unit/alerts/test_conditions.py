"""Facts -> conditions, with an injected clock; the words of an alert; who sends alert mail."""

from __future__ import annotations

import datetime
import email
import email.policy

import pytest

from relay365.alerts import render
from relay365.alerts.conditions import (
    DAY,
    DeadLetter,
    Facts,
    observe,
    secret_stage,
)
from relay365.alerts.core import AlertBook, Kind, Notice, Observation, Phase
from relay365.alerts.send import pick_sender
from relay365.config import AccountConfig, AlertsConfig, AppConfig, Config
from relay365.states import AccountState
from relay365.tokens.status import AccountView

CFG = AlertsConfig(mail_to=["it@x.test"])
EXPIRES = datetime.date(2027, 5, 1)
MIDNIGHT = datetime.datetime(2027, 5, 1, tzinfo=datetime.UTC).timestamp()


def view(mailbox="a@x.test", state=AccountState.OK, code=None, attention=False, flow="refresh_token",
         last_refresh=None, action=None, error=None) -> AccountView:
    return AccountView(mailbox, flow, state, code, error, action, None, last_refresh, None,
                       attention=attention)


def facts(**kw) -> Facts:
    return Facts(kw.pop("config_path", "/etc/relay365/config.yaml"), kw.pop("views", []), **kw)


def keys(obs: Observation) -> list[str]:
    return [c.key for c in obs.active]


# -- secret expiry: 30, 7 and 1 days ahead, then expired -------------------------------------

@pytest.mark.parametrize("days_before, stage", [
    (45, None), (30.01, None), (30, "30d"), (8, "30d"), (7, "7d"), (2, "7d"), (1, "1d"),
    (0.01, "1d"), (0, "expired"), (-3, "expired"),
])
def test_secret_stage_by_days_left(days_before, stage):
    assert secret_stage(EXPIRES, [30, 7, 1], MIDNIGHT - days_before * DAY) == stage


def test_a_secret_warned_at_30_7_and_1_days_through_the_core_with_a_clock():
    """The whole path a secret takes: day by day for 40 days, one START and three UPDATEs."""
    book = AlertBook(("mail",), max_per_hour=20)
    heard = []
    for day in range(40, -3, -1):
        now = MIDNIGHT - day * DAY + 3600  # one look a day, an hour past midnight
        obs = observe(facts(secret_expiry={"default": EXPIRES}), CFG, now)
        for n in book.plan(obs, now).notices:
            book.sent(n, now)
            heard.append((day, n.phase, n.condition.stage))
    assert heard == [(30, Phase.START, "30d"), (7, Phase.UPDATE, "7d"), (1, Phase.UPDATE, "1d"),
                     (0, Phase.UPDATE, "expired")]


def test_the_expired_secret_names_aadsts7000222_and_what_to_do():
    (c,) = observe(facts(secret_expiry={"prod": EXPIRES}), CFG, MIDNIGHT + 1).active
    assert c.kind is Kind.SECRET_EXPIRY and c.severity == "critical"
    assert "expired on 2027-05-01" in c.title and "AADSTS7000222" in c.detail
    assert "apps.prod.client_secret" in c.action
    assert c.command == "relay365 check -c /etc/relay365/config.yaml --upstream"


# -- accounts ----------------------------------------------------------------------------------

def test_needs_auth_names_the_code_the_action_and_the_exact_command():
    v = view(state=AccountState.NEEDS_AUTH, code="AADSTS70008", error="invalid_grant",
             action="the refresh token expired; re-authorise")
    (c,) = observe(facts(views=[v]), CFG, 0).active
    assert c.key == "needs_auth:a@x.test" and "AADSTS70008" in c.title
    assert c.action == "the refresh token expired; re-authorise"
    assert c.command == "relay365 auth a@x.test -c /etc/relay365/config.yaml"


def test_an_expired_app_secret_is_needs_attention_with_the_check_command():
    v = view(state=AccountState.ERROR, code="AADSTS7000222", error="invalid_client", attention=True,
             action="the client secret expired; create a new one")
    (c,) = observe(facts(views=[v]), CFG, 0).active
    assert "AADSTS7000222" in c.title and c.command.startswith("relay365 check -c ")


def test_transient_trouble_is_no_alert_and_unknown_is_undecided():
    obs = observe(facts(views=[view(state=AccountState.ERROR, code="network"),
                               view("b@x.test", state=AccountState.UNKNOWN, last_refresh=None)]),
                  CFG, 0)
    assert obs.active == ()
    assert obs.undecided == {"needs_auth:b@x.test", "refresh_token_stale:b@x.test"}


def test_a_refresh_token_not_redeemed_for_n_days():
    now = 100 * DAY
    young = facts(views=[view()], last_redeemed={"a@x.test": now - 13.9 * DAY})
    old = facts(views=[view()], last_redeemed={"a@x.test": now - 15 * DAY})
    assert observe(young, CFG, now).active == ()
    (c,) = observe(old, CFG, now).active
    assert c.kind is Kind.REFRESH_TOKEN_STALE and "15 days" in c.title
    app_only = facts(views=[view(flow="client_credentials")], last_redeemed={"a@x.test": 0.0})
    assert observe(app_only, CFG, now).active == ()  # no refresh token to go stale


def test_spool_age_and_dead_letters():
    dead = DeadLetter("0001-42", "a@x.test", ("bob@y.test",), "550 5.1.1 no such user")
    obs = observe(facts(spool_depth=3, spool_oldest=3601, dead=[dead]), CFG, 0)
    assert keys(obs) == ["spool_stuck:spool", "spool_failed:0001-42"]
    assert "550 5.1.1" in obs.active[1].detail
    assert obs.active[1].command == "relay365 queue retry 0001-42 -c /etc/relay365/config.yaml"
    assert observe(facts(spool_depth=3, spool_oldest=3599), CFG, 0).active == ()


# -- rendering: text for people, fields for machines, no secret --------------------------------

def test_webhook_body_and_mail_say_the_same_and_hold_no_secret():
    app = AppConfig("client", client_secret=__import__("relay365.secret").secret.Secret("sup3r"))
    v = view(state=AccountState.NEEDS_AUTH, code="AADSTS70008", action="re-authorise")
    (c,) = observe(facts(views=[v]), CFG, 0).active
    n = Notice("webhook", Phase.START, c, 1_900_000_000.0, 1_900_000_000.0)
    body = render.webhook_body(n, "relayhost")
    assert body["text"].startswith("[relay365 ALERT] a@x.test needs attention: AADSTS70008")
    assert "Command: relay365 auth a@x.test -c /etc/relay365/config.yaml" in body["text"]
    assert (body["status"], body["kind"], body["key"], body["severity"]) == (
        "started", "needs_auth", "needs_auth:a@x.test", "critical")
    msg = email.message_from_bytes(render.mail(n, "relayhost", "a@x.test", ["it@x.test"]),
                                   policy=email.policy.default)
    assert msg["Subject"] == body["title"] and msg["Auto-Submitted"] == "auto-generated"
    assert body["text"] in msg.get_content().replace("\r\n", "\n")
    assert "sup3r" not in repr(body) + str(msg) + repr(app)
    clear = render.webhook_body(Notice("webhook", Phase.CLEAR, c, n.at + 90, n.at), "relayhost")
    assert clear["status"] == "cleared" and clear["severity"] == "ok" and "after 90 s" in clear["text"]


# -- who sends alert mail ------------------------------------------------------------------------

def _config(*mailboxes: str) -> Config:
    return Config(accounts=[AccountConfig(m) for m in mailboxes], apps={"default": AppConfig("c")})


@pytest.mark.parametrize("from_account, states, expected", [
    (None, {"a": AccountState.OK, "b": AccountState.OK}, "a@x.test"),
    (None, {"a": AccountState.NEEDS_AUTH, "b": AccountState.OK}, "b@x.test"),
    ("b@x.test", {"a": AccountState.OK, "b": AccountState.OK}, "b@x.test"),
    ("B@x.test", {"a": AccountState.OK, "b": AccountState.UNKNOWN}, "b@x.test"),
    ("b@x.test", {"a": AccountState.OK, "b": AccountState.NEEDS_AUTH}, "a@x.test"),
    (None, {"a": AccountState.NEEDS_AUTH, "b": AccountState.ERROR}, "b@x.test"),
    (None, {"a": AccountState.NEEDS_AUTH, "b": AccountState.NEEDS_AUTH}, None),
])
def test_pick_sender(from_account, states, expected):
    cfg = AlertsConfig(mail_to=["it@x.test"], from_account=from_account)
    views = [view(f"{k}@x.test", state=s) for k, s in states.items()]
    assert pick_sender(cfg, _config("a@x.test", "b@x.test"), views) == expected
