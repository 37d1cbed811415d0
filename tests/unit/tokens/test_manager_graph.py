"""One access token per (account, resource): Office 365 mail and Microsoft Graph, same refresh token."""

from __future__ import annotations

import asyncio

from relay365.tokens.manager import GRAPH, TokenManager
from relay365.tokens.store import TokenStore

from .test_manager import MAILBOX, config, idp  # noqa: F401  (the fixture)

GRAPH_SCOPES = {"https://graph.microsoft.com/Mail.Send", "https://graph.microsoft.com/Mail.ReadWrite"}


def test_graph_token_is_its_own_resource_from_the_same_refresh_token(tmp_path, idp, certs, clock):  # noqa: F811
    cfg = config(tmp_path, idp, certs, idp.issue_refresh_token(MAILBOX))
    manager = TokenManager(cfg, TokenStore(cfg.state_dir), clock=clock)

    async def run() -> None:
        mail = await manager.get(MAILBOX)
        graph = await manager.get(MAILBOX, resource=GRAPH)
        assert graph.token != mail.token
        assert idp.token_scopes(graph.token.reveal()) == GRAPH_SCOPES
        assert "https://outlook.office.com/SMTP.Send" in idp.token_scopes(mail.token.reveal())
        # each is cached on its own
        assert (await manager.get(MAILBOX)).from_cache
        assert (await manager.get(MAILBOX, resource=GRAPH)).from_cache
        assert idp.grants["refresh_token"] == 2
        # a rejected Graph token is redeemed again, with the rotated refresh token; mail stays
        again = await manager.get(MAILBOX, resource=GRAPH, rejected=graph.token)
        assert again.token != graph.token and not again.from_cache
        assert (await manager.get(MAILBOX)).token == mail.token

    asyncio.run(run())


def test_concurrent_graph_gets_are_one_flight(tmp_path, idp, certs, clock):  # noqa: F811
    cfg = config(tmp_path, idp, certs, idp.issue_refresh_token(MAILBOX))
    manager = TokenManager(cfg, TokenStore(cfg.state_dir), clock=clock)

    async def run() -> None:
        tokens = await asyncio.gather(*(manager.get(MAILBOX, resource=GRAPH) for _ in range(8)))
        assert len({t.token.reveal() for t in tokens}) == 1
        assert idp.grants["refresh_token"] == 1

    asyncio.run(run())
