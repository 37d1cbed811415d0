"""The page's sections - accounts, queue, sessions, listeners and limits - as HTML: pure.

Each function takes the model (and the viewer, for the action buttons) and returns markup built
from escaped values only. Actions are offered only to a logged-in admin; the server checks again.
"""

from __future__ import annotations

from ..sessions import Summary
from .markup import action, ago, esc, size, span, table
from .model import AccountRow, QueueRow, Status, Viewer

STATE_CLASS = {"ok": "ok", "refreshing": "busy", "needs-auth": "bad", "error": "warn"}


def _state(row: AccountRow) -> str:
    cls = STATE_CLASS.get(row.state, "idle")
    code = f' <span class="code">{esc(row.code)}</span>' if row.code else ""
    return f'<span class="state {cls}">{esc(row.state)}</span>{code}'


def _account_note(row: AccountRow) -> str:
    if row.state == "ok" or not (row.action or row.fix or row.error):
        return ""
    fix = f'<div>fix: <code class="fix">{esc(row.fix)}</code></div>' if row.fix else ""
    error = f"<div>{esc(row.error)}</div>" if row.error else ""
    what = f"<div>{esc(row.action)}</div>" if row.action else ""
    return f'<div class="note">{error}{what}{fix}</div>'


def accounts(status: Status) -> str:
    rows = [
        (f"{esc(a.mailbox)}{_account_note(a)}", esc(a.flow), esc(a.via), _state(a),
         ago(a.expires_at, status.now), ago(a.last_refresh, status.now),
         esc(span(status.now - a.refresh_token_at)) if a.refresh_token_at else "-",
         ago(a.last_use, status.now), esc(a.messages_today))
        for a in status.accounts]
    headers = ("Mailbox", "Flow", "Via", "State", "Token expires", "Last refresh",
               "Refresh token age", "Last use", "Today")
    return ('<section id="accounts"><h2>Accounts</h2>'
            + table(headers, rows, cls="accounts", empty="no accounts configured") + "</section>")


def _rcpts(row: QueueRow) -> str:
    shown = ", ".join(row.rcpts[:3])
    return esc(shown + (f" (+{len(row.rcpts) - 3})" if len(row.rcpts) > 3 else ""))


def _queue_actions(row: QueueRow, viewer: Viewer) -> str:
    if not (viewer.logged_in and viewer.csrf):
        return ""
    return (action("/action/retry", {"id": row.id}, "retry", viewer.csrf)
            + action("/action/delete", {"id": row.id}, "delete", viewer.csrf,
                     confirm=f"Delete message {row.id} for good?"))


def _queue_table(rows: tuple[QueueRow, ...], status: Status, viewer: Viewer, failed: bool) -> str:
    headers = ["ID", "Failed" if failed else "Age", "Mailbox", "Recipients", "Attempts",
               "Reason" if failed else "Next attempt"]
    headers += [] if failed else ["Last error"]
    headers += ["Subject"] if status.show_subjects else []
    headers += ["Actions"] if viewer.logged_in else []
    out = []
    for r in rows:
        cells = [f'<code class="id">{esc(r.id)}</code>',
                 ago(r.failed_at, status.now) if failed else esc(span(status.now - r.received_at)),
                 esc(r.mailbox), _rcpts(r), esc(r.attempts)]
        cells += [esc(r.last_error)] if failed else [ago(r.next_attempt, status.now), esc(r.last_error)]
        cells += [esc(r.subject)] if status.show_subjects else []
        cells += [_queue_actions(r, viewer)] if viewer.logged_in else []
        out.append(cells)
    empty = "no failed messages" if failed else "nothing waiting"
    return table(headers, out, cls="failed" if failed else "waiting", empty=empty)


def queue(status: Status, viewer: Viewer) -> str:
    q = status.queue
    if not q.enabled:
        return ('<section id="queue"><h2>Queue</h2><p class="empty">no spool: the smtp: section '
                "is not configured</p></section>")
    oldest = f", oldest {esc(span(q.oldest_age))}" if q.depth else ""
    return (f'<section id="queue"><h2>Queue</h2><p class="summary"><b class="depth">{q.depth}</b>'
            f" waiting{oldest}; {len(q.failed)} failed</p><h3>Waiting</h3>"
            + _queue_table(q.waiting, status, viewer, failed=False)
            + "<h3>Failed</h3>" + _queue_table(q.failed, status, viewer, failed=True) + "</section>")


def _session_row(s: Summary, now: float) -> list[str]:
    return [ago(s.at, now), esc(s.proto), esc(s.peer), esc(s.user), esc(s.mailbox),
            f'<span class="outcome">{esc(s.outcome)}</span>', esc(s.messages), esc(size(s.size)),
            esc(s.upstream_reply), esc(f"{s.seconds:.1f}s")]


def sessions(status: Status) -> str:
    form = ('<form method="get" action="/#sessions" class="filter">'
            f'<label>peer <input name="peer" value="{esc(status.peer_filter)}" size="14"></label> '
            f'<label>user <input name="user" value="{esc(status.user_filter)}" size="14"></label> '
            '<button type="submit">filter</button> <a href="/#sessions">clear</a></form>')
    headers = ("Time", "Proto", "Peer", "User", "Mailbox", "Outcome", "Msgs", "Bytes",
               "Upstream reply", "Took")
    rows = [_session_row(s, status.now) for s in status.sessions]
    filtered = bool(status.peer_filter or status.user_filter)
    return ('<section id="sessions"><h2>Recent sessions</h2>' + form
            + table(headers, rows, cls="sessions",
                    empty="no session matches the filter" if filtered else "no sessions yet")
            + "</section>")


def listeners(status: Status, viewer: Viewer) -> str:
    bound = [(esc(li.proto), esc(", ".join(li.addresses)), esc(li.connections))
             for li in status.listeners]
    blocks = []
    for b in status.blocks:
        cells = [esc(b.kind), esc(b.value), esc(span(b.seconds_left))]
        if viewer.logged_in and viewer.csrf:
            cells.append(action("/action/unblock", {"kind": b.kind, "value": b.value}, "unblock",
                                viewer.csrf))
        blocks.append(cells)
    block_headers = ["Blocked", "IP / user", "Time left"] + (["Action"] if viewer.logged_in else [])
    return ('<section id="listeners"><h2>Listeners and limits</h2>'
            + table(("Protocol", "Bound to", "Connections now"), bound, cls="listeners",
                    empty="nothing bound")
            + "<h3>Throttle blocks</h3>"
            + table(block_headers, blocks, cls="blocks", empty="no IP or user is blocked")
            + "</section>")
