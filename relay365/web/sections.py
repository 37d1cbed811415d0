"""What the section templates (accounts, queue, sessions, listeners) ask of Python: pure.

The markup is in templates/*.html; here are the few rules that are not markup - which colour a
token state gets, how a long recipient list is cut - as filters (markup.py registers them).
Actions are offered only to a logged-in admin (the templates check `viewer`); the server checks
again.
"""

from __future__ import annotations

from collections.abc import Sequence

STATE_CLASS = {"ok": "ok", "refreshing": "busy", "needs-auth": "bad", "error": "warn"}
SHOWN_RCPTS = 3  # recipients listed per queue row; the rest are counted


def state_class(state: str) -> str:
    return STATE_CLASS.get(state, "idle")


def recipients(rcpts: Sequence[str]) -> str:
    """The first few recipients, and how many more: "a@x, b@x, c@x (+2)"."""
    more = f" (+{len(rcpts) - SHOWN_RCPTS})" if len(rcpts) > SHOWN_RCPTS else ""
    return ", ".join(rcpts[:SHOWN_RCPTS]) + more

