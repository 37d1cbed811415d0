"""`relay365 accounts`: the state of every upstream account, as the daemon last saw it.

The daemon writes `state_dir/accounts.json` (no secrets) whenever a token is refreshed or fails and
once a minute; the refresh-token age comes from the token store itself. Without a running daemon the
file may be old: the header says when it was written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NotRequired, TypedDict, cast

from .config import Config
from .tokens.manager import STATUS_FILE
from .tokens.store import TokenStore


class SavedRow(TypedDict, total=False):
    """What the daemon wrote about one account (`AccountView.as_dict()`)."""
    mailbox: str
    flow: str
    state: str
    code: str | None
    error: str | None
    action: str | None
    expires_at: float | None
    last_refresh: float | None
    last_use: float | None
    send_via: str


class Row(TypedDict):
    mailbox: str
    flow: str
    state: str
    code: str | None
    error: NotRequired[str | None]  # only from the daemon's file
    action: str | None
    expires_at: float | None
    last_refresh: float | None
    last_use: float | None
    send_via: str  # smtp | graph | auto, or "graph (auto)" once auto switched
    refresh_token_updated: float | None


class Report(TypedDict):
    written_at: float | None
    accounts: list[Row]


def _ago(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    s = int(now - ts)
    if s < 0:
        return f"in {_span(-s)}"
    return f"{_span(s)} ago"


def _via(row: Mapping[str, object]) -> str:
    """`smtp`, `graph`, or `graph (auto)` once an auto account switched (SMTP AUTH off)."""
    via = str(row.get("sending_via") or row.get("send_via") or "smtp")
    return f"{via} (auto)" if row.get("send_via") == "auto" and via == "graph" else via


def _span(s: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def _saved(path: Path) -> tuple[float | None, dict[str, SavedRow]]:
    """When the daemon wrote its status file, and its rows by lower-cased mailbox.

    The file is the daemon's (written atomically, `TokenManager._write_status`), so its rows are
    taken as they are; one that is not JSON of that shape counts as no status at all."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, {}
    if not isinstance(saved, dict) or not isinstance(saved.get("accounts", []), list):
        return None, {}
    rows = [r for r in saved.get("accounts", [])
            if isinstance(r, dict) and isinstance(r.get("mailbox"), str)]
    when = saved.get("written_at")
    return (when if isinstance(when, (int, float)) else None,
            {r["mailbox"].lower(): cast(SavedRow, r) for r in rows})


def collect(config: Config, now: float | None = None) -> Report:
    now = now or time.time()
    written_at, by_box = _saved(config.state_dir / STATUS_FILE)
    store = TokenStore(config.state_dir)
    rows: list[Row] = []
    for account in config.accounts:
        stored = store.get(account.mailbox) if account.flow == "refresh_token" else None
        saved: SavedRow = by_box.get(account.mailbox.lower(), {})
        row: Row = {"mailbox": account.mailbox, "flow": account.flow, "state": "unknown",
                    "code": None, "action": None, "expires_at": None, "last_refresh": None,
                    "last_use": None, "send_via": account.send_via, **saved,
                    "refresh_token_updated": stored.updated_at if stored else None}
        if account.flow == "refresh_token" and stored is None and not account.refresh_token:
            row["state"], row["action"] = "needs-auth", "no refresh token: run relay365 auth MAILBOX"
        rows.append(row)
    return {"written_at": written_at, "accounts": rows}


def render(report: Report, now: float | None = None) -> str:
    now = now or time.time()
    head = ("MAILBOX", "FLOW", "STATE", "TOKEN EXPIRES", "LAST REFRESH", "REFRESH TOKEN AGE", "LAST USE",
            "SENDS VIA")
    lines = [head]
    notes = []
    for r in report["accounts"]:
        state = r["state"] + (f" ({r['code']})" if r.get("code") else "")
        age = _ago(r.get("refresh_token_updated"), now).replace(" ago", "") if r.get(
            "refresh_token_updated") else "-"
        lines.append((r["mailbox"], r["flow"], state, _ago(r.get("expires_at"), now),
                      _ago(r.get("last_refresh"), now), age, _ago(r.get("last_use"), now),
                      _via(r)))
        if r.get("action") and r["state"] != "ok":
            notes.append(f"  {r['mailbox']}: {r['action']}")
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(head))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in lines]
    when = report.get("written_at")
    out.append(f"(daemon status written {_ago(when, now)})" if when else
               "(no daemon status yet: is relay365 serve running with this state_dir?)")
    return "\n".join(out + notes)
