"""The POP3 side of relay365: legacy USER/PASS or AUTH PLAIN in, XOAUTH2 to Office 365 out.

Built like the IMAP side. Before login the sans-IO core (`core.Pop3Preauth`) owns the protocol:
greeting, CAPA, USER/PASS, AUTH PLAIN, STLS, QUIT, with RFC 2449/3206 response codes. `server` is
the asyncio adapter that checks local users, logs in upstream (`upstream`: `AUTH XOAUTH2`, the
token on its own line as Exchange wants it on POP3) and then splices bytes both ways; after login
the relay no longer parses POP3, so RETR, TOP, UIDL, DELE and RSET reach Office 365 untouched.
"""

from .core import (
                   Authenticate,
                   Close,
                   Effect,
                   LoginFailure,
                   Pop3Preauth,
                   Pop3UsageError,
                   SendToClient,
                   StartSplice,
                   StartTLS,
                   State,
)

__all__ = [
    "Authenticate", "Close", "Effect", "LoginFailure", "Pop3Preauth", "Pop3UsageError",
    "SendToClient", "StartSplice", "StartTLS", "State",
]
