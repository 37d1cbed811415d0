"""AUTH PLAIN and AUTH LOGIN as aiosmtpd hands them over: decode the credentials, or the reply.

The SASL decoding itself is `relay365.sasl` (pure); this only adds aiosmtpd's challenge round
trips (`challenge_auth`) for a mechanism given without an initial response.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
from aiosmtpd.smtp import AuthResult

from .. import replies
from ..localauth import LocalAuth
from ..sasl import Credentials, SaslError, b64decode_strict, decode_plain, decode_text
from ..secret import Secret
from ..states import LoginResult

if TYPE_CHECKING:
    from .protocol import RelaySMTP

log = structlog.get_logger("relay365.smtp")


async def decode_plain_args(server: RelaySMTP, args: list[str]) -> Credentials | AuthResult:
    if len(args) > 1:
        try:
            raw = b64decode_strict(args[1])
        except SaslError:
            return AuthResult(success=False, handled=False, message=replies.BAD_BASE64)
    else:
        challenge = await server.challenge_auth("")
        if not isinstance(challenge, bytes):
            return AuthResult(success=False, handled=True)
        raw = challenge
    try:
        return decode_plain(raw)
    except SaslError as exc:
        if server.state is not None:
            server.state.auth_failures += 1
        log.info("auth_malformed", reason=str(exc))
        return AuthResult(success=False, handled=False, message=replies.SYNTAX_PREFIX + str(exc))


async def decode_login(server: RelaySMTP, args: list[str]) -> tuple[str, Secret] | AuthResult:
    try:
        if len(args) > 1:
            user_raw = b64decode_strict(args[1])
        else:
            challenge = await server.challenge_auth("Username:")
            if not isinstance(challenge, bytes):
                return AuthResult(success=False, handled=True)
            user_raw = challenge
        pw_raw = await server.challenge_auth("Password:")
        if not isinstance(pw_raw, bytes):
            return AuthResult(success=False, handled=True)
        return decode_text(user_raw, "user name"), Secret(decode_text(pw_raw, "password"))
    except SaslError as exc:
        return AuthResult(success=False, handled=False, message=replies.SYNTAX_PREFIX + str(exc))


class AuthHooks:
    """aiosmtpd's `auth_<MECHANISM>` hooks: the check itself is `relay365.localauth`."""

    auth: LocalAuth

    async def auth_PLAIN(self, server: RelaySMTP, args: list[str]) -> AuthResult:
        creds = await decode_plain_args(server, args)
        if isinstance(creds, AuthResult):
            return creds
        return await self._check(server, "PLAIN", creds.username, creds.password)

    async def auth_LOGIN(self, server: RelaySMTP, args: list[str]) -> AuthResult:
        creds = await decode_login(server, args)
        if isinstance(creds, AuthResult):
            return creds
        return await self._check(server, "LOGIN", *creds)

    async def _check(self, server: RelaySMTP, mech: str, username: str,
                     password: Secret) -> AuthResult:
        state = server.state
        assert state is not None
        outcome = await self.auth.login("smtp", state.peer, username, password, mech, state.conn_id)
        if outcome.user is not None:
            u = outcome.user
            state.policy.authenticated(u.username, u.mailbox, u.delivery, u.fallback,
                                       account=u.account, send_as=u.send_as, sender_mode=u.sender)
            return AuthResult(success=True, auth_data=username)
        state.auth_failures += 1
        return AuthResult(success=False, handled=False, message=(
            replies.AUTH_BLOCKED if outcome.result is LoginResult.BLOCKED else replies.AUTH_FAILED))
