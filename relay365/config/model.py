"""The one configuration model: the root `Config`, apps, accounts, the upstream and logging.

Every setting relay365 has is a field of a frozen dataclass here or in `services` (the listener
sections), with its default. The key names are a contract with operators; add keys, never rename
them.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..secret import Secret
from .alerts import AlertsConfig, date_field
from .services import HttpConfig, ImapConfig, LimitsConfig, Pop3Config, SmtpConfig, SpoolConfig, UserConfig
from .units import check_ranges, duration

# Office 365 resource host per cloud, for scopes; and the authority host.
CLOUDS = {
    "global": ("https://login.microsoftonline.com", "outlook.office.com", "outlook.office365.com"),
    "usgov": ("https://login.microsoftonline.us", "outlook.office365.us", "outlook.office365.us"),
    "china": ("https://login.partner.microsoftonline.cn", "partner.outlook.cn", "partner.outlook.cn"),
}
DELEGATED_SCOPES = ("IMAP.AccessAsUser.All", "POP.AccessAsUser.All", "SMTP.Send")
# Mail hosts per cloud: the default upstream when every app is in that cloud and upstream.smtp /
# upstream.imap are not set. Personal Microsoft accounts (tenant: consumers) send via Outlook.com.
CLOUD_MAIL_HOSTS = {
    "global": ("smtp.office365.com", "outlook.office365.com"),
    "usgov": ("smtp.office365.us", "outlook.office365.us"),
    "china": ("smtp.partner.outlook.cn", "partner.outlook.cn"),
    "consumers": ("smtp-mail.outlook.com", "outlook.office365.com"),
}
# Microsoft Graph per cloud: the default upstream.graph.base_url, and the token resource.
CLOUD_GRAPH_HOSTS = {
    "global": "graph.microsoft.com",
    "usgov": "graph.microsoft.us",
    "china": "microsoftgraph.chinacloudapi.cn",
    "consumers": "graph.microsoft.com",
}
GRAPH_DELEGATED_SCOPES = ("Mail.Send", "Mail.ReadWrite")  # Mail.ReadWrite: drafts for large mail


@dataclass(frozen=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"


@dataclass(frozen=True)
class AppConfig:
    client_id: str
    tenant: str = "organizations"
    client_secret: Secret | None = None
    cloud: Literal["global", "usgov", "china"] = "global"
    authority: str | None = None  # default: the cloud's login host
    ca_file: Path | None = None
    timeout: float = duration(30.0)
    # the secret's expiry date (Entra portal, Certificates & secrets): alerts warn ahead of it
    client_secret_expires: datetime.date | None = field(default=None, metadata=date_field())

    @property
    def authority_url(self) -> str:
        base = (self.authority or CLOUDS[self.cloud][0]).rstrip("/")
        return f"{base}/{self.tenant}"

    @property
    def scope_resource(self) -> str:
        return CLOUDS[self.cloud][1]

    @property
    def app_only_scope(self) -> str:
        return f"https://{CLOUDS[self.cloud][2]}/.default"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: Literal["starttls", "implicit"]


@dataclass(frozen=True)
class GraphConfig:
    base_url: str = "https://graph.microsoft.com/v1.0"  # default follows the apps' cloud

    @property
    def resource(self) -> str:
        """The token audience: scheme and host of base_url (`https://graph.microsoft.com`)."""
        scheme, _, rest = self.base_url.partition("://")
        return f"{scheme}://{rest.split('/', 1)[0]}"


@dataclass(frozen=True)
class UpstreamConfig:
    smtp: Endpoint = Endpoint("smtp.office365.com", 587, "starttls")
    imap: Endpoint = Endpoint("outlook.office365.com", 993, "implicit")
    pop3: Endpoint = Endpoint("outlook.office365.com", 995, "implicit")
    ca_file: Path | None = None
    connect_timeout: float = duration(30.0)
    timeout: float = duration(120.0)  # per command; Exchange can take a while to accept a large DATA
    # keep a logged-in SMTP session this long after its client left, for the next client of the
    # same mailbox (saves a TLS handshake and an XOAUTH2 login per message); 0 turns it off
    smtp_pool_idle: float = duration(30.0)
    graph: GraphConfig = GraphConfig()  # Microsoft Graph, for accounts with send_via graph/auto

    def __post_init__(self) -> None:
        check_ranges(self, positive=("connect_timeout", "timeout"), not_negative=("smtp_pool_idle",))


@dataclass(frozen=True)
class AccountConfig:
    mailbox: str
    app: str = "default"
    flow: Literal["refresh_token", "client_credentials"] = "refresh_token"
    refresh_token: Secret | None = None
    scopes: list[str] | None = None  # default: IMAP, POP and SMTP.Send of the app's cloud
    # smtp: Office 365 SMTP; graph: Microsoft Graph sendMail (tenants with SMTP AUTH off);
    # auto: SMTP until Office 365 answers 535 5.7.139 (SMTP AUTH disabled), then Graph
    send_via: Literal["smtp", "graph", "auto"] = "smtp"
    save_to_sent: bool = True  # Graph: leave a copy in the mailbox's Sent Items, as Outlook does


@dataclass(frozen=True)
class Config:
    accounts: list[AccountConfig]
    state_dir: Path = Path("./state")
    log: LogConfig = LogConfig()
    apps: dict[str, AppConfig] = field(default_factory=dict)
    upstream: UpstreamConfig = UpstreamConfig()
    users: list[UserConfig] = field(default_factory=list)
    smtp: SmtpConfig | None = None
    imap: ImapConfig | None = None
    pop3: Pop3Config | None = None
    http: HttpConfig | None = None  # /metrics, /healthz, /readyz
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    drain_timeout: float = duration(30.0)  # seconds sessions may take to finish on SIGTERM
    # state_dir/spool: delivery: spool and fallback: spool
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    token_refresh_margin: float = duration(600.0)  # Exchange HVE refuses tokens with under ~10 min left
    # redeem quiet refresh tokens this often (90-day inactivity limit)
    token_keepalive: float = duration(3 * 86400.0)
    alerts: AlertsConfig | None = None  # tell someone before mail stops (mail_to, webhook)
    source: str = field(default="<memory>", metadata={"internal": True})

    def account(self, mailbox: str) -> AccountConfig | None:
        mailbox = mailbox.lower()
        return next((a for a in self.accounts if a.mailbox.lower() == mailbox), None)

    def user(self, username: str) -> UserConfig | None:
        return next((u for u in self.users if u.username == username), None)

    def scopes_for(self, account: AccountConfig) -> list[str]:
        app = self.apps[account.app]
        if account.flow == "client_credentials":
            return [app.app_only_scope]
        if account.scopes:
            return list(account.scopes)
        return [f"https://{app.scope_resource}/{s}" for s in DELEGATED_SCOPES]

    def graph_scopes_for(self, account: AccountConfig) -> list[str]:
        """Scopes of the Graph access token (another resource than Office 365 mail): the same
        refresh token or client credentials redeem for either."""
        resource = self.upstream.graph.resource
        if account.flow == "client_credentials":
            return [f"{resource}/.default"]
        return [f"{resource}/{s}" for s in GRAPH_DELEGATED_SCOPES]


