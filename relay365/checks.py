"""`relay365 check --upstream`: one line per account - token, SMTP login, IMAP login, and for
accounts that send via Graph (graph, auto) a Graph token and whether it carries Mail.Send - then one
line per user whose mailbox is opened with another account's token (a shared mailbox): that
account's token logs in to the user's mailbox over IMAP (and POP3 when configured), and a failure
names the Exchange permission that is missing and the PowerShell line that grants it."""

from __future__ import annotations

import time
from typing import Any

from .config import Config
from .delivery import open_session
from .errors import RelayError, TokenError, UpstreamAuthError
from .graph.claims import mail_send
from .replies import for_exception
from .tlsutil import client_context
from .tokens.manager import GRAPH, TokenManager
from .tokens.store import TokenStore


async def _smtp(config: Config, tokens: TokenManager, mailbox: str) -> str:
    try:
        up = await open_session(config.upstream, client_context(config.upstream.ca_file), tokens,
                                mailbox, local_hostname="relay365-check")
    except RelayError as exc:
        return "FAILED " + for_exception(exc)
    await up.close()
    return "ok"


async def _graph(tokens: TokenManager, mailbox: str) -> str:
    """A Graph token, and whether it carries Mail.Send (nothing is sent)."""
    try:
        token = await tokens.get(mailbox, resource=GRAPH)
    except TokenError as exc:
        code = f"AADSTS{exc.code}" if isinstance(exc.code, int) else exc.code
        return f"FAILED token {exc.error} ({code}): {exc.action}"
    return mail_send(token.token.reveal())[1]


async def _imap(config: Config, tokens: TokenManager, mailbox: str) -> str:
    try:
        from .imap.upstream import check_login
    except ImportError:
        return "not checked"
    try:
        return await check_login(config, tokens, mailbox)
    except RelayError as exc:
        return f"FAILED {exc}"


def missing_permission(config: Config, mailbox: str, account: str) -> str:
    """What Exchange needs before `account`'s token opens `mailbox`."""
    acc = config.account(account)
    if acc is not None and acc.flow == "client_credentials":
        who = f"the app's service principal (apps.{acc.app}.client_id)"
        return (f"{who} needs FullAccess on {mailbox}: Add-MailboxPermission -Identity {mailbox} "
                f"-User <service principal object id> -AccessRights FullAccess")
    return (f"{account} needs FullAccess on {mailbox}: Add-MailboxPermission -Identity {mailbox} "
            f"-User {account} -AccessRights FullAccess -AutoMapping $false")


async def _login(config: Config, tokens: TokenManager, proto: str, mailbox: str,
                 account: str) -> str:
    if proto == "imap":
        from .imap.upstream import open_upstream as open_imap
        opened: Any = open_imap
    else:
        from .pop3.upstream import open_upstream as open_pop3
        opened = open_pop3
    try:
        up = await opened(config, tokens, mailbox, account=account)
    except UpstreamAuthError:
        return "FAILED upstream refused the login - " + missing_permission(config, mailbox, account)
    except RelayError as exc:
        return f"FAILED {exc}"
    up.writer.write(b"z1 LOGOUT\r\n" if proto == "imap" else b"QUIT\r\n")
    up.writer.close()
    return "ok"


async def _check_users(config: Config, tokens: TokenManager, only: str | None) -> int:
    """The users whose mailbox another account's token opens, or who send as more addresses;
    returns how many logins failed."""
    failed = 0
    protos = ["imap", *(["pop3"] if config.pop3 is not None else [])]
    for user in config.users:
        account = user.token_account
        shared = account.lower() != user.mailbox.lower()
        if not (shared or user.send_as) or (only and account.lower() != only.lower()):
            continue
        parts = [f"user {user.username}: {user.mailbox} with the token of {account}"]
        for proto in protos if shared else []:
            result = await _login(config, tokens, proto, user.mailbox, account)
            parts.append(f"{proto}: {result}")
            failed += result.startswith("FAILED")
        others = [a for a in ([user.mailbox] if shared else []) + user.send_as if "*" not in a]
        if others:  # Exchange checks SendAs only once a message is sent: say what it needs
            parts.append("smtp: SendAs needed (not checked without sending): " + "; ".join(
                f"Add-RecipientPermission -Identity {a} -Trustee {account} -AccessRights SendAs"
                for a in others))
        print("  ".join(parts))
    return failed


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
        smtp = ("not used (send_via: graph)" if account.send_via == "graph"
                else await _smtp(config, tokens, account.mailbox))
        imap = await _imap(config, tokens, account.mailbox)
        parts += [f"smtp: {smtp}", f"imap: {imap}"]
        if account.send_via != "smtp":
            parts.append(f"graph: {await _graph(tokens, account.mailbox)}")
        failed += any(p.split(": ", 1)[-1].startswith("FAILED") for p in parts[2:])
        print("  ".join(parts))
    failed += await _check_users(config, tokens, only)
    return 1 if failed else 0
