"""The `alerts:` section: who is told, and when, before mail stops.

Durations take `30s`, `15m`, `1h`, `5d` or seconds. Webhook headers are secrets (an ntfy or Slack
token lives there): they are sent, never logged or put into an alert.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

from ..secret import Secret
from .loader import field_parser
from .units import check_ranges, duration


def parse_date(text: str) -> datetime.date:
    """`2027-05-01` (ISO 8601, as the Entra portal's "Expires" column shows it)."""
    try:
        return datetime.date.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a date: {text!r} (example: 2027-05-01)") from None


def date_field() -> dict[str, object]:
    return field_parser(parse_date)


@dataclass(frozen=True)
class WebhookConfig:
    # an incoming webhook: Teams, Slack, ntfy, or your own; a secret (Slack's URL is the credential)
    url: Secret
    headers: dict[str, Secret] = field(default_factory=dict)  # e.g. Authorization: Bearer ...
    ca_file: Path | None = None  # a private CA for the webhook's certificate; default: the system's
    timeout: float = duration(10.0)

    def __post_init__(self) -> None:
        check_ranges(self, positive=("timeout",))


@dataclass(frozen=True)
class AlertsConfig:
    mail_to: list[str] = field(default_factory=list)  # sent through the relay, to Office 365
    # the account alert mail is sent as; default (or while it needs re-auth): the first healthy one
    from_account: str | None = None
    webhook: WebhookConfig | None = None
    refresh_token_stale_days: float = 14.0  # no successful redemption for this long: alert
    secret_warn_days: list[int] = field(default_factory=lambda: [30, 7, 1])  # before client_secret_expires
    spool_oldest_after: float = duration(3600.0)  # the spool's oldest message older than this: alert
    max_per_hour: int = 20  # per channel; more wait for the next hour (none are dropped)
    interval: float = duration(60.0)  # how often conditions are looked at

    def __post_init__(self) -> None:
        check_ranges(self, positive=("refresh_token_stale_days", "spool_oldest_after", "interval"),
                     at_least_one=("max_per_hour",))
        for days in self.secret_warn_days:
            if days < 1:
                raise ValueError(f"secret_warn_days: each must be at least 1 (got {days})")
