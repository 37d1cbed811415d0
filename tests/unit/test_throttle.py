"""Authentication throttling (growing delay, then a block, within a window) and connection limits.

Time is a parameter, so nothing here sleeps.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay365 import throttle
from relay365.throttle import AuthThrottle, ConnectionLimits, ThrottlePolicy, Verdict

POLICY = ThrottlePolicy(base_delay=1.0, max_delay=10.0, block_after=5, block_seconds=300.0, window=600.0)


def test_the_delay_doubles_up_to_the_cap_then_the_block():
    t = AuthThrottle(POLICY)
    verdicts = [t.failed("10.0.0.9", "scanner", now=100.0 + i) for i in range(5)]
    assert verdicts == [Verdict(False, 1.0), Verdict(False, 2.0), Verdict(False, 4.0), Verdict(False, 8.0),
                        Verdict(True, 10.0, "ip")]


def test_a_block_refuses_even_the_right_password_until_it_ends():
    t = AuthThrottle(POLICY)
    for i in range(5):
        t.failed("10.0.0.9", "scanner", now=100.0 + i)
    assert t.check("10.0.0.9", "scanner", now=104.0) == Verdict(True, 0.0, "ip")
    assert t.check("10.0.0.9", "scanner", now=403.9) == Verdict(True, 0.0, "ip")  # blocked at 104, for 300 s
    assert t.check("10.0.0.9", "scanner", now=404.0) == Verdict(False)


def test_the_block_is_per_ip_and_per_user():
    t = AuthThrottle(POLICY)
    for i in range(5):
        t.failed(f"10.0.0.{i}", "scanner", now=100.0)  # one user guessed from five addresses
    assert t.check("10.0.0.77", "scanner", now=101.0) == Verdict(True, 0.0, "user")
    assert t.check("10.0.0.1", "other", now=101.0) == Verdict(False)  # one failure there: not blocked
    assert t.check("10.0.0.77", "other", now=101.0) == Verdict(False)  # other clients unaffected


def test_the_user_block_is_named_when_the_ip_is_fresh():
    t = AuthThrottle(POLICY)
    for i in range(4):
        t.failed(f"10.0.0.{i}", "scanner", now=100.0)
    assert t.failed("10.0.0.99", "scanner", now=100.0) == Verdict(True, 10.0, "user")


def test_failures_age_out_of_the_window():
    t = AuthThrottle(POLICY)
    for i in range(4):
        t.failed("10.0.0.9", "scanner", now=100.0 + i)
    # 600 s after the first failures they no longer count: the next is the first again
    assert t.failed("10.0.0.9", "scanner", now=703.0) == Verdict(False, 1.0)
    assert t.failed("10.0.0.9", "scanner", now=703.5) == Verdict(False, 2.0)


def test_success_clears_the_record():
    t = AuthThrottle(POLICY)
    for i in range(4):
        t.failed("10.0.0.9", "scanner", now=100.0 + i)
    t.succeeded("10.0.0.9", "scanner")
    assert t.failed("10.0.0.9", "scanner", now=105.0) == Verdict(False, 1.0)


def test_after_a_block_one_more_failure_blocks_again_while_the_window_remembers():
    t = AuthThrottle(ThrottlePolicy(base_delay=1.0, max_delay=10.0, block_after=3, block_seconds=10.0,
                                    window=600.0))
    for i in range(3):
        t.failed("10.0.0.9", "u", now=float(i))
    assert t.check("10.0.0.9", "u", now=12.1) == Verdict(False)  # block over (2 + 10)
    assert t.failed("10.0.0.9", "u", now=12.1) == Verdict(True, 8.0, "ip")


def test_many_failures_never_overflow_the_delay():
    t = AuthThrottle(ThrottlePolicy(base_delay=0.5, max_delay=30.0, block_after=10**9, window=1e9))
    for i in range(1100):
        v = t.failed("10.0.0.9", f"user{i}", now=float(i))
    assert v == Verdict(False, 30.0)


def test_memory_is_bounded(monkeypatch):
    monkeypatch.setattr(throttle, "MAX_TRACKED", 4)
    t = AuthThrottle(POLICY)
    for i in range(10):
        t.failed(f"10.0.0.{i}", "u", now=1.0)
    assert len(t._records) == 4


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["check", "failed", "succeeded"]), st.sampled_from(["a", "b"]),
                          st.sampled_from(["u", "v"]), st.floats(0, 5000)), max_size=40))
def test_any_sequence_keeps_the_delay_in_bounds(ops):
    t = AuthThrottle(POLICY)
    for op, ip, user, dt in ops:
        if op == "succeeded":
            t.succeeded(ip, user)
            continue
        v = getattr(t, op)(ip, user, now=dt)
        assert 0.0 <= v.delay <= POLICY.max_delay and v.reason in ("", "ip", "user")
        assert v.blocked == bool(v.reason)


# -- connection limits ---------------------------------------------------------------------------

def test_connection_limits():
    lim = ConnectionLimits(max_total=3, max_per_ip=2)
    assert [lim.admit("a"), lim.admit("a"), lim.admit("a")] == [None, None, "too_many_from_ip"]
    assert lim.admit("b") is None
    assert lim.admit("c") == "listener_full"
    assert (lim.total, lim.per_ip) == (3, {"a": 2, "b": 1})
    lim.release("a")
    lim.release("b")
    assert (lim.total, lim.per_ip) == (1, {"a": 1})  # no zero entries left behind
    assert lim.admit("c") is None and lim.admit("a") is None


def test_limits_changed_on_reload_apply_to_new_connections():
    lim = ConnectionLimits(max_total=10, max_per_ip=5)
    for _ in range(3):
        lim.admit("a")
    lim.max_per_ip = 2
    assert lim.admit("a") == "too_many_from_ip"
    lim.release("a")
    lim.release("a")
    assert lim.admit("a") is None


@pytest.mark.parametrize("ips", [["a"] * 5, ["a", "b", "a", "c", "b", "a"]])
def test_admit_and_release_balance(ips):
    lim = ConnectionLimits(max_total=100, max_per_ip=100)
    for ip in ips:
        assert lim.admit(ip) is None
    for ip in reversed(ips):
        lim.release(ip)
    assert (lim.total, lim.per_ip) == (0, {})


def test_blocks_are_listed_with_time_left_and_can_be_lifted():
    from relay365.throttle import AuthThrottle, ThrottlePolicy
    t = AuthThrottle(ThrottlePolicy(block_after=2, block_seconds=100.0))
    t.failed("10.0.0.9", "scanner", now=0.0)
    assert t.blocks(1.0) == []
    t.failed("10.0.0.9", "scanner", now=10.0)
    blocks = t.blocks(30.0)
    assert {(b.kind, b.value, b.seconds_left) for b in blocks} == {
        ("ip", "10.0.0.9", 80.0), ("user", "scanner", 80.0)}
    assert t.check("10.0.0.9", "other", 30.0).blocked
    assert t.unblock("ip", "10.0.0.9") and not t.unblock("ip", "10.0.0.9")
    assert not t.check("10.0.0.9", "other", 30.0).blocked
    assert t.check("10.0.0.8", "scanner", 30.0).blocked  # the user block is still there
    assert t.blocks(200.0) == []  # expired blocks are not listed


def test_an_ipv6_client_is_counted_by_its_64():
    """Found by the security matrix: each IPv6 address had a budget of its own, so a host that
    rotates addresses within its /64 (SLAAC privacy addresses do) was never blocked."""
    t = AuthThrottle(POLICY)
    for i in range(5):
        t.failed(f"2001:db8:1:2::{i + 1:x}", f"guess{i}", now=100.0)
    assert t.check("2001:db8:1:2:ffff::9", "anyone", now=101.0) == Verdict(True, 0.0, "ip")
    assert t.check("2001:db8:1:3::1", "anyone", now=101.0) == Verdict(False)  # the next /64
    assert [(b.kind, b.value) for b in t.blocks(101.0)] == [("ip", "2001:db8:1:2::/64")]
    assert t.unblock("ip", "2001:db8:1:2::77")  # lifted by any address inside it
    assert not t.check("2001:db8:1:2::1", "anyone", now=101.0).blocked


@pytest.mark.parametrize(("ip", "key"), [
    ("10.0.0.9", "10.0.0.9"), ("::ffff:10.0.0.9", "10.0.0.9"), ("::1", "::/64"),
    ("fe80::1%eth0", "fe80::/64"), ("2001:DB8::1", "2001:db8::/64"), ("not-an-ip", "not-an-ip")])
def test_client_key(ip, key):
    assert throttle.client_key(ip) == key


def test_a_success_clears_the_whole_64():
    t = AuthThrottle(POLICY)
    for i in range(4):
        t.failed("2001:db8::1", "scanner", now=100.0 + i)
    t.succeeded("2001:db8::2", "scanner")
    assert t.failed("2001:db8::3", "x", now=105.0) == Verdict(False, 1.0)
