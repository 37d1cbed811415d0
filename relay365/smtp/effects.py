"""What the SMTP policy core tells the adapter to do (effects) and what the adapter reports back
(outcomes): small frozen dataclasses, no I/O. `policy.SmtpPolicy` is the state machine that uses
them; `relay365.smtp.server` and `outbound` carry the effects out.
"""

from __future__ import annotations

from dataclasses import dataclass

# -- effects: what the adapter must do next ------------------------------------------------------

@dataclass(frozen=True)
class Reply:
    text: str


@dataclass(frozen=True)
class UpstreamMail:
    mailbox: str  # the accounts[] mailbox that logs in upstream (sender.who_sends)
    sender: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class UpstreamRcpt:
    rcpt: str
    mail: UpstreamMail | None = None  # MAIL not sent yet: it goes with this RCPT, one write (RFC 2920)


@dataclass(frozen=True)
class UpstreamData:
    rewrite_to: str | None  # the mailbox to write into From, or None to leave the message as is
    reset_first: bool = False


@dataclass(frozen=True)
class GraphSend:
    mailbox: str
    sender: str
    rcpts: tuple[str, ...]
    rewrite_to: str | None


@dataclass(frozen=True)
class SpoolIt:
    mailbox: str  # the accounts[] mailbox that will send it
    sender: str
    rcpts: tuple[str, ...]
    options: tuple[str, ...]
    rewrite_to: str | None
    reason: str | None  # why a direct transaction went to the spool (the 4xx it would have been)
    reset_first: bool = False  # end the upstream's half-open transaction first


Effect = Reply | UpstreamMail | UpstreamRcpt | UpstreamData | GraphSend | SpoolIt


# -- outcomes: what the adapter reports ----------------------------------------------------------

@dataclass(frozen=True)
class Accepted:
    """The upstream's 2xx (or 3xx) reply to the command."""

    code: int
    text: str


@dataclass(frozen=True)
class Failed:
    """The command failed: `reply` is what the client would hear (`replies.for_exception`);
    `lost` says the upstream session is gone (no reply at all, or a 421)."""

    reply: str
    lost: bool = False


@dataclass(frozen=True)
class ViaGraph:
    """The account sends through Microsoft Graph: no upstream session, all at end of DATA."""


@dataclass(frozen=True)
class Pipelined:
    """The upstream offers PIPELINING: MAIL waits, to go in one write with the first RCPT."""


@dataclass(frozen=True)
class Spooled:
    entry_id: str


@dataclass(frozen=True)
class SpoolFailed:
    reply: str  # replies.SPOOL_FULL or replies.SPOOL_ERROR
