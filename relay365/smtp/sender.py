"""Who sends: the address a message goes out as, and whose token logs in to send it. No I/O.

Theory of operation. Office 365 lets an SMTP login send as its own mailbox, or as an address it
has SendAs on (a shared mailbox, a distribution group); anything else is refused after DATA
(`554 5.2.252 SendAsDenied`), usually long after a printer stopped listening. So the relay decides
at MAIL FROM, from the local login's rights (`SenderRights`):

- allowed senders are the login's `mailbox` and its `send_as` list (addresses, or `*@domain`);
- an allowed sender is kept: it is the envelope sender, and the From header is made to agree
  with it (`rewrite.rewrite_from`: display name kept, Reply-To kept or added);
- any other sender, by `smtp.sender`: `rewrite` -> the mailbox (envelope and From), `refuse` ->
  a 550 naming the allowed addresses, `keep` -> passed on as it is (the operator's choice);
- the login (`Send.login`, an accounts[] mailbox): for a sender that has an accounts[] entry of
  its own (other than the login's mailbox), that entry - it sends as itself and needs no SendAs,
  which is also what an app-only (client_credentials) setup has: one account per address the app
  may use; otherwise the login's `account` (the delegate with SendAs), which defaults to the
  mailbox itself.

Addresses compare case-insensitively (Exchange does); a null sender (`MAIL FROM:<>`) is never an
allowed one.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from .. import replies

SenderMode = str  # rewrite | keep | refuse (the `smtp.sender` literal)


@dataclass(frozen=True)
class SenderRights:
    """What one local login (or unauthenticated network) may send as."""

    mailbox: str
    account: str  # the accounts[] mailbox whose token sends for `mailbox`
    send_as: tuple[str, ...] = ()  # lower-case addresses or `*@domain`
    mode: SenderMode = "rewrite"


@dataclass(frozen=True)
class Send:
    login: str  # the accounts[] mailbox that logs in upstream (AUTH XOAUTH2 user=)
    envelope: str  # MAIL FROM
    from_header: str | None  # the address From must carry; None: leave the message as it is


@dataclass(frozen=True)
class Refuse:
    reply: str


def allowed_senders(rights: SenderRights) -> list[str]:
    """The mailbox first, then send_as, without duplicates (for the 550's text)."""
    out = [rights.mailbox]
    for entry in rights.send_as:
        if entry.lower() not in (a.lower() for a in out):
            out.append(entry)
    return out


def is_allowed(rights: SenderRights, address: str) -> bool:
    address = address.strip().lower()
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return False  # the null sender, or no address at all
    for entry in allowed_senders(rights):
        entry = entry.lower()
        if entry == address or (entry.startswith("*@") and entry[2:] == domain):
            return True
    return False


def who_sends(rights: SenderRights, address: str, own_accounts: Collection[str] = ()) -> str:
    """The accounts[] mailbox that logs in to send as the allowed `address`."""
    address = address.lower()
    if address != rights.mailbox.lower() and address in own_accounts:
        return address
    return rights.account


def decide_sender(rights: SenderRights, address: str,
                  own_accounts: Collection[str] = ()) -> Send | Refuse:
    """MAIL FROM:<address> from a login with `rights`. `own_accounts`: the lower-case mailboxes
    under accounts[] (a sender among them logs in as itself)."""
    if is_allowed(rights, address):
        return Send(who_sends(rights, address, own_accounts), address,
                    None if rights.mode == "keep" else address)
    if rights.mode == "keep":
        return Send(rights.account, address, None)
    if rights.mode == "refuse":
        return Refuse(replies.sender_refused(address, allowed_senders(rights)))
    return Send(rights.account, rights.mailbox, rights.mailbox)
