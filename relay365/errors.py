"""One root exception, with the client side and the upstream side kept apart.

Every exception that reaches a client boundary is mapped to a protocol reply on purpose (see
`relay365.replies`); none of their text goes on the wire unless a class says it is safe.
"""

from __future__ import annotations

from dataclasses import dataclass


class RelayError(Exception):
    """Root of everything relay365 raises on purpose."""


class ConfigError(RelayError):
    """The configuration is invalid. `problems` are lines like `accounts[0].app: ... (line 23)`."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: " + "; ".join(problems))


class ClientError(RelayError):
    """The local client did something wrong (bad credentials, not allowed)."""


class UpstreamError(RelayError):
    """Office 365 (or the network in between) failed or refused.

    `code`/`text` are the upstream's reply when there was one; `transient` says if retrying may help.
    """

    def __init__(self, message: str, *, code: int | None = None, text: str = "",
                 transient: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.text = text
        self.transient = transient


class UpstreamAuthError(UpstreamError):
    """The upstream refused our XOAUTH2 login."""


@dataclass
class TokenError(RelayError):
    """Getting an access token failed. Built from msal's error dicts right where msal is called.

    `code` is the AADSTS number (or a short word such as `network`), `transient` says if the
    relay should just retry later, `action` tells the operator what to do when it should not.
    """

    account: str
    error: str
    code: int | str | None
    transient: bool
    action: str
    description: str = ""

    def __post_init__(self) -> None:
        super().__init__(self.summary())

    @property
    def needs_auth(self) -> bool:
        return not self.transient and self.error in (
            "invalid_grant", "interaction_required", "consent_required", "login_required",
            "no_refresh_token")

    def summary(self) -> str:
        code = f"AADSTS{self.code}" if isinstance(self.code, int) else (self.code or "?")
        return f"{self.account}: {self.error} ({code}): {self.action}"
