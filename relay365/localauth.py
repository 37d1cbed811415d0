"""Local logins, the same for SMTP and IMAP: password check, throttling, one log line, metrics.

`LocalAuth.login()` answers `ok` (with the user), `failed` or `blocked`. A failure is logged once as
`auth_failed` with `peer` and `user` - the line to point fail2ban at - and answered only after the
throttle's growing delay; a block is logged as `auth_blocked` when it begins.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import structlog

from . import metrics
from .config import Config, UserConfig
from .passwords import Verifier
from .secret import Secret
from .states import LoginResult
from .throttle import AuthThrottle, ThrottlePolicy

log = structlog.get_logger("relay365.auth")


@dataclass(frozen=True)
class LoginOutcome:
    result: LoginResult
    user: UserConfig | None = None


class LocalAuth:
    def __init__(self, config: Config) -> None:
        self.throttle = AuthThrottle()
        self.verifier = Verifier({})
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Also on reload: the verifier keeps its memory of verified logins (a changed hash no
        longer matches it), so a reload does not make every client pay an scrypt at once."""
        self.config = config
        lim = config.limits
        self.verifier.configure({u.username: u.password_hash for u in config.users})
        self.throttle.policy = ThrottlePolicy(lim.auth_failure_delay, lim.auth_max_delay,
                                              lim.auth_block_after, lim.auth_block_seconds,
                                              lim.auth_window)

    async def login(self, proto: str, peer: str, username: str, password: Secret, mechanism: str,
                    conn: int) -> LoginOutcome:
        now = time.monotonic()
        verdict = self.throttle.check(peer, username, now)
        if verdict.blocked:
            metrics.AUTH_FAILURES.labels(proto, f"blocked_{verdict.reason}").inc()
            log.warning("auth_failed", proto=proto, conn=conn, peer=peer, user=username[:64],
                        mechanism=mechanism, reason=f"blocked_{verdict.reason}")
            return LoginOutcome(LoginResult.BLOCKED)
        user = self.config.user(username)
        ok = await self.verifier.verify(username, password)  # unknown users cost the same
        if user is not None and ok:
            self.throttle.succeeded(peer, username)
            log.info("auth_ok", proto=proto, conn=conn, peer=peer, user=username, mechanism=mechanism)
            return LoginOutcome(LoginResult.OK, user)
        reason = "unknown_user" if user is None else "bad_password"
        metrics.AUTH_FAILURES.labels(proto, reason).inc()
        verdict = self.throttle.failed(peer, username, time.monotonic())
        log.warning("auth_failed", proto=proto, conn=conn, peer=peer, user=username[:64],
                    mechanism=mechanism, reason=reason)
        if verdict.blocked:
            log.warning("auth_blocked", proto=proto, peer=peer, user=username[:64],
                        by=verdict.reason, seconds=self.throttle.policy.block_seconds)
        await asyncio.sleep(verdict.delay)
        return LoginOutcome(LoginResult.FAILED)
