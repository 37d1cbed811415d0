"""Small HTML helpers for the status page: every value goes through `esc`, times read as people do.

Pure: time comes in as `now`. A cell is either escaped text (`esc`) or markup built here from
escaped parts; nothing from a client, an envelope or an upstream reply is ever written unescaped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html import escape


def esc(value: object) -> str:
    """Text as HTML, quotes included (safe in attributes too); None reads as a dash."""
    return "-" if value is None else escape(str(value), quote=True)


def span(seconds: float) -> str:
    """A duration as two units at most: 45s, 5m 3s, 2h 5m, 3d 4h."""
    s = int(abs(seconds))
    for big, big_size, small, small_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60),
                                             ("m", 60, "s", 1)):
        if s >= big_size:
            rest = (s % big_size) // small_size
            return f"{s // big_size}{big}" + (f" {rest}{small}" if rest else "")
    return f"{s}s"


def stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def ago(ts: float | None, now: float) -> str:
    """`<time>` with the UTC stamp as title: "5m ago", "in 3m", or a dash."""
    if not ts:
        return "-"
    rel = f"in {span(ts - now)}" if ts > now else f"{span(now - ts)} ago"
    return f'<time datetime="{stamp(ts)}" title="{stamp(ts)}">{rel}</time>'


def size(n: int) -> str:
    for unit, step in (("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= step:
            return f"{n / step:.1f} {unit}"
    return f"{n} B"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, cls: str, empty: str) -> str:
    """A table whose cells are already markup; `empty` is shown when there are no rows."""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="empty">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return (f'<div class="scroll"><table class="{esc(cls)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def action(path: str, fields: dict[str, str], label: str, csrf: str, *, confirm: str = "") -> str:
    """A one-button POST form carrying the CSRF token."""
    hidden = "".join(f'<input type="hidden" name="{esc(k)}" value="{esc(v)}">' for k, v in fields.items())
    data = f' data-confirm="{esc(confirm)}"' if confirm else ""
    return (f'<form method="post" action="{esc(path)}" class="inline"{data}>{hidden}'
            f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
            f'<button type="submit">{esc(label)}</button></form>')
