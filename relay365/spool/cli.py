"""`relay365 queue list|show|retry|delete|failed`: the operator's view of the spool.

Safe while the daemon runs: every change goes through `SpoolQueue` (the same lock file and atomic
renames the worker uses); the worker notices within `spool.rescan_interval` seconds (or at once on
SIGHUP). Message bodies are never printed - only envelopes and a few headers.

Each `queue_*` function takes the state directory and an output stream and returns an exit code:
0 done, 1 no such message (or nothing to do), 2 bad configuration.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import TextIO

from .entry import Entry, NotFound, SpoolError
from .queue import SpoolQueue
from .schedule import age_text

SHOWN_HEADERS = ("Subject", "From", "To", "Date", "Message-ID")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return str(value)


def _table(entries: list[Entry], now: float, out: TextIO, failed: bool) -> None:
    last = "REASON" if failed else "LAST ERROR"
    out.write(f"{'ID':<30} {'MAILBOX':<28} {'AGE':>6} {'TRIES':>5} "
              f"{'FAILED' if failed else 'NEXT':>7} {'SIZE':>9} {'RCPTS':>5}  {last}\n")
    for e in entries:
        if failed:
            when = age_text(now - e.failed_at) + " ago" if e.failed_at else "?"
        else:
            when = "now" if e.next_attempt <= now else "in " + age_text(e.next_attempt - now)
        out.write(f"{e.id:<30} {e.mailbox:<28} {age_text(now - e.received_at):>6} {e.attempts:>5} "
                  f"{when:>7} {_size(e.size):>9} {len(e.rcpts):>5}  {(e.last_error or '-')[:80]}\n")
    out.write(f"{len(entries)} message(s)\n")


def queue_list(state_dir: Path, out: TextIO | None = None, now: float | None = None) -> int:
    """The messages waiting for delivery, oldest first."""
    out = out or sys.stdout
    _table(SpoolQueue(state_dir).entries("queue"), time.time() if now is None else now, out, False)
    return 0


def queue_failed(state_dir: Path, out: TextIO | None = None, now: float | None = None) -> int:
    """The dead letters, with the reason each was given up on."""
    out = out or sys.stdout
    _table(SpoolQueue(state_dir).entries("failed"), time.time() if now is None else now, out, True)
    return 0


def queue_show(state_dir: Path, entry_id: str, out: TextIO | None = None,
               now: float | None = None) -> int:
    """One message's envelope and headers (not its body)."""
    out = out or sys.stdout
    now = time.time() if now is None else now
    try:
        where, e = SpoolQueue(state_dir).find(entry_id)
    except NotFound as exc:
        print(f"relay365: {exc}", file=sys.stderr)
        return 1
    rows = [("id", e.id), ("state", "waiting" if where == "queue" else "failed"),
            ("mailbox", e.mailbox), ("sender", e.mail_from), ("recipients", ", ".join(e.rcpts)),
            ("received", f"{_iso(e.received_at)} ({age_text(now - e.received_at)} ago)"),
            ("size", f"{e.size} bytes"), ("attempts", str(e.attempts))]
    if where == "queue":
        rows.append(("next attempt", "now" if e.next_attempt <= now else
                     f"{_iso(e.next_attempt)} (in {age_text(e.next_attempt - now)})"))
    if e.failed_at:
        rows.append(("failed", _iso(e.failed_at)))
    rows.append(("last error" if where == "queue" else "reason", e.last_error or "-"))
    rows += [(f"refused {r}", reply) for r, reply in e.rcpt_errors.items()]
    if e.notice:
        rows.append(("notice", "this is a notice to the admin about another message"))
    rows.append(("path", str(e.path)))
    try:
        with open(e.message_path, "rb") as f:
            headers = BytesHeaderParser(policy=policy.default).parsebytes(f.read(65536))
        rows += [(h.lower(), str(headers[h])) for h in SHOWN_HEADERS if headers[h]]
    except OSError as exc:
        rows.append(("message", f"unreadable: {exc.strerror}"))
    for k, v in rows:
        out.write(f"{k + ':':<14} {v}\n")
    return 0


def _wrong_user(state_dir: Path) -> str | None:
    """Files this process writes must stay readable by the daemon: refuse to change a spool
    owned by another user (typically: the operator ran this as root)."""
    root = SpoolQueue(state_dir).root
    try:
        owner = root.stat().st_uid
    except FileNotFoundError:
        return None
    if owner != os.geteuid():
        return (f"{root} belongs to uid {owner}; run this as that user (e.g. sudo -u "
                f"<service user> relay365 queue ...), or the relay could not read what it writes")
    return None


