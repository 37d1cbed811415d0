"""What the token manager knows about each account, as plain data: the cached access token, the
mutable per-account status, and the read-only view of it the rest of the relay may see."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from ..errors import TokenError
from ..secret import Secret
from ..states import AccountState


@dataclass(frozen=True)
class AccessToken:
    token: Secret
    expires_at: float
    from_cache: bool = False


@dataclass(frozen=True)
class AccountView:
    """What the rest of the relay may know about an account's tokens: no secrets, a copy."""

    mailbox: str
    flow: str
    state: AccountState
    code: str | None  # AADSTSnnnnn (or a word such as `network`) of the last failure
    error: str | None
    action: str | None  # what the operator should do about it
    expires_at: float | None
    last_refresh: float | None
    last_use: float | None
    send_via: str = "smtp"  # the config's accounts[].send_via
    sending_via: str = "smtp"  # the way messages go now (auto: graph once SMTP AUTH was refused)
    graph_since: float | None = None  # auto: when Office 365 said SMTP AUTH is off
    # the last failure is one the operator must fix (not transient): re-auth, an expired secret
    attention: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"mailbox": self.mailbox, "flow": self.flow, "state": str(self.state),
                "code": self.code, "error": self.error, "action": self.action,
                "expires_at": self.expires_at, "last_refresh": self.last_refresh,
                "last_use": self.last_use, "send_via": self.send_via,
                "sending_via": self.sending_via, "graph_since": self.graph_since}


@dataclass
class AccountStatus:
    mailbox: str
    flow: str
    state: AccountState = AccountState.UNKNOWN
    error: TokenError | None = None
    expires_at: float | None = None
    last_refresh: float | None = None
    last_use: float | None = None
    failures: int = 0
    hold_until: float = 0.0
    rt_seen: str | None = field(default=None, repr=False)  # fingerprint of the RT that failed
    send_via: str = "smtp"
    graph_since: float | None = None  # send_via auto, switched to Graph at this time
    graph_reason: str | None = None  # the SMTP reply that made it switch

    @property
    def sending_via(self) -> str:
        if self.send_via == "graph" or (self.send_via == "auto" and self.graph_since is not None):
            return "graph"
        return "smtp"


def view_of(st: AccountStatus) -> AccountView:
    err = st.error
    return AccountView(
        st.mailbox, st.flow, st.state,
        code=(f"AADSTS{err.code}" if isinstance(err.code, int) else err.code) if err else None,
        error=err.error if err else None, action=err.action if err else None,
        expires_at=st.expires_at, last_refresh=st.last_refresh, last_use=st.last_use,
        send_via=st.send_via, sending_via=st.sending_via, graph_since=st.graph_since,
        attention=err is not None and not err.transient)


def fingerprint(secret: Secret | None) -> str | None:
    return hashlib.sha256(secret.reveal().encode()).hexdigest()[:16] if secret else None
