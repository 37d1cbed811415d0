"""Deliver one whole message to Office 365: the interface, and its SMTP implementation.

A `Deliverer` takes an `Outgoing` message (the mailbox it is sent as, the envelope, the bytes)
and either returns the recipients Office 365 refused while it accepted the others (`Refusal`s;
empty when all were accepted), or raises the relay's errors (`TokenError`, `UpstreamError`) when
the message was not accepted for anyone. The spool worker decides what each outcome means for the
message (`relay365.spool.schedule`); this module only carries the message.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Protocol

from .. import metrics
from ..config import Config
from ..errors import TokenError
from ..replies import one_line
from ..tlsutil import client_context
from ..tokens.manager import TokenManager
from .message import Message
from .smtp import open_session, refused


@dataclass(frozen=True)
class Outgoing:
    mailbox: str  # the Office 365 mailbox the message is sent as (whose token logs in)
    mail_from: str
    rcpts: tuple[str, ...]
    message: Message  # the content, read in chunks (`message.read_all` for the whole of it)
    mail_options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Refusal:
    """A recipient the upstream refused while others were (or may have been) accepted."""

    rcpt: str
    code: int
    text: str
    transient: bool

    @property
    def reply(self) -> str:
        return f"{self.code} {one_line(self.text, 300)}"


class Deliverer(Protocol):
    async def deliver(self, message: Outgoing) -> tuple[Refusal, ...]: ...


class SmtpDeliverer:
    """One UpstreamSMTP session per message: every recipient is tried (MAIL and all RCPTs in one
    write when Office 365 offers PIPELINING); refused ones come back as `Refusal`s and the message
    goes to the accepted ones. Session failures and a refused MAIL or DATA raise the relay's
    errors."""

    def __init__(self, config: Config, tokens: TokenManager, *,
                 tls: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.tokens = tokens
        self.tls = tls or client_context(config.upstream.ca_file)
        self.hostname = config.smtp.hostname if config.smtp else "relay365"

    async def deliver(self, message: Outgoing) -> tuple[Refusal, ...]:
        if self.config.account(message.mailbox) is None:
            raise TokenError(account=message.mailbox, error="unknown_account", code=None,
                             transient=False, action="add the mailbox under accounts: or delete "
                                                     "its queued messages")
        up = await open_session(self.config.upstream, self.tls, self.tokens, message.mailbox,
                                local_hostname=self.hostname)
        try:
            env = await up.envelope(message.mail_from, message.mail_options, message.rcpts)
            if not env.mail_ok:
                raise refused(env.mail, "the sender")
            refusals = tuple(Refusal(rcpt, r.code, r.text, r.transient)
                             for i, (rcpt, r) in enumerate(zip(message.rcpts, env.rcpts, strict=True))
                             if i not in env.accepted)
            if env.accepted:
                await up.send(message.message)
                metrics.MESSAGES.inc(via="smtp")
                metrics.BYTES.labels("smtp", "up").inc(message.message.size)
            return refusals
        finally:
            await up.close()
