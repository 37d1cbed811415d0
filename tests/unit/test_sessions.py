from relay365.sessions import MAX_SESSIONS, WINDOW_MINUTES, Recorder

T0 = 1_800_000_000.0  # a minute boundary: 1_800_000_000 / 60 = 30_000_000


def test_keeps_the_last_sessions_newest_first_and_filters():
    r = Recorder()
    for i in range(MAX_SESSIONS + 5):
        r.session("smtp", T0 + i, peer=f"10.0.0.{i % 7}", user="scanner" if i % 2 else None,
                  mailbox="a@x", outcome="relayed", messages=1)
    got = r.recent()
    assert len(got) == MAX_SESSIONS
    assert got[0].at == T0 + MAX_SESSIONS + 4 and got[-1].at == T0 + 5
    assert all(s.peer == "10.0.0.3" for s in r.recent(peer="0.0.3"))
    assert r.recent(peer="0.0.3") and r.recent(user="SCAN")
    assert all(s.user == "scanner" for s in r.recent(user="scan"))
    assert r.recent(peer="192.168") == []


def test_per_minute_counts_the_last_hour_only():
    r = Recorder()
    r.count("relayed", T0)
    r.count("relayed", T0 + 59)
    r.count("spooled", T0 + 60)
    r.count("failed", T0 + 61, 2)
    series = r.per_minute(T0 + 61)
    assert len(series) == WINDOW_MINUTES
    assert (series[-2].relayed, series[-2].spooled) == (2, 0)
    assert (series[-1].spooled, series[-1].failed, series[-1].start) == (1, 2, T0 + 60)
    later = T0 + 60 * WINDOW_MINUTES + 30  # the first minute has left the window
    r.count("relayed", later)
    assert sum(m.relayed for m in r.per_minute(later)) == 1
    assert len(r._minutes) <= WINDOW_MINUTES  # bounded memory


def test_messages_today_counts_since_midnight_utc_per_mailbox():
    r = Recorder()
    midnight = T0 - T0 % 86400
    r.session("smtp", midnight - 1, peer="p", mailbox="a@x", messages=5)
    r.session("smtp", midnight + 1, peer="p", mailbox="A@x", messages=2)
    r.session("smtp", midnight + 2, peer="p", mailbox="b@x", messages=7)
    assert r.messages_today("a@x", midnight + 10) == 2
    assert r.messages_today("c@x", midnight + 10) == 0


def test_the_metrics_counters_feed_the_chart_and_sessions_are_kept():
    from relay365 import metrics, sessions
    before = sum(m.spooled for m in sessions.RECENT.per_minute(__import__("time").time()))
    value = metrics.SPOOLED.counter._value.get()
    metrics.SPOOLED.inc()
    assert metrics.SPOOLED.counter._value.get() == value + 1  # Prometheus still counts
    assert sum(m.spooled for m in sessions.RECENT.per_minute(__import__("time").time())) == before + 1
    metrics.record_session("smtp", peer="10.9.9.9", user="printer", outcome="relayed", messages=1)
    assert sessions.RECENT.recent(peer="10.9.9.9")[0].user == "printer"
