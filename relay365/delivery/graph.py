"""`GraphDeliverer`: the `Deliverer` for accounts with `send_via: graph` - Microsoft Graph sendMail.

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
from ..graph.mime import SENDMAIL_MAX_MIME, prepare
from ..tokens.manager import TokenManager
from .deliver import Outgoing, Refusal
from .message import read_all

log = structlog.get_logger("relay365.delivery.graph")


class GraphDeliverer:
    def __init__(self, config: Config, tokens: TokenManager, *, client: GraphClient | None = None) -> None:
        self.config = config
        self.client = client or GraphClient(config, tokens)

    async def deliver(self, message: Outgoing) -> tuple[Refusal, ...]:
        if self.config.account(message.mailbox) is None:
            raise TokenError(account=message.mailbox, error="unknown_account", code=None,
                             transient=False, action="add the mailbox under accounts: or delete "
                                                     "its queued messages")
        prepared = prepare(read_all(message.message), message.rcpts)
        if prepared.dropped:
            log.warning("graph_header_recipients_dropped", account=message.mailbox,
                        dropped=list(prepared.dropped))
        if not prepared.fits_sendmail:
            # drafts + upload sessions for large attachments are not built yet (issue 13)
            raise GraphError(f"Graph sendMail: {len(prepared.data)} bytes over {SENDMAIL_MAX_MIME}",
                             code=552, text="5.3.4 Message too big for Microsoft Graph sendMail",
                             transient=False, status=0)
        started = time.monotonic()
        try:
            answer = await self.client.send_mime(message.mailbox, prepared.data)
        except GraphError as exc:
            log.warning("graph_send_failed", account=message.mailbox, status=exc.status,
                        graph_code=exc.graph_code, request_id=exc.request_id,
                        transient=exc.transient, retry_after=exc.retry_after, action=exc.action)
            raise
        metrics.UPSTREAM_LATENCY.labels("graph", "send").observe(time.monotonic() - started)
        metrics.MESSAGES.inc()
        metrics.BYTES.labels("graph", "up").inc(len(prepared.data))
        log.info("graph_sent", account=message.mailbox, request_id=answer.request_id,
                 rcpts=len(message.rcpts), bcc=len(prepared.bcc),
                 seconds=round(time.monotonic() - started, 3))
        return ()

    def configure(self, config: Config) -> None:
        self.config = config
        self.client.configure(config)

    async def aclose(self) -> None:
        await self.client.aclose()