def queue_retry(state_dir: Path, entry_id: str | None = None, *, all_: bool = False,
                failed: bool = False, out: TextIO | None = None, now: float | None = None) -> int:
    """Make a message due now (a dead letter goes back into the queue with a fresh lifetime).

    `all_`: every waiting message; with `failed` too, every dead letter as well.
    """
    out = out or sys.stdout
    now = time.time() if now is None else now
    queue = SpoolQueue(state_dir)
    if problem := _wrong_user(state_dir):
        print(f"relay365: {problem}", file=sys.stderr)
        return 1
    try:
        if all_:
            ids = [e.id for e in queue.entries("queue")]
            ids += [e.id for e in queue.entries("failed")] if failed else []
        else:
            if not entry_id:
                raise NotFound("name a message id, or --all")
            ids = [queue.find(entry_id)[1].id]
        done = [queue.retry(i, now) for i in ids]
    except (NotFound, SpoolError) as exc:
        print(f"relay365: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"relay365: cannot change the spool: {exc.strerror}", file=sys.stderr)
        return 1
    for e in done:
        out.write(f"{e.id}: due now\n")
    out.write(f"{len(done)} message(s) due now; a running relay picks them up within its "
              f"spool.rescan_interval (or at once on SIGHUP)\n")
    return 0 if done or all_ else 1


def queue_delete(state_dir: Path, entry_id: str, out: TextIO | None = None) -> int:
    """Remove a message for good, from the queue or from the dead letters."""
    out = out or sys.stdout
    queue = SpoolQueue(state_dir)
    if problem := _wrong_user(state_dir):
        print(f"relay365: {problem}", file=sys.stderr)
        return 1
    try:
        full = queue.find(entry_id)[1].id
        where = queue.delete(full)
    except NotFound as exc:
        print(f"relay365: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"relay365: cannot change the spool: {exc.strerror}", file=sys.stderr)
        return 1
    out.write(f"{full}: deleted from {where}\n")
    return 0


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))


# -- argparse ---------------------------------------------------------------------------------------

def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir:
        return Path(args.state_dir)
    from ..config import load_config
    from ..errors import ConfigError

    try:
        return load_config(args.config).state_dir
    except ConfigError as exc:
        print(f"relay365: configuration {exc.source} has {len(exc.problems)} problem(s):",
              file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_queue(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    action = args.queue_action
    if action == "list":
        return queue_list(state_dir)
    if action == "failed":
        return queue_failed(state_dir)
    if action == "show":
        return queue_show(state_dir, args.id)
    if action == "delete":
        return queue_delete(state_dir, args.id)
    if args.id and args.all:
        print("relay365: name a message id or --all, not both", file=sys.stderr)
        return 2
    return queue_retry(state_dir, args.id, all_=args.all, failed=args.failed)


def add_queue_parser(
        subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register `queue` with its actions on the main parser's subparsers; each sets `func`."""
    where = argparse.ArgumentParser(add_help=False)
    group = where.add_mutually_exclusive_group(required=True)
    group.add_argument("-c", "--config", help="the relay's config file (for its state_dir)")
    group.add_argument("--state-dir", help="the state directory itself")

    q = subparsers.add_parser("queue", help="the spool: list, show, retry, delete, failed "
                                            "(safe while the relay runs)")
    actions = q.add_subparsers(dest="queue_action", required=True)
    a = actions.add_parser("list", parents=[where], help="messages waiting for delivery")
    a = actions.add_parser("failed", parents=[where], help="messages given up on, with the reason")
    a = actions.add_parser("show", parents=[where], help="one message's envelope and headers")
    a.add_argument("id", help="message id (a unique prefix will do)")
    a = actions.add_parser("retry", parents=[where], help="make a message due now; a failed one "
                                                          "goes back into the queue")
    a.add_argument("id", nargs="?", help="message id (a unique prefix will do)")
    a.add_argument("--all", action="store_true", help="every waiting message")
    a.add_argument("--failed", action="store_true", help="with --all: every failed message too")
    a = actions.add_parser("delete", parents=[where], help="remove a message for good")
    a.add_argument("id", help="message id (a unique prefix will do)")
    q.set_defaults(func=cmd_queue)
    return q
