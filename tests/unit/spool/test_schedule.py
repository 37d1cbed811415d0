"""The pure schedule: backoff, lifetime, token bucket, and what each upstream error means."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay365.config import SpoolConfig, parse_duration
from relay365.config.loader import Loader
from relay365.errors import ConfigError, TokenError, UpstreamAuthError, UpstreamError
from relay365.spool.schedule import (
    TokenBucket,
    Verdict,
    age_text,
    expired,
    next_attempt,
    retry_delay,
    throttled,
    verdict,
)

rand = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


# -- backoff -----------------------------------------------------------------------------------

def test_first_retry_comes_within_a_minute():
    assert retry_delay(1, 30.0, 3600.0, 0.0) == 15.0
    assert retry_delay(1, 30.0, 3600.0, 0.999999) < 30.0
    assert retry_delay(2, 30.0, 3600.0, 0.0) == 30.0


def test_delay_doubles_then_stops_at_the_cap():
    lows = [retry_delay(n, 30.0, 3600.0, 0.0) for n in range(1, 12)]
    assert lows[:8] == [15, 30, 60, 120, 240, 480, 960, 1800]
    assert lows[8:] == [1800, 1800, 1800]  # step 3600 = cap; jitter in its upper half
    assert retry_delay(10_000, 30.0, 3600.0, 0.999999) < 3600.0


@given(st.integers(min_value=-3, max_value=100_000), rand)
def test_delay_is_always_between_half_the_base_and_the_cap(attempts, r):
    d = retry_delay(attempts, 30.0, 3600.0, r)
    assert 15.0 <= d <= 3600.0


@given(st.integers(min_value=1, max_value=60), rand)
def test_delay_never_shrinks_with_more_attempts(attempts, r):
    assert retry_delay(attempts + 1, 30.0, 3600.0, r) >= retry_delay(attempts, 30.0, 3600.0, r)


@given(rand, rand)
def test_jitter_spreads_over_the_upper_half_of_the_step(a, b):
    da, db = retry_delay(5, 30.0, 3600.0, a), retry_delay(5, 30.0, 3600.0, b)
    assert 240.0 <= da <= 480.0 and 240.0 <= db <= 480.0
    assert da <= db if a <= b else da >= db  # the draw decides where in the range, monotonically


# -- lifetime ----------------------------------------------------------------------------------

def test_lifetime():
    five_days = 5 * 86400.0
    assert not expired(1000.0, 1000.0 + five_days - 1, five_days)
    assert expired(1000.0, 1000.0 + five_days, five_days)


@given(st.floats(0, 1e6), st.floats(0, 1e6), st.floats(0, 1e4))
def test_next_attempt_is_never_before_now_nor_past_the_deadline(now, delay, start_back):
    start, life = now - start_back, 3600.0
    at = next_attempt(now, delay, start, life)
    assert at >= now
    assert at <= max(now, start + life)
    if now + delay <= start + life:
        assert at == now + delay


def test_age_text():
    assert [age_text(s) for s in (0, 59, 61, 3700, 90000, -5)] == ["0s", "59s", "1m1s", "1h1m",
                                                                  "1d1h", "0s"]


# -- token bucket ------------------------------------------------------------------------------

def test_bucket_paces_thirty_a_minute():
    b = TokenBucket.per_minute(30, now=100.0)
    assert b.wait(100.0) == 0.0
    b = b.take(100.0)
    assert b.wait(100.0) == pytest.approx(2.0)
    assert b.wait(101.0) == pytest.approx(1.0)
    assert b.wait(102.0) == 0.0
    with pytest.raises(ValueError):
        b.take(101.0)


def test_bucket_does_not_save_up_beyond_its_burst():
    b = TokenBucket.per_minute(30, now=0.0, burst=3)
    b = b.refill(10_000.0)
    assert b.tokens == 3
    for _ in range(3):
        b = b.take(10_000.0)
    assert b.wait(10_000.0) > 0


def test_bucket_ignores_a_clock_that_goes_back():
    b = TokenBucket.per_minute(30, now=100.0).take(100.0)
    assert b.refill(50.0) == b
    assert b.wait(50.0) == pytest.approx(2.0)


@given(st.lists(st.floats(0.0, 10.0), min_size=1, max_size=200))
def test_bucket_never_lets_more_than_rate_plus_burst_through_in_a_minute(gaps):
    b, now, sent = TokenBucket.per_minute(30, now=0.0), 0.0, []
    for gap in gaps:
        now += gap
        if b.wait(now) == 0.0:
            b = b.take(now)
            sent.append(now)
    for i, t in enumerate(sent):
        assert sum(1 for s in sent[i:] if s < t + 60.0) <= 31  # 30 a minute + the one saved up


def test_with_rate_keeps_the_tokens():
    b = TokenBucket.per_minute(30, now=0.0).take(0.0).with_rate(60)
    assert b.wait(0.0) == pytest.approx(1.0)


# -- what an error means -----------------------------------------------------------------------

@pytest.mark.parametrize("code,text", [
    (432, "4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"),
    (421, "4.7.66 Too many connections from this client"),
    (451, "4.4.2 Message submission rate for this client has exceeded the configured limit"),
    (450, "4.7.0 Throttled: try again later"),
    (554, "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException"),
    (None, "server is throttling"),
])
def test_exchange_throttling_replies_are_recognised(code, text):
    assert throttled(code, text)
    assert verdict(UpstreamError("x", code=code, text=text, transient=True)) is Verdict.THROTTLED


@pytest.mark.parametrize("code,text", [
    (451, "4.3.0 Temporary server error"), (452, "4.3.1 Insufficient system storage"),
    (550, "5.1.1 User unknown"), (250, "2.0.0 rate limit not exceeded, all fine"), (421, ""),
])
def test_other_replies_are_not_throttling(code, text):
    assert not throttled(code, text)


def _token_error(error: str, transient: bool) -> TokenError:
    return TokenError(account="a@x.test", error=error, code=70008, transient=transient, action="do")


@pytest.mark.parametrize("exc,expected", [
    (UpstreamError("refused", code=451, text="4.3.0 Try later", transient=True), Verdict.DEFER),
    (UpstreamError("refused", code=550, text="5.7.60 SendAs denied", transient=False),
     Verdict.PERMANENT),
    (UpstreamError("cannot reach upstream: ConnectionRefusedError"), Verdict.DEFER_MAILBOX),
    (UpstreamError("closing", code=421, text="4.3.2 Service not available", transient=True),
     Verdict.THROTTLED),
    (UpstreamError("closing", code=421, text="Service shutting down", transient=True),
     Verdict.DEFER_MAILBOX),
    (UpstreamAuthError("no", code=535, text="5.7.3 Authentication unsuccessful"),
     Verdict.DEFER_MAILBOX),
    (_token_error("invalid_grant", transient=False), Verdict.HOLD),
    (_token_error("temporarily_unavailable", transient=True), Verdict.DEFER_MAILBOX),
    (_token_error("invalid_client", transient=False), Verdict.DEFER_MAILBOX),
    (ValueError("a bug"), Verdict.DEFER),
])
def test_verdict(exc, expected):
    assert verdict(exc) is expected


# -- configuration -----------------------------------------------------------------------------

def test_durations():
    assert [parse_duration(t) for t in ("30s", "15m", "1h", "5d", "120", "1.5h", " 2 d ")] == [
        30, 900, 3600, 432000, 120, 5400, 172800]
    for bad in ("", "5w", "-1s", "h"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_spool_section_loads_through_the_config_loader():
    text = ("max_lifetime: 2d\nretry_base: 20s\nretry_cap: 30m\nrate_per_minute: 10\n"
            "concurrency_per_mailbox: 2\nadmin_bounce_to: postmaster@example.test\n"
            "min_free_space: 1GB\nrescan_interval: 2\n")
    cfg = Loader("t.yaml").load(text, SpoolConfig)
    assert cfg == SpoolConfig(max_lifetime=172800, retry_base=20, retry_cap=1800, rate_per_minute=10,
                              concurrency_per_mailbox=2, admin_bounce_to="postmaster@example.test",
                              min_free_space=1024**3, rescan_interval=2)


@pytest.mark.parametrize("text,problem", [
    ("retry_base: 2h\nretry_cap: 1h\n", "retry_cap: must be at least retry_base"),
    ("concurrency_per_mailbox: 5\n", "concurrency_per_mailbox: 1 to 3"),
    ("max_lifetime: soon\n", "max_lifetime: not a duration"),
    ("rate_per_minute: 0\n", "rate_per_minute: must be more than 0"),
    ("admin_bounce_to: postmaster\n", "admin_bounce_to: not an email address"),
])
def test_bad_spool_settings_are_named(text, problem):
    with pytest.raises(ConfigError) as info:
        Loader("t.yaml").load(text, SpoolConfig)
    assert problem in "; ".join(info.value.problems)
