"""`GraphDeliverer`: the `Deliverer` for accounts with `send_via: graph` - Microsoft Graph.

Up to `SENDMAIL_MAX_MIME` the message goes as MIME in one `sendMail` (Exchange always keeps a copy
in Sent Items); larger ones, and every one of an account with `save_to_sent: false`, as a draft
with upload sessions (`relay365.graph.large`).

The envelope decides the recipients (`relay365.graph.mime.prepare`); Graph accepts the message
for all of them or for none (202 or an error), so there are never per-recipient `Refusal`s.
"""

from __future__ import annotations

import time

import structlog

from .. import metrics
from ..config import Config
from ..errors import TokenError
from ..graph.client import GraphClient
from ..graph.errors import GraphError
from ..graph.large import DraftSender
from ..graph.mime import SENDMAIL_MAX_MIME, Prepared, prepare
from ..tokens.manager import TokenManager
from .deliver import Outgoing, Refusal
from .message import read_all

log = structlog.get_logger("relay365.delivery.graph")
# prepare() may grow the header a little (a Bcc line): read messages this much over the cap whole
# and decide on the prepared size
SENDMAIL_SLACK = 64 * 1024


class GraphDeliverer:
    def __init__(self, config: Config, tokens: TokenManager, *, client: GraphClient | None = None) -> None:
        self.config = config
        self.client = client or GraphClient(config, tokens)

    async def deliver(self, message: Outgoing) -> tuple[Refusal, ...]:
        account = self.config.account(message.mailbox)
        if account is None:
            raise TokenError(account=message.mailbox, error="unknown_account", code=None,
                             transient=False, action="add the mailbox under accounts: or delete "
                                                     "its queued messages")
        save_to_sent = account.save_to_sent
        started = time.monotonic()
        try:
            if save_to_sent and message.message.size <= SENDMAIL_MAX_MIME + SENDMAIL_SLACK:
                prepared = prepare(read_all(message.message), message.rcpts)
                if prepared.fits_sendmail:
                    await self._sendmail(message, prepared)
                    return self._sent(message, started)
            await self._draft(message, save_to_sent)
            return self._sent(message, started)
        except GraphError as exc:
            log.warning("graph_send_failed", account=message.mailbox, status=exc.status,
                        graph_code=exc.graph_code, request_id=exc.request_id,
                        transient=exc.transient, retry_after=exc.retry_after, action=exc.action)
            raise

    async def _sendmail(self, message: Outgoing, prepared: Prepared) -> None:
        if prepared.dropped:
            log.warning("graph_header_recipients_dropped", account=message.mailbox,
                        dropped=list(prepared.dropped))
        answer = await self.client.send_mime(message.mailbox, prepared.data)
        log.info("graph_sent", account=message.mailbox, request_id=answer.request_id,
                 rcpts=len(message.rcpts), bcc=len(prepared.bcc), size=len(prepared.data))

    async def _draft(self, message: Outgoing, save_to_sent: bool) -> None:
        """Too large for sendMail (or no Sent Items copy wanted): a draft, uploads, send."""
        sent = await DraftSender(self.client, message.mailbox, message.message).send(
            message.rcpts, save_to_sent=save_to_sent)
        if sent.dropped:
            log.warning("graph_header_recipients_dropped", account=message.mailbox,
                        dropped=list(sent.dropped))
        log.info("graph_sent", account=message.mailbox, draft=True, rcpts=len(message.rcpts),
                 bcc=sent.bcc, size=message.message.size, attachments=sent.attachments,
                 uploaded=sent.uploaded, requests=sent.requests, save_to_sent=save_to_sent)

    def _sent(self, message: Outgoing, started: float) -> tuple[Refusal, ...]:
        metrics.UPSTREAM_LATENCY.labels("graph", "send").observe(time.monotonic() - started)
        metrics.MESSAGES.inc(via="graph")
        metrics.BYTES.labels("graph", "up").inc(message.message.size)
        return ()

    def configure(self, config: Config) -> None:
        self.config = config
        self.client.configure(config)

    async def aclose(self) -> None:
        await self.client.aclose()
