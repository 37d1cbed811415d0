"""The alert core as transcripts: observations in, notices out; then properties with hypothesis."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from relay365.alerts.core import HOUR, AlertBook, Condition, Kind, Notice, Observation, Phase

T0 = 1_900_000_000.0
AUTH = Condition(Kind.NEEDS_AUTH, "a@x.test", "a@x.test needs attention: AADSTS70008")
SPOOL = Condition(Kind.SPOOL_STUCK, "spool", "spool: oldest waits")


def secret(stage: str) -> Condition:
    return Condition(Kind.SECRET_EXPIRY, "default", f"secret {stage}", stage=stage)


def tick(book: AlertBook, now: float, *active: Condition, undecided: frozenset[str] = frozenset(),
         fail: frozenset[str] = frozenset()) -> list[tuple[str, Phase, str]]:
    """One round as the adapter runs it: plan, then report each notice sent (or its channel failed)."""
    out = []
    failed: set[str] = set()
    for n in book.plan(Observation(active, undecided), now).notices:
        if n.channel in fail or n.channel in failed:
            if n.channel not in failed:
                book.failed(n.channel, now)
            failed.add(n.channel)
            continue
        book.sent(n, now)
        out.append((n.channel, n.phase, n.key))
    return out


def test_start_once_then_quiet_then_clear_once():
    book = AlertBook(("webhook",), max_per_hour=20)
    assert tick(book, T0, AUTH) == [("webhook", Phase.START, AUTH.key)]
    assert tick(book, T0 + 60, AUTH) == []
    assert tick(book, T0 + 120, AUTH) == []
    assert tick(book, T0 + 180) == [("webhook", Phase.CLEAR, AUTH.key)]
    assert tick(book, T0 + 240) == []


def test_each_channel_has_its_own_book():
    book = AlertBook(("mail", "webhook"), max_per_hour=20)
    assert tick(book, T0, AUTH, fail=frozenset({"mail"})) == [("webhook", Phase.START, AUTH.key)]
    # mail is backed off for a minute, then hears the start it missed; webhook hears nothing twice
    assert tick(book, T0 + 30, AUTH) == []
    assert tick(book, T0 + 61, AUTH) == [("mail", Phase.START, AUTH.key)]


def test_a_failed_send_is_retried_with_backoff_and_never_doubled():
    book = AlertBook(("webhook",), max_per_hour=20)
    assert tick(book, T0, AUTH, fail=frozenset({"webhook"})) == []
    assert book.failed("webhook", T0) == 120.0  # second failure in a row: doubled
    assert tick(book, T0 + 100, AUTH) == []
    assert tick(book, T0 + 121, AUTH) == [("webhook", Phase.START, AUTH.key)]
    assert tick(book, T0 + 200, AUTH) == []


def test_a_clear_remembers_what_started_and_how_long_it_lasted():
    book = AlertBook(("webhook",), max_per_hour=20)
    book.sent(book.plan(Observation((AUTH,)), T0).notices[0], T0)
    (clear,) = book.plan(Observation(()), T0 + 900).notices
    assert clear.phase is Phase.CLEAR and clear.condition.title == AUTH.title
    assert (clear.since, clear.at) == (T0, T0 + 900)


def test_undecided_neither_starts_nor_clears():
    book = AlertBook(("webhook",), max_per_hour=20)
    tick(book, T0, AUTH)
    # after a restart the account is not tried yet: no clear on a guess
    assert tick(book, T0 + 60, undecided=frozenset({AUTH.key})) == []
    assert tick(book, T0 + 120) == [("webhook", Phase.CLEAR, AUTH.key)]


def test_secret_expiry_escalates_by_stage_then_clears_when_renewed():
    book = AlertBook(("mail",), max_per_hour=20)
    key = secret("30d").key
    assert tick(book, T0, secret("30d")) == [("mail", Phase.START, key)]
    assert tick(book, T0 + 60, secret("30d")) == []
    assert tick(book, T0 + 120, secret("7d")) == [("mail", Phase.UPDATE, key)]
    assert tick(book, T0 + 180, secret("1d")) == [("mail", Phase.UPDATE, key)]
    assert tick(book, T0 + 240, secret("expired")) == [("mail", Phase.UPDATE, key)]
    assert tick(book, T0 + 300) == [("mail", Phase.CLEAR, key)]


def test_the_rate_limit_holds_notices_back_until_the_hour_frees_up():
    book = AlertBook(("webhook",), max_per_hour=2)
    many = [Condition(Kind.SPOOL_FAILED, f"id{i}", f"dead {i}") for i in range(3)]
    assert [k for _, _, k in tick(book, T0, *many)] == [many[0].key, many[1].key]
    assert book.plan(Observation(tuple(many)), T0 + 60).held == {"webhook": 1}
    assert tick(book, T0 + 60, *many) == []
    assert tick(book, T0 + HOUR, *many) == [("webhook", Phase.START, many[2].key)]


def test_a_flap_while_held_back_is_not_sent_at_all():
    book = AlertBook(("webhook",), max_per_hour=1)
    tick(book, T0, SPOOL)
    assert tick(book, T0 + 60, SPOOL, AUTH) == []  # AUTH waits for the budget
    assert tick(book, T0 + 120, SPOOL) == []  # ... and is over before it came
    assert tick(book, T0 + HOUR, SPOOL) == []


def test_the_book_survives_a_restart_through_json():
    book = AlertBook(("mail", "webhook"), max_per_hour=20)
    tick(book, T0, AUTH, secret("7d"))
    saved = json.loads(json.dumps(book.to_json()))
    again = AlertBook(("mail", "webhook"), max_per_hour=20)
    assert again.restore(saved)
    assert tick(again, T0 + 60, AUTH, secret("7d")) == []  # no duplicate after the restart
    assert tick(again, T0 + 120, AUTH) == [("mail", Phase.CLEAR, secret("7d").key),
                                           ("webhook", Phase.CLEAR, secret("7d").key)]


def test_a_damaged_or_foreign_book_is_no_book():
    book = AlertBook(("webhook",), max_per_hour=20)
    assert not book.restore({"version": 99})
    assert not book.restore(["x"])
    assert book.restore({"version": 1, "channels": {"webhook": {"announced": {
        "x": {"kind": "nonsense"}, AUTH.key: {"kind": "needs_auth", "subject": "a@x.test",
                                              "title": "t", "since": T0}}}}})
    assert list(book.announced("webhook")) == [AUTH.key]


def test_a_reload_keeps_a_kept_channel_and_starts_a_new_one_empty():
    book = AlertBook(("webhook",), max_per_hour=20)
    tick(book, T0, AUTH)
    book.configure(("webhook", "mail"), 20)
    assert tick(book, T0 + 60, AUTH) == [("mail", Phase.START, AUTH.key)]
    book.configure(("mail",), 20)
    assert book.channels == ("mail",)
    stale = Notice("webhook", Phase.CLEAR, AUTH, T0, T0)
    book.sent(stale, T0 + 61)  # a send that finished after its channel went away: ignored
    assert book.failed("webhook", T0) == 0.0


# -- properties --------------------------------------------------------------------------------

CONDITIONS = [AUTH, SPOOL, secret("30d"), secret("7d"), Condition(Kind.SPOOL_FAILED, "q1", "dead")]
rounds = st.lists(st.tuples(st.sets(st.integers(0, len(CONDITIONS) - 1)), st.booleans(),
                            st.booleans()), max_size=30)


def _observed(indexes: set[int]) -> tuple[Condition, ...]:
    chosen: dict[str, Condition] = {}
    for i in sorted(indexes):  # one stage per condition
        chosen.setdefault(CONDITIONS[i].key, CONDITIONS[i])
    return tuple(chosen.values())


@settings(max_examples=200, deadline=None)
@given(rounds)
def test_per_key_notices_alternate_start_and_clear_and_follow_what_is_true(script):
    book = AlertBook(("webhook",), max_per_hour=1000)
    open_keys: dict[str, str] = {}
    now = T0
    for indexes, failing, restart in script:
        now += 3600  # past any backoff
        if restart:
            saved = book.to_json()
            book = AlertBook(("webhook",), max_per_hour=1000)
            book.restore(json.loads(json.dumps(saved)))
        active = _observed(indexes)
        for _, phase, key in tick(book, now, *active, fail=frozenset({"webhook"} if failing else ())):
            if phase is Phase.START:
                assert key not in open_keys
                open_keys[key] = "open"
            elif phase is Phase.UPDATE:
                assert key in open_keys
            else:
                assert open_keys.pop(key) == "open"
        if not failing:  # after a good round the book says exactly what is true
            assert set(book.announced("webhook")) == {c.key for c in active}
            assert {k: a.stage for k, a in book.announced("webhook").items()} == {
                c.key: c.stage for c in active}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sets(st.integers(0, len(CONDITIONS) - 1)), st.floats(1, 900)),
                max_size=40), st.integers(1, 4))
def test_no_channel_ever_sends_more_than_max_per_hour(script, limit):
    book = AlertBook(("webhook",), max_per_hour=limit)
    now, sent = T0, []
    for indexes, step in script:
        now += step
        sent += [now for _ in tick(book, now, *_observed(indexes))]
    for i, t in enumerate(sent):
        assert len([u for u in sent[i:] if u - t < HOUR]) <= limit


def test_a_channel_that_now_goes_elsewhere_starts_over_even_across_a_restart():
    book = AlertBook({"webhook": "url-1"}, max_per_hour=20)
    tick(book, T0, AUTH)
    book.configure({"webhook": "url-1"}, 20)
    assert tick(book, T0 + 60, AUTH) == []
    book.configure({"webhook": "url-2"}, 20)  # a reload with another webhook URL
    assert tick(book, T0 + 120, AUTH) == [("webhook", Phase.START, AUTH.key)]
    saved = json.loads(json.dumps(book.to_json()))
    other = AlertBook({"webhook": "url-3"}, max_per_hour=20)  # restarted with yet another
    other.restore(saved)
    assert tick(other, T0 + 180, AUTH) == [("webhook", Phase.START, AUTH.key)]
    same = AlertBook({"webhook": "url-2"}, max_per_hour=20)
    same.restore(saved)
    assert tick(same, T0 + 180, AUTH) == []
