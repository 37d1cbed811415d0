"""UpstreamPool's rules, with a stand-in for the upstream session (the pool is what is tested)."""

from __future__ import annotations

import asyncio
import time

from relay365.delivery.pool import UpstreamPool


class Session:
    def __init__(self, mailbox: str = "a@x.test", age: float = 0.0, rset_ok: bool = True) -> None:
        self.mailbox, self.connected, self.interrupted = mailbox, True, False
        self.opened_at = time.monotonic() - age
        self.rset_ok, self.resets, self.closed = rset_ok, 0, False

    async def rset(self) -> bool:
        self.resets += 1
        if not self.rset_ok:
            self.connected = False
        return self.rset_ok

    async def close(self) -> None:
        self.connected, self.closed = False, True


def run(coro):
    return asyncio.run(coro)


def test_parked_after_rset_and_taken_by_the_same_mailbox_only():
    async def go():
        pool, s = UpstreamPool(30), Session()
        await pool.give(s)
        assert s.resets == 1 and len(pool) == 1
        assert pool.take("b@x.test") is None
        assert pool.take("A@X.test") is s and len(pool) == 0
        await pool.close_all()
    run(go())


def test_idle_expiry_closes_them_on_a_timer():
    async def go():
        pool, s = UpstreamPool(0.1), Session()
        await pool.give(s)
        await asyncio.sleep(0.3)
        assert s.closed and len(pool) == 0
        await pool.close_all()
    run(go())


def test_never_parked_off_too_old_interrupted_failed_rset_or_over_the_cap():
    async def go():
        off = Session()
        await UpstreamPool(0).give(off)
        assert off.closed
        pool = UpstreamPool(30, max_age=60, per_mailbox=2)
        old, cut, bad = Session(age=120), Session(), Session(rset_ok=False)
        cut.interrupted = True
        for s in (old, cut, bad):
            await pool.give(s)
        assert old.closed and cut.closed and not bad.connected and len(pool) == 0
        three = [Session() for _ in range(3)]
        for s in three:
            await pool.give(s)
        assert len(pool) == 2 and three[2].closed
        await pool.close_all()
        assert all(s.closed for s in three)
    run(go())


def test_a_session_the_server_dropped_is_not_handed_out():
    async def go():
        pool, dead, live = UpstreamPool(30), Session(), Session()
        await pool.give(live)
        await pool.give(dead)
        dead.connected = False  # the server closed it while parked
        assert pool.take("a@x.test") is live
        await asyncio.sleep(0)
        await pool.close_all()
    run(go())
