"""The two ways out for a notice: an HTTPS webhook (httpx) and a mail through the relay itself.

Each `send(notice)` returns normally when the notice was accepted and raises `AlertSendError` (with
a line that is safe to log: no URL, no header, no token) when it was not. The mail goes through the
relay's own `Deliverer` (SMTP or Graph per the account's `send_via`), straight to Office 365 and
not through the spool: an alert about the spool must not wait in it.

Which account sends alert mail: `alerts.from_account` while it is healthy; otherwise (or when it is
not set) the first account, in config order, whose token state is `ok`; failing that, the first
that does not need the operator. An account that needs re-auth cannot send the alert about itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..config import AlertsConfig, Config, WebhookConfig
from ..delivery import Deliverer, Outgoing
from ..delivery.message import BytesMessage
from ..errors import RelayError
from ..replies import one_line
from ..states import AccountState
from ..tlsutil import https_context
from ..tokens.status import AccountView
from . import render
from .core import Notice

if TYPE_CHECKING:
    import httpx

USER_AGENT = "relay365-alerts"


class AlertSendError(RelayError):
    pass


class WebhookSender:
    channel = "webhook"

    def __init__(self, cfg: WebhookConfig, hostname: str) -> None:
        self.cfg, self.hostname = cfg, hostname
        self.host = urlsplit(cfg.url.reveal()).hostname or "?"  # what logs may say about the URL
        self.dest = hashlib.sha256(cfg.url.reveal().encode()).hexdigest()[:16]
        import httpx  # only for a webhook (relay365.features)

        self._client: httpx.AsyncClient = httpx.AsyncClient(
            verify=https_context(cfg.ca_file), timeout=cfg.timeout, follow_redirects=False)

    async def send(self, notice: Notice) -> None:
        import httpx

        headers = {"User-Agent": USER_AGENT, **{k: v.reveal() for k, v in self.cfg.headers.items()}}
        try:
            reply = await self._client.post(self.cfg.url.reveal(), headers=headers,
                                            json=render.webhook_body(notice, self.hostname))
        except httpx.HTTPError as exc:  # its text may carry the URL: only the kind is kept
            raise AlertSendError(f"webhook {self.host}: {type(exc).__name__}") from None
        if not 200 <= reply.status_code < 300:
            raise AlertSendError(f"webhook {self.host}: HTTP {reply.status_code}")

    async def aclose(self) -> None:
        await self._client.aclose()


def pick_sender(cfg: AlertsConfig, config: Config, views: Sequence[AccountView]) -> str | None:
    """The account alert mail is sent as (the rule in the module docstring)."""
    by_mailbox = {v.mailbox.lower(): v for v in views}

    def ok(mailbox: str) -> bool:
        v = by_mailbox.get(mailbox.lower())
        return v is not None and v.state is AccountState.OK

    def usable(mailbox: str) -> bool:
        v = by_mailbox.get(mailbox.lower())
        return v is not None and v.state is not AccountState.NEEDS_AUTH and not v.attention

    order = [a.mailbox for a in config.accounts]
    if cfg.from_account and usable(cfg.from_account):
        return next(m for m in order if m.lower() == cfg.from_account.lower())
    return next((m for m in order if ok(m)), None) or next((m for m in order if usable(m)), None)


class MailSender:
    channel = "mail"

    def __init__(self, cfg: AlertsConfig, config: Config, deliverer: Deliverer,
                 views: Callable[[], Sequence[AccountView]], hostname: str) -> None:
        self.cfg, self.config, self.deliverer, self.hostname = cfg, config, deliverer, hostname
        self._views = views  # the token manager's, read at each send
        self.dest = ",".join(sorted(r.lower() for r in cfg.mail_to))

    async def send(self, notice: Notice) -> None:
        sender = pick_sender(self.cfg, self.config, self._views())
        if sender is None:
            raise AlertSendError("mail: no account can send (every one needs the operator)")
        data = render.mail(notice, self.hostname, sender, self.cfg.mail_to)
        try:
            refused = await self.deliverer.deliver(Outgoing(sender, sender, tuple(self.cfg.mail_to),
                                                            BytesMessage(data)))
        except RelayError as exc:  # TokenError / UpstreamError carry no secret
            raise AlertSendError(f"mail as {sender}: {one_line(str(exc), 200)}") from None
        if len(refused) == len(self.cfg.mail_to):
            raise AlertSendError(f"mail as {sender}: every recipient refused: {refused[0].reply}")

    async def aclose(self) -> None:
        return None
