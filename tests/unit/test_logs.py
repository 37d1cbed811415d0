"""`relay365.logs`: the relay's own events go straight from structlog to the stream (no LogRecord,
no second pass through the processors), and stay what they were: one JSON line each, the
connection's context in it, levels honoured and changed on reload, stdlib loggers alongside."""

from __future__ import annotations

import io
import json
import logging
import threading

import pytest
import structlog
from structlog.testing import capture_logs

from relay365 import logs


@pytest.fixture
def out():
    """logs.configure() into a buffer; the global logging and structlog setup restored after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    buf = io.StringIO()
    yield buf
    root.handlers[:], level = saved
    root.setLevel(level)
    structlog.reset_defaults()


def lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_an_event_is_one_json_line_with_its_context(out):
    logs.configure("info", "json", stream=out)
    with structlog.contextvars.bound_contextvars(conn=7, proto="smtp", peer="192.0.2.7"):
        structlog.get_logger("relay365.smtp").info("message_relayed", recipients=2, size=10240)
    (event,) = lines(out)
    assert {k: v for k, v in event.items() if k != "timestamp"} == {
        "recipients": 2, "size": 10240, "event": "message_relayed", "conn": 7, "proto": "smtp",
        "peer": "192.0.2.7", "level": "info", "logger": "relay365.smtp"}
    assert event["timestamp"].endswith("Z")


def test_relay_events_make_no_log_record_stdlib_ones_still_do(out):
    logs.configure("info", "json", stream=out)
    records: list[logging.LogRecord] = []

    class Count(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            records.append(record)
            return True

    logging.getLogger().handlers[0].addFilter(Count())
    structlog.get_logger("relay365.smtp").warning("smtp_upstream_failed", stage="rcpt")
    logging.getLogger("msal").warning("token cache %s", "miss")
    assert [r.name for r in records] == ["msal"]  # the relay's line skipped the stdlib machinery
    relay, msal = lines(out)
    assert relay["event"] == "smtp_upstream_failed" and relay["level"] == "warning"
    assert msal["event"] == "token cache miss" and msal["logger"] == "msal"


def test_the_level_holds_and_a_reload_changes_it(out):
    logs.configure("warning", "json", stream=out)
    log = structlog.get_logger("relay365.test")
    log.info("hidden")
    log.debug("hidden too")
    logs.set_level("debug")  # SIGHUP with log.level: debug
    log.debug("shown")
    logs.set_level("error")
    log.warning("hidden again")
    log.error("shown too")
    assert [e["event"] for e in lines(out)] == ["shown", "shown too"]
    assert logging.getLogger("mail.log").level == logging.ERROR  # aiosmtpd's floor stays


def test_an_exception_is_rendered_into_the_line(out):
    logs.configure("info", "json", stream=out)
    try:
        raise ValueError("boom")
    except ValueError as exc:
        structlog.get_logger("relay365.smtp").error("smtp_internal_error", exc_info=exc)
    (event,) = lines(out)
    assert "ValueError: boom" in event["exception"] and event["level"] == "error"


def test_lines_from_threads_never_interleave(out):
    logs.configure("info", "json", stream=out)
    log = structlog.get_logger("relay365.test")

    def many(n: int) -> None:
        for i in range(300):
            log.info("line", thread=n, i=i, pad="x" * 200)

    threads = [threading.Thread(target=many, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(lines(out)) == 1200  # every line parses: none was cut by another


def test_capture_logs_still_sees_events_after_configure(out):
    logs.configure("info", "json", stream=out)
    with capture_logs() as captured:
        structlog.get_logger("relay365.smtp").info("message_relayed", size=1)
    assert captured == [{"event": "message_relayed", "size": 1, "log_level": "info"}]
    assert out.getvalue() == ""


def test_console_format_for_a_terminal(out):
    logs.configure("info", "console", stream=out)
    structlog.get_logger("relay365.smtp").info("message_relayed", size=1)
    text = out.getvalue()
    assert "message_relayed" in text and "size" in text and not text.startswith("{")


def test_a_tap_sees_each_relay_event_before_it_is_rendered(out):
    seen = []

    def tap(logger, method, event):
        seen.append(dict(event))
        return event

    logs.configure("info", "json", stream=out, taps=[tap])
    structlog.get_logger("relay365.smtp").info("message_relayed", size=1)
    assert seen[0]["event"] == "message_relayed" and seen[0]["logger"] == "relay365.smtp"
    assert lines(out)[0]["size"] == 1
