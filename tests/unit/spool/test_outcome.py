"""The outcome steps and the memory of what the queue refused (pure: no disk, no clock)."""

from __future__ import annotations

from pathlib import Path

from relay365.spool.entry import Entry
from relay365.spool.outcome import (
    WRITE_RETRY,
    DeadLetter,
    Defer,
    Remove,
    SplitOff,
    Unwritten,
    index_after,
)

E = Entry("00000000000000000001-1", "a@x.test", "a@x.test", ("b@x.test", "c@x.test"), 100.0, 10,
          path=Path("/spool/queue/00000000000000000001-1"))


def test_index_after_each_kind_of_outcome():
    assert index_after(E, [Remove()]) is None
    assert index_after(E, [SplitOff(1.0, {"c@x.test": "550"}), Remove()]) is None
    assert index_after(E, [DeadLetter(1.0, "550 no")]) is None
    later = index_after(E, [SplitOff(1.0, {"c@x.test": "550"}),
                            Defer(1.0, 31.0, "451 later", ("b@x.test",))])
    assert later is not None
    assert (later.attempts, later.next_attempt, later.last_error, later.rcpts) == (
        1, 31.0, "451 later", ("b@x.test",))
    assert index_after(E, []) == E


def test_unwritten_steps_queue_behind_older_ones_and_win_over_a_rescan():
    u = Unwritten()
    assert not u and u.wait(0.0) == float("inf")
    u.add(E, [Defer(1.0, 31.0, "451 later")])
    held = u.add(E, [Defer(40.0, 100.0, "451 again")])
    assert [type(s) for s in held.steps] == [Defer, Defer]
    assert held.view is not None and (held.view.attempts, held.view.next_attempt) == (2, 100.0)
    scanned = {E.id: E}  # the directory still says: due, never attempted
    u.overlay(scanned)
    assert scanned[E.id] == held.view
    u.add(E, [Remove()])
    u.overlay(scanned)
    assert scanned == {}  # delivered: never dispatched again, whatever the directory lists


def test_a_deferral_of_an_entry_gone_from_the_directory_is_forgotten():
    u = Unwritten()
    u.add(E, [Defer(1.0, 31.0, "451 later")])
    u.overlay({})
    assert not u
    u.add(E, [Remove()])
    u.overlay({})
    assert u  # kept until it is tried: removing what is gone already is done at once


def test_retry_times_and_reports_once_per_kind():
    u = Unwritten()
    held = u.add(E, [Defer(1.0, 31.0, "451")])
    u.refused(10.0)
    assert u.wait(10.0) == WRITE_RETRY
    u.refused(11.0)  # a later refusal does not push the next try back
    assert u.next_try == 10.0 + WRITE_RETRY
    u.tried(12.5)
    assert u.next_try == 12.5 + WRITE_RETRY
    assert held.report(Defer(1.0, 2.0, None)) and not held.report(Defer(3.0, 4.0, None))
    assert held.report(Remove())
    u.pending.clear()
    u.tried(13.0)
    assert u.wait(13.0) == float("inf")
