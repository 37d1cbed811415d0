"""What the spool worker hands a message to, and how it names a failure.

`Deliver` is the worker's view of delivery: one spooled `Entry` in, the refused recipients out (an
exception for a failure of the whole attempt). `spool_deliver` makes one from any
`relay365.delivery.Deliverer`, so the worker never knows whether SMTP or Graph is behind it.
`describe` turns an exception into the one line kept in the envelope and the logs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from ..delivery import Deliverer, Outgoing, Refusal
from ..delivery.message import FileMessage
from ..errors import RelayError, UpstreamError
from ..replies import one_line
from ..tokens.manager import TokenManager
from .entry import Entry

Deliver = Callable[[Entry], Awaitable[Sequence[Refusal] | None]]


def describe(exc: BaseException) -> str:
    """One line for the envelope and the logs; no secrets (TokenError carries none)."""
    if isinstance(exc, UpstreamError) and exc.code is not None:
        return f"{exc.code} {one_line(exc.text, 300)}"
    if isinstance(exc, RelayError):
        return one_line(str(exc), 300)
    return f"internal error: {type(exc).__name__}"


# -- the real thing: a Deliverer of relay365.delivery -----------------------------------------------

def make_token_hold(tokens: TokenManager) -> Callable[[str], bool]:
    """`held(mailbox)` for the worker: True while the account's token state is needs-auth."""
    return tokens.needs_auth


def spool_deliver(deliverer: Deliverer) -> Deliver:
    """The worker's `deliver(entry)`: the message read from the spool, handed to `deliverer`."""
    async def deliver(entry: Entry) -> tuple[Refusal, ...]:
        message = await asyncio.to_thread(FileMessage, entry.message_path)  # raises if deleted
        return await deliverer.deliver(Outgoing(entry.mailbox, entry.mail_from, entry.rcpts,
                                                message, entry.mail_options))

    return deliver
