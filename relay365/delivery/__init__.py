"""Delivering to Office 365: everything that speaks to Exchange Online on the sending side.

- `smtp`: `UpstreamSMTP`, one SMTP session to smtp.office365.com - verified TLS, AUTH XOAUTH2 as
  the account's mailbox, aiosmtplib's exceptions turned into the relay's errors - and
  `open_session`, the one place such a session is built (the live SMTP path, the spool and
  `relay365 check --upstream` all use it).
- `pool`: idle logged-in sessions kept for the next client of the same mailbox.
- `deliver`: the `Deliverer` interface - deliver one whole message (mailbox, sender, recipients,
  content) and report the recipients refused - and `SmtpDeliverer`, its SMTP implementation, which
  the spool worker uses.
- `message`: a message's content in bounded memory (`Body`: RAM up to 256 KiB, then a temporary
  file; `FileMessage`: a spooled file), always read as chunks; `wire`: content to DATA bytes,
  chunk by chunk (line ends, dot-stuffing, the end line).

Nothing here knows about local clients, the spool's files or the session policy: the SMTP side
(`relay365.smtp`) and the spool (`relay365.spool`) import this package, never the other way round.
"""

from .deliver import Deliverer, Outgoing, Refusal, SmtpDeliverer
from .smtp import UpstreamSMTP, open_session

__all__ = ["Deliverer", "Outgoing", "Refusal", "SmtpDeliverer", "UpstreamSMTP", "open_session"]
