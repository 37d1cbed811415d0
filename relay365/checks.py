"""`relay365 check --upstream`: one line per account - token, SMTP login, IMAP login."""

from __future__ import annotations

import time

from .config import Config
from .delivery import open_session
from .errors import RelayError, TokenError
from .replies import for_exception
from .tlsutil import client_context
from .tokens.manager import TokenManager
from .tokens.store import TokenStore


async def _smtp(config: Config, tokens: TokenManager, mailbox: str) -> str:
    try:
        up = await open_session(config.upstream, client_context(config.upstream.ca_file), tokens,
                                mailbox, local_hostname="relay365-check")
    except RelayError as exc:
        return "FAILED " + for_exception(exc)
    await up.close()
    return "ok"


async def _imap(config: Config, tokens: TokenManager, mailbox: str) -> str:
    try:
        from .imap.upstream import check_login
    except ImportError:
        return "not checked"
    try:
        return await check_login(config, tokens, mailbox)
    except RelayError as exc:
        return f"FAILED {exc}"


async def check_upstream(config: Config, only: str | None = None) -> int:
    tokens = TokenManager(config, TokenStore(config.state_dir), retry_delays=())
    failed = 0
    for account in config.accounts:
        if only and account.mailbox.lower() != only.lower():
            continue
        parts = [account.mailbox]
        try:
            token = await tokens.get(account.mailbox)
        except TokenError as exc:
            code = f"AADSTS{exc.code}" if isinstance(exc.code, int) else exc.code
            print(f"{account.mailbox}  token: FAILED {exc.error} ({code}): {exc.action}")
            failed += 1
            continue
        parts.append(f"token: ok (expires in {int((token.expires_at - time.time()) / 60)} min)")
        smtp = await _smtp(config, tokens, account.mailbox)
        imap = await _imap(config, tokens, account.mailbox)
        parts += [f"smtp: {smtp}", f"imap: {imap}"]
        failed += smtp.startswith("FAILED") or imap.startswith("FAILED")
        print("  ".join(parts))
    return 1 if failed else 0
