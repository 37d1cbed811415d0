"""`relay365 accounts`: the state of every upstream account, as the daemon last saw it.

The daemon writes `state_dir/accounts.json` (no secrets) whenever a token is refreshed or fails and
once a minute; the refresh-token age comes from the token store itself. Without a running daemon the
file may be old: the header says when it was written.
"""

from __future__ import annotations

import json
import time

from .config import Config
from .tokens.manager import STATUS_FILE
from .tokens.store import TokenStore


def _ago(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    s = int(now - ts)
    if s < 0:
        return f"in {_span(-s)}"
    return f"{_span(s)} ago"


def _via(row: dict[str, object]) -> str:
    """`smtp`, `graph`, or `graph (auto)` once an auto account switched (SMTP AUTH off)."""
    via = str(row.get("sending_via") or row.get("send_via") or "smtp")
    return f"{via} (auto)" if row.get("send_via") == "auto" and via == "graph" else via


def _span(s: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def collect(config: Config, now: float | None = None) -> dict:
    now = now or time.time()
    path = config.state_dir / STATUS_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = {"written_at": None, "accounts": []}
    by_box = {a["mailbox"].lower(): a for a in saved.get("accounts", [])}
    store = TokenStore(config.state_dir)
    rows = []
    for account in config.accounts:
        row = {"mailbox": account.mailbox, "flow": account.flow, "state": "unknown", "code": None,
               "send_via": account.send_via,
               "action": None, "expires_at": None, "last_refresh": None, "last_use": None,
               **by_box.get(account.mailbox.lower(), {})}
        stored = store.get(account.mailbox) if account.flow == "refresh_token" else None
        row["refresh_token_updated"] = stored.updated_at if stored else None
        if account.flow == "refresh_token" and stored is None and not account.refresh_token:
            row["state"], row["action"] = "needs-auth", "no refresh token: run relay365 auth MAILBOX"
        rows.append(row)
    return {"written_at": saved.get("written_at"), "accounts": rows}


def render(report: dict, now: float | None = None) -> str:
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
