"""The IMAP side of relay365: legacy `LOGIN` in, XOAUTH2 to Office 365 out, then a byte splice.

Architecture
------------
A client connection lives in two phases.

Before login, the sans-IO core owns the protocol. `parse` cuts the client's bytes into commands
(lines and literals, within fixed limits) and reads their arguments; `core.ImapPreauth` is the
state machine that answers CAPABILITY, NOOP, ID, LOGOUT and STARTTLS itself and turns LOGIN or
AUTHENTICATE PLAIN into one `Authenticate` effect. Neither imports asyncio, sockets, a clock or a
logger, so every path is tested as a transcript, whole and byte by byte.

`server` is the asyncio adapter: it feeds bytes to the core and carries out its effects (write,
TLS handshake, check the credentials, close). For `Authenticate` it checks the local user, logs in
upstream with XOAUTH2 (`upstream`) and reports back with `login_succeeded` or `login_failed`.

After login the relay stops understanding IMAP: the adapter forwards what the client pipelined
(`ImapPreauth.take_buffered`) and `splice` copies bytes both ways with back-pressure until one side
closes.
"""

from .core import (
    Authenticate,
    Close,
    Effect,
    ImapPreauth,
    ImapUsageError,
    LoginFailure,
    SendToClient,
    StartSplice,
    StartTLS,
    State,
)

__all__ = [
    "Authenticate", "Close", "Effect", "ImapPreauth", "ImapUsageError", "LoginFailure",
    "SendToClient", "StartSplice", "StartTLS", "State",
]
