"""`relay365 queue ...`: what the operator sees and what each action changes on disk."""

from __future__ import annotations

import argparse
import io
import os

import pytest

from relay365.spool.cli import (
    add_queue_parser,
    cmd_queue,
    queue_delete,
    queue_failed,
    queue_list,
    queue_retry,
    queue_show,
)
from relay365.spool.queue import SpoolQueue

NOW = 1_700_000_000.0
MB = "scanner@example.test"
MSG = (b"From: Printer <printer@lan>\r\nTo: bob@example.test\r\nSubject: Invoice 42\r\n"
       b"Message-ID: <42@lan>\r\n\r\nconfidential body\r\n")


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


@pytest.fixture
def q(state) -> SpoolQueue:
    return SpoolQueue(state)


def out_of(fn, *args, **kw) -> tuple[int, str]:
    buf = io.StringIO()
    code = fn(*args, out=buf, **kw)
    return code, buf.getvalue()


def test_list_shows_the_waiting_messages(q, state):
    a = q.enqueue(MB, "printer@lan", ["bob@example.test", "eve@example.test"], MSG, NOW - 7200)
    q.defer(a, now=NOW - 60, next_attempt=NOW + 300, error="451 4.3.0 Temporary server error")
    b = q.enqueue(MB, "printer@lan", ["bob@example.test"], MSG, NOW - 5)
    code, text = out_of(queue_list, state, now=NOW)
    lines = text.splitlines()
    assert code == 0 and lines[0].split()[:4] == ["ID", "MAILBOX", "AGE", "TRIES"]
    assert lines[1].split()[:8] == [a, MB, "2h0m", "1", "in", "5m0s", f"{len(MSG)}B", "2"]
    assert lines[1].endswith("451 4.3.0 Temporary server error")
    assert lines[2].split()[:5] == [b, MB, "5s", "0", "now"] and lines[2].endswith(" -")
    assert lines[3] == "2 message(s)"
    assert "confidential" not in text


def test_failed_shows_the_reasons(q, state):
    a = q.enqueue(MB, "printer@lan", ["gone@example.test"], MSG, NOW - 100)
    q.fail(a, "550 5.1.1 User unknown", NOW - 10)
    code, text = out_of(queue_failed, state, now=NOW)
    assert code == 0
    assert text.splitlines()[1].split()[:5] == [a, MB, "1m40s", "0", "10s"]
    assert text.splitlines()[1].endswith("550 5.1.1 User unknown")
    assert out_of(queue_list, state, now=NOW)[1].endswith("0 message(s)\n")


def test_show_prints_the_envelope_and_headers_not_the_body(q, state):
    a = q.enqueue(MB, "printer@lan", ["bob@example.test"], MSG, NOW - 60)
    code, text = out_of(queue_show, state, a[:15], now=NOW)
    fields = dict(line.split(":", 1) for line in text.splitlines())
    assert code == 0 and fields["id"].strip() == a and fields["state"].strip() == "waiting"
    assert fields["subject"].strip() == "Invoice 42" and fields["next attempt"].strip() == "now"
    assert fields["recipients"].strip() == "bob@example.test"
    assert "confidential" not in text


def test_show_unknown(state, capsys):
    assert queue_show(state, "123", out=io.StringIO()) == 1
    assert "123: no such message" in capsys.readouterr().err


def test_retry_one_and_all(q, state):
    a = q.enqueue(MB, MB, ["x@example.test"], MSG, NOW)
    b = q.enqueue(MB, MB, ["y@example.test"], MSG, NOW)
    q.defer(a, now=NOW, next_attempt=NOW + 3600, error="451 later")
    q.fail(b, "550 no", NOW)
    assert out_of(queue_retry, state, a, now=NOW + 1) == (
        0, f"{a}: due now\n1 message(s) due now; a running relay picks them up within its "
           f"spool.rescan_interval (or at once on SIGHUP)\n")
    assert q.read(q.queue / a).next_attempt == NOW + 1
    code, _ = out_of(queue_retry, state, all_=True, now=NOW + 2)
    assert code == 0 and [e.id for e in q.entries("failed")] == [b]  # --all alone: the queue only
    code, _ = out_of(queue_retry, state, all_=True, failed=True, now=NOW + 3)
    assert code == 0 and q.entries("failed") == [] and [e.id for e in q.entries()] == [a, b]


def test_retry_needs_an_id(state, capsys):
    assert queue_retry(state, None, out=io.StringIO()) == 1
    assert "name a message id" in capsys.readouterr().err


def test_delete(q, state, capsys):
    a = q.enqueue(MB, MB, ["x@example.test"], MSG, NOW)
    assert out_of(queue_delete, state, a) == (0, f"{a}: deleted from queue\n")
    assert queue_delete(state, a, out=io.StringIO()) == 1
    assert "no such message" in capsys.readouterr().err


def test_changes_are_refused_for_a_spool_of_another_user(q, state, capsys):
    a = q.enqueue(MB, MB, ["x@example.test"], MSG, NOW)
    os.chown(q.root, os.geteuid() + 4242, -1)
    assert queue_retry(state, a, out=io.StringIO()) == 1
    assert queue_delete(state, a, out=io.StringIO()) == 1
    assert f"belongs to uid {os.geteuid() + 4242}" in capsys.readouterr().err
    assert out_of(queue_list, state, now=NOW)[0] == 0  # looking is fine
    assert [e.id for e in q.entries()] == [a]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="relay365")
    sub = p.add_subparsers(dest="command", required=True)
    add_queue_parser(sub)
    return p


def test_the_subcommand(q, state, capsys, tmp_path):
    a = q.enqueue(MB, MB, ["x@example.test"], MSG, NOW)
    args = parser().parse_args(["queue", "retry", a, "--state-dir", str(state)])
    assert args.func is cmd_queue and args.func(args) == 0
    assert f"{a}: due now" in capsys.readouterr().out
    args = parser().parse_args(["queue", "retry", a, "--all", "--state-dir", str(state)])
    assert args.func(args) == 2
    with pytest.raises(SystemExit):
        parser().parse_args(["queue", "list"])  # -c or --state-dir is required
    with pytest.raises(SystemExit):
        parser().parse_args(["queue", "list", "-c", "x.yaml", "--state-dir", "y"])
    config = tmp_path / "relay.yaml"
    config.write_text(f"state_dir: {state}\naccounts: []\n")
    args = parser().parse_args(["queue", "list", "-c", str(config)])
    with pytest.raises(SystemExit) as info:  # the config has a problem: exit 2 with the list
        args.func(args)
    assert info.value.code == 2 and "accounts" in capsys.readouterr().err
