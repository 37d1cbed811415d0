"""Graph's answers as the relay's errors. Pure: status, headers and body in, an `UpstreamError` out.

What the device should hear (issue 13): 429/503/504 and timeouts are transient (the spool waits
`Retry-After`); 401 means the token must be refreshed once and the request retried; 403
(`ErrorAccessDenied`, `ErrorSendAsDenied`) is permanent with the operator's action in the log; 413
and `ErrorMessageSizeExceeded` are `552 5.3.4`; other 4xx are permanent, other 5xx transient.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from ..errors import UpstreamError

TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
DEFAULT_RETRY_AFTER = 30.0  # seconds, when a 429/503 carries no usable Retry-After
MAX_RETRY_AFTER = 3600.0
ACTIONS = {
    "ErrorAccessDenied": "grant the app the Mail.Send permission (admin consent), and for app-only "
                         "check the Exchange RBAC for Applications scope covers this mailbox",
    "ErrorSendAsDenied": "give the mailbox Send As rights for the From address, or send as the "
                         "mailbox itself",
    "InvalidAuthenticationToken": "run `relay365 auth` for this account (the Graph token was refused)",
    "ErrorInvalidRecipients": "check the recipient addresses",
}


class GraphError(UpstreamError):
    """A refusal or failure from Microsoft Graph.

    `graph_code` is Graph's `error.code`, `request_id` its request-id header (quote it to Microsoft),
    `retry_after` the seconds to wait (transient errors), `action` what the operator should do.
    """

    def __init__(self, message: str, *, code: int, text: str, transient: bool, status: int,
                 graph_code: str = "", request_id: str = "", retry_after: float | None = None,
                 action: str = "") -> None:
        super().__init__(message, code=code, text=text, transient=transient)
        self.status = status
        self.graph_code = graph_code
        self.request_id = request_id
        self.retry_after = retry_after
        self.action = action

    @property
    def needs_new_token(self) -> bool:
        return self.status == 401


def retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (Graph sends delta-seconds), clamped; None when absent or unusable."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if seconds != seconds or seconds < 0:  # NaN or negative
        return None
    return min(seconds, MAX_RETRY_AFTER)


def graph_code(body: bytes) -> tuple[str, str]:
    """`(error.code, error.message)` from Graph's error JSON; empty strings when it is not one."""
    try:
        error = json.loads(body.decode("utf-8"))["error"]
        return str(error.get("code", "")), str(error.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return "", ""


def from_response(status: int, headers: Mapping[str, str], body: bytes) -> GraphError:
    """The error for a non-2xx Graph answer. `headers` keys are lower-case."""
    code, message = graph_code(body)
    request_id = headers.get("request-id", "")
    wait = retry_after(headers.get("retry-after"))
    where = f"Graph {status} {code or 'error'}" + (f" (request-id {request_id})" if request_id else "")
    if status == 413 or code == "ErrorMessageSizeExceeded":
        smtp, text, transient = 552, "5.3.4 Message too big for Microsoft Graph", False
    elif status in TRANSIENT_STATUSES:
        smtp, text, transient = 451, "4.4.2 Microsoft Graph is busy or unavailable, try again later", True
        if status in (429, 503) and wait is None:
            wait = DEFAULT_RETRY_AFTER
    elif status == 401:
        smtp, text, transient = 451, "4.7.0 Microsoft Graph refused the access token", True
    elif code == "ErrorInvalidRecipients":
        smtp, text, transient = 550, "5.1.1 Microsoft Graph refused a recipient address", False
    elif status == 403:
        smtp, text, transient = 550, "5.7.1 Microsoft Graph refused to send as this mailbox", False
    elif status >= 500:
        smtp, text, transient = 451, "4.4.0 Microsoft Graph failed, try again later", True
    else:
        smtp, text, transient = 554, f"5.6.0 Microsoft Graph refused the message ({code or status})", False
    action = ACTIONS.get(code, "")
    return GraphError(f"{where}: {message}".rstrip(": "), code=smtp, text=text, transient=transient,
                      status=status, graph_code=code, request_id=request_id, retry_after=wait,
                      action=action)


def timeout(what: str) -> GraphError:
    """No answer in time: transient, as Exchange may still be working on it."""
    return GraphError(f"Graph {what}: timed out", code=451, text="4.4.1 Microsoft Graph timed out",
                      transient=True, status=0)


def unreachable(what: str, exc: Exception) -> GraphError:
    """No connection (DNS, refused, TLS, proxy): transient."""
    return GraphError(f"Graph {what}: {type(exc).__name__}: {exc}", code=451,
                      text="4.4.1 Cannot reach Microsoft Graph, try again later",
                      transient=True, status=0)


def nonsense(what: str, status: int, request_id: str = "") -> GraphError:
    """A 2xx whose body is not the JSON object it should be: transient."""
    return GraphError(f"Graph {what}: an answer that is not a JSON object", code=451,
                      text="4.4.0 Microsoft Graph answered nonsense, try again later",
                      transient=True, status=status, request_id=request_id)
