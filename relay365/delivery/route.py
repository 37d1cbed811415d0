"""Which way an account's messages go: `accounts[].send_via` behind the one `Deliverer` interface.

`RoutedDeliverer` is what the spool worker delivers with: `smtp` accounts go by `SmtpDeliverer`,
`graph` accounts by `GraphDeliverer`, and `auto` accounts by SMTP until Office 365 answers that
SMTP AUTH is disabled for the mailbox or the tenant (`535 5.7.139`); then that message and every
later one go through Graph. The switch is kept in the account's state (`TokenManager`,
`accounts.json`, shown by `relay365 accounts`) and logged once (`send_via_switched`). The live SMTP
path (`relay365.smtp.outbound`) asks the same two questions of the same token manager.
"""

from __future__ import annotations

from ..errors import RelayError, UpstreamError
from ..tokens.manager import TokenManager
from .deliver import Deliverer, Outgoing, Refusal

SMTP_AUTH_DISABLED = "5.7.139"  # "SmtpClientAuthentication is disabled for the Tenant/Mailbox"


def smtp_auth_disabled(code: int | None, text: str) -> bool:
    """Is this Office 365's answer that SMTP AUTH is switched off (for any stage of a session)?"""
    return code == 535 and SMTP_AUTH_DISABLED in text


def auth_disabled_error(exc: BaseException) -> bool:
    return isinstance(exc, UpstreamError) and smtp_auth_disabled(exc.code, exc.text)


class RoutedDeliverer:
    def __init__(self, tokens: TokenManager, smtp: Deliverer, graph: Deliverer) -> None:
        self.tokens, self.smtp, self.graph = tokens, smtp, graph

    async def deliver(self, message: Outgoing) -> tuple[Refusal, ...]:
        if self.tokens.sends_via_graph(message.mailbox):
            return await self.graph.deliver(message)
        try:
            refusals = await self.smtp.deliver(message)
        except RelayError as exc:
            if not (auth_disabled_error(exc) and await self._switch(message.mailbox, exc)):
                raise
            return await self.graph.deliver(message)
        every_one_refused = refusals and len(refusals) == len(message.rcpts) and all(
            smtp_auth_disabled(r.code, r.text) for r in refusals)
        if every_one_refused and await self._switch(message.mailbox, refusals[0].reply):
            return await self.graph.deliver(message)
        return refusals

    async def _switch(self, mailbox: str, why: BaseException | str) -> bool:
        """True when the mailbox now sends via Graph (switched by this or an earlier call)."""
        if not self.tokens.may_switch_to_graph(mailbox):
            return False
        reason = why if isinstance(why, str) else (
            f"{why.code} {why.text}" if isinstance(why, UpstreamError) else str(why))
        await self.tokens.switch_to_graph(mailbox, reason[:300])
        return self.tokens.sends_via_graph(mailbox)
