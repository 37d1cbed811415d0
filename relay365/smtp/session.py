"""What relay365 keeps per SMTP connection (aiosmtpd's own `session` object is its business)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .policy import SmtpPolicy

if TYPE_CHECKING:
    from ..delivery import UpstreamSMTP


class Session:
    """Ours, per connection (aiosmtpd's own `session` object is its business)."""

    __slots__ = ("auth_failures", "bytes", "conn_id", "peer", "policy", "reused", "started",
                 "upstream")

    def __init__(self, conn_id: int, peer: str, policy: SmtpPolicy) -> None:
        self.conn_id, self.peer, self.policy = conn_id, peer, policy
        self.started = time.monotonic()
        self.upstream: UpstreamSMTP | None = None
        self.reused = False  # the upstream session came from the pool
        self.auth_failures = 0
        self.bytes = 0
