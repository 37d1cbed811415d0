"""What the local SMTP client is told when something fails - chosen on purpose, never stack text.

4xx where a retry can help (the device or its queue tries again), 5xx only where it cannot. An
upstream reply is passed through with its own code and text (Exchange's enhanced status codes are
the most useful diagnostics a printer's log can show), flattened to one line.
"""

from __future__ import annotations

from .errors import TokenError, UpstreamAuthError, UpstreamError

INTERNAL_ERROR = "451 4.3.0 Internal error in the relay; try again later"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
AUTH_BLOCKED = "454 4.7.0 Too many failed logins from this client or for this user; try again later"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections; try again later"
SESSION_TIME_LIMIT = "421 4.4.2 Session time limit reached; closing"
AUTH_TLS_REQUIRED = "538 5.7.11 Encryption required for requested authentication mechanism"
UNEXPECTED_REPLY = "451 4.4.0 Unexpected reply from Office 365; try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down"
# the transaction, answered here (direct mode passes on Office 365's own replies instead)
SENDER_OK = "250 2.1.0 Sender OK"
RECIPIENT_OK = "250 2.1.5 Recipient OK"
QUEUED_AS = "250 2.0.0 OK queued as"  # + the spool id
GRAPH_ACCEPTED = "250 2.0.0 OK sent through Microsoft Graph"  # Graph answers 202, no text
RESET_OK = "250 2.0.0 OK"
NESTED_MAIL = "503 5.5.1 Error: nested MAIL command"
NEED_MAIL = "503 5.5.1 Error: need MAIL command"
NEED_RCPT = "503 5.5.1 Error: need RCPT command"
CONNECTION_LOST_RCPT = "451 4.4.1 Office 365 connection was lost; start the transaction again"
CONNECTION_LOST_DATA = "451 4.4.1 Office 365 connection was lost; try again"
BAD_BASE64 = "501 5.5.2 Cannot decode base64"
SYNTAX_PREFIX = "501 5.5.2 "  # + a SASL decoder's reason (never the credentials)
# DATA that cannot be taken; RFC 5321 s.4.5.3.1.6 (line length) and s.4.5.3.1.10 (size)
LINE_TOO_LONG = "500 5.5.2 Line too long (see RFC5321 4.5.3.1.6)"
TOO_MUCH_DATA = "552 5.3.4 Error: Too much mail data"
# the spool could not take the message; RFC 3463 s.3.4: 4.3.1 "mail system full"
SPOOL_FULL = "452 4.3.1 Insufficient system storage"
# Exchange Online's own limit and wording for a header block over 256 KB
HEADERS_TOO_BIG = "552 5.3.4 Message header size exceeds limit"
SPOOL_ERROR = "451 4.3.0 The relay cannot queue the message right now; try again later"


def sender_refused(address: str, allowed: list[str]) -> str:
    """`smtp.sender: refuse`: 5.7.60 is Exchange's own "not allowed to send as this sender"."""
    names = ", ".join(allowed)
    if len(names) > 300:
        names = names[:300].rsplit(", ", 1)[0] + ", ..."
    return f"550 5.7.60 Not allowed to send as <{one_line(address, 200)}>; allowed: {names}"


def one_line(text: str, limit: int = 400) -> str:
    flat = " ".join(text.replace("\r", " ").split())
    return flat[:limit]


def upstream_reply(code: int, text: str) -> str:
    """An upstream SMTP reply, passed on. Codes outside 2xx-5xx become a 451."""
    if not 200 <= code <= 599:
        return UNEXPECTED_REPLY
    return f"{code} {one_line(text) or 'No text'}"


def for_exception(exc: BaseException) -> str:
    """The reply for a failure that ends the current transaction."""
    if isinstance(exc, TokenError):
        if exc.transient:
            return "451 4.7.0 Office 365 sign-in is temporarily unavailable; try again later"
        return ("451 4.7.0 The relay's Office 365 account needs attention from its administrator; "
                "try again later")
    if isinstance(exc, UpstreamAuthError):
        return "451 4.7.0 Office 365 refused the relay's login" + (
            f": {one_line(exc.text, 200)}" if exc.text else "") + "; try again later"
    if isinstance(exc, UpstreamError):
        if exc.code is not None:  # a failure passed on as 2xx/3xx would tell the client it worked
            return upstream_reply(exc.code, exc.text) if 400 <= exc.code <= 599 else UNEXPECTED_REPLY
        return "451 4.4.1 Office 365 cannot be reached right now; try again later"
    return INTERNAL_ERROR
