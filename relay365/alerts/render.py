"""A notice as a webhook body and as a mail. Pure: the notice and the names in, bytes/JSON out.

The webhook body is one JSON object that the common incoming webhooks take as it is: Slack and
Teams (incoming webhook / Workflows "post to a channel when a webhook request is received") show
`text`; ntfy shows the body (or use its JSON publishing with `topic` in the URL's place). The
structured fields beside `text` (`status`, `kind`, `subject`, `action`, `command`, ...) are for
receivers that route or deduplicate: `key` is the same for a condition's start and its clear.
"""

from __future__ import annotations

import datetime
import email.policy
import email.utils
from email.message import EmailMessage
from typing import Any

from .core import Notice, Phase

_MARK = {Phase.START: "ALERT", Phase.UPDATE: "ALERT", Phase.CLEAR: "CLEARED"}


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def headline(n: Notice) -> str:
    return f"[relay365 {_MARK[n.phase]}] {n.condition.title}"


def text(n: Notice, hostname: str) -> str:
    """The human text: what, what to do, the exact command."""
    c = n.condition
    if n.phase is Phase.CLEAR:
        return (f"{headline(n)}\nResolved on {hostname} after {int(n.at - n.since)} s "
                f"(since {_iso(n.since)}).")
    lines = [headline(n)]
    if c.detail:
        lines.append(c.detail)
    if c.action:
        lines.append(f"What to do: {c.action}")
    if c.command:
        lines.append(f"Command: {c.command}")
    lines.append(f"On {hostname}, since {_iso(n.since)}.")
    return "\n".join(lines)


def webhook_body(n: Notice, hostname: str) -> dict[str, Any]:
    c = n.condition
    return {
        "text": text(n, hostname), "title": headline(n), "status": n.phase.value,
        "kind": c.kind.value, "subject": c.subject, "key": c.key, "stage": c.stage or None,
        "severity": "ok" if n.phase is Phase.CLEAR else c.severity,
        "detail": c.detail or None, "action": c.action or None, "command": c.command or None,
        "since": _iso(n.since), "at": _iso(n.at), "host": hostname, "source": "relay365",
    }


def mail(n: Notice, hostname: str, sender: str, rcpts: list[str]) -> bytes:
    """The notice as a plain-text message from `sender` (an Office 365 mailbox) to `rcpts`."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = f"relay365 <{sender}>"
    msg["To"] = ", ".join(rcpts)
    msg["Subject"] = headline(n)
    msg["Date"] = email.utils.formatdate(n.at)
    msg["Message-ID"] = email.utils.make_msgid("relay365-alert", domain=sender.rpartition("@")[2] or None)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to this
    msg["X-Relay365-Alert"] = f"{n.phase.value} {n.condition.key}"
    msg.set_content(text(n, hostname) + "\n")
    return msg.as_bytes()
