"""The notice about a dead letter: plain text, from the mailbox to `spool.admin_bounce_to`.

Never to the original sender (a relay that bounces to a forged sender is a backscatter source);
it goes through the queue like any message, flagged as a notice so a notice that fails itself
does not beget another.
"""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import structlog

from ..errors import RelayError
from ..replies import one_line
from .entry import MESSAGE, Entry
from .handoff import describe

log = structlog.get_logger("relay365.spool")

NOTICE_HEADER_BYTES = 16384  # how much of a dead letter is read to quote its headers


def read_head(path: Path) -> bytes:
    with open(path / MESSAGE, "rb") as f:
        return f.read(NOTICE_HEADER_BYTES)


def render_notice(entry: Entry, reason: str, failed_id: str, admin: str, head: bytes,
                  now: float) -> bytes:
    """The plain-text notice about a dead letter, sent from the mailbox to the admin."""
    original = BytesHeaderParser(policy=email.policy.default).parsebytes(head)
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = f"relay365 <{entry.mailbox}>"
    msg["To"] = admin
    msg["Subject"] = f"relay365: undeliverable message from {entry.mailbox} ({failed_id})"
    msg["Date"] = email.utils.formatdate(now)
    msg["Message-ID"] = email.utils.make_msgid("relay365")
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to this
    quoted = "\n".join(f"  {h}: {one_line(str(original[h]), 200)}"
                       for h in ("Subject", "From", "To", "Date", "Message-ID") if original[h])
    msg.set_content(
        f"relay365 could not deliver a message and gave up.\n\n"
        f"  Queue id:   {failed_id}\n  Mailbox:    {entry.mailbox}\n"
        f"  Sender:     {entry.mail_from}\n  Recipients: {', '.join(entry.rcpts)}\n"
        f"  Received:   {email.utils.formatdate(entry.received_at)}\n"
        f"  Attempts:   {entry.attempts + 1}\n  Reason:     {reason}\n\n"
        f"Original headers:\n{quoted or '  (none)'}\n\n"
        f"The message is kept in the spool's failed/ directory.\n"
        f"  relay365 queue show {failed_id}     shows it\n"
        f"  relay365 queue retry {failed_id}    sends it again\n"
        f"  relay365 queue delete {failed_id}   removes it\n")
    return msg.as_bytes()


async def notify_admin(entry: Entry, reason: str, failed_id: str, *, admin: str | None, failed: Path,
                       now: float, submit: Callable[..., Awaitable[Any]]) -> None:
    """Tell the admin about the dead letter `failed_id` (never the original sender), through the
    queue like any message; a notice about a notice is not sent."""
    if not admin or entry.notice:
        return
    try:
        head = await asyncio.to_thread(read_head, failed / failed_id)
        data = render_notice(entry, reason, failed_id, admin, head, now)
        await submit(entry.mailbox, entry.mailbox, [admin], data, notice=True)
    except (RelayError, OSError) as exc:
        log.error("spool_notice_failed", id=failed_id, error=describe(exc))
