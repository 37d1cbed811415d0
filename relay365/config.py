"""The one configuration model.

Every setting relay365 has is a field here, with its default. `load_config(path)` reads the YAML
file (see `relay365.confload` for the mechanics and error format) and then checks what no single field
can: that names refer to things that exist, that TLS settings come with certificates, that nothing
makes an open relay. The key names are a contract with operators; add keys, never rename them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .confload import Loader, field_parser
from .errors import ConfigError
from .secret import Secret
from .spool import SpoolConfig

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

_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024**2, "MB": 1024**2,
          "MIB": 1024**2, "G": 1024**3, "GB": 1024**3, "GIB": 1024**3}


def _check_ranges(obj, positive: tuple[str, ...] = (), at_least_one: tuple[str, ...] = (),
                  not_negative: tuple[str, ...] = ()) -> None:
    """A dataclass's own range check; the loader reports the ValueError with the section's line."""
    for name in positive:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            raise ValueError(f"{name}: must be more than 0 (got {value})")
    for name in at_least_one:
        if getattr(obj, name) < 1:
            raise ValueError(f"{name}: must be at least 1 (got {getattr(obj, name)})")
    for name in not_negative:
        if getattr(obj, name) < 0:
            raise ValueError(f"{name}: must not be negative (got {getattr(obj, name)})")


def parse_size(text: str) -> int:
    """`35MB` -> bytes. Units are binary (Exchange's 35 MB limit is 36,700,160 bytes)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 35MB, 512KB, 1048576)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


@dataclass(frozen=True)
class ListenAddr:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(text: str) -> ListenAddr:
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]*):(\d+)", text.strip())
    if not m:
        raise ValueError(f"not a listen address: {text!r} (examples: 0.0.0.0:2525, [::1]:1143)")
    host = m.group(1) or m.group(3) or "0.0.0.0"
    port = int(m.group(2) or m.group(4))
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    return ListenAddr(host, port)


def parse_network(text: str):
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"not an IP network: {text!r} (examples: 192.168.10.0/24, 10.0.0.5)") from None


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
    timeout: float = 30.0

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
class UpstreamConfig:
    smtp: Endpoint = Endpoint("smtp.office365.com", 587, "starttls")
    imap: Endpoint = Endpoint("outlook.office365.com", 993, "implicit")
    ca_file: Path | None = None
    connect_timeout: float = 30.0
    timeout: float = 120.0  # per command; Exchange can take a while to accept a large DATA
    # keep a logged-in SMTP session this long after its client left, for the next client of the
    # same mailbox (saves a TLS handshake and an XOAUTH2 login per message); 0 turns it off
    smtp_pool_idle: float = 30.0

    def __post_init__(self) -> None:
        _check_ranges(self, positive=("connect_timeout", "timeout"), not_negative=("smtp_pool_idle",))


@dataclass(frozen=True)
class AccountConfig:
    mailbox: str
    app: str = "default"
    flow: Literal["refresh_token", "client_credentials"] = "refresh_token"
    refresh_token: Secret | None = None
    scopes: list[str] | None = None  # default: IMAP, POP and SMTP.Send of the app's cloud


@dataclass(frozen=True)
class UserConfig:
    username: str
    password_hash: Secret
    mailbox: str
    # direct: the client hears Office 365's own answer; spool: 250 once on disk, delivered later
    delivery: Literal["direct", "spool"] = "direct"
    fallback: Literal["none", "spool"] = "none"  # direct only: spool instead of answering 4xx


@dataclass(frozen=True)
class UnauthenticatedNet:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network = field(metadata=field_parser(parse_network))
    mailbox: str
    # devices that cannot authenticate rarely handle a 4xx well (a printer drops the scan): spool
    delivery: Literal["direct", "spool"] = "spool"
    fallback: Literal["none", "spool"] = "none"


@dataclass(frozen=True)
class SmtpConfig:
    listen: list[ListenAddr] = field(default_factory=lambda: [ListenAddr("127.0.0.1", 2525)],
                                     metadata=field_parser(parse_listen))
    tls: Literal["none", "starttls", "implicit"] = "none"
    cert_file: Path | None = None
    key_file: Path | None = None
    proxy_protocol: bool = False  # expect a PROXY v1/v2 header (HAProxy send-proxy[-v2])
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(
        default_factory=list, metadata=field_parser(parse_network))
    allow_plaintext_auth: bool = True
    max_message_size: int = field(default=35 * 1024**2, metadata=field_parser(parse_size))
    unauthenticated: list[UnauthenticatedNet] = field(default_factory=list)
    sender: Literal["rewrite", "keep"] = "rewrite"
    hostname: str = "relay365"
    timeout: float = 300.0  # RFC 5321 s.4.5.3.2.7: a server SHOULD wait at least 5 minutes
    max_session_time: float = 3600.0  # a whole session, however busy; then 421 and close

    def __post_init__(self) -> None:
        _check_ranges(self, positive=("max_message_size", "timeout", "max_session_time"))


@dataclass(frozen=True)
class ImapConfig:
    listen: list[ListenAddr] = field(default_factory=lambda: [ListenAddr("127.0.0.1", 1143)],
                                     metadata=field_parser(parse_listen))
    tls: Literal["none", "starttls", "implicit"] = "none"
    cert_file: Path | None = None
    key_file: Path | None = None
    proxy_protocol: bool = False  # expect a PROXY v1/v2 header (HAProxy send-proxy[-v2])
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(
        default_factory=list, metadata=field_parser(parse_network))
    allow_plaintext_auth: bool = True
    max_sessions_per_mailbox: int | None = None
    login_timeout: float = 60.0
    idle_timeout: float = 1900.0  # RFC 9051 s.5.4: at least 30 minutes; IDLE clients re-issue at 29
    max_session_time: float | None = None  # seconds; None: IDLE clients may stay for days

    def __post_init__(self) -> None:
        _check_ranges(self, positive=("login_timeout", "idle_timeout", "max_session_time"),
                      at_least_one=() if self.max_sessions_per_mailbox is None
                      else ("max_sessions_per_mailbox",))


@dataclass(frozen=True)
class LimitsConfig:
    """Protection from the device that goes haywire and the host that guesses passwords."""

    max_connections: int = 1000  # per protocol
    max_connections_per_ip: int = 100
    auth_failure_delay: float = 1.0  # first failed login waits this long; doubles per failure
    auth_max_delay: float = 10.0
    auth_block_after: int = 10  # failures within auth_window, per client IP and per username
    auth_block_seconds: float = 900.0
    auth_window: float = 900.0

    def __post_init__(self) -> None:
        _check_ranges(self, at_least_one=("max_connections", "max_connections_per_ip",
                                          "auth_block_after"),
                      positive=("auth_block_seconds", "auth_window"),
                      not_negative=("auth_failure_delay", "auth_max_delay"))


@dataclass(frozen=True)
class HttpConfig:
    listen: ListenAddr = field(default=ListenAddr("127.0.0.1", 9465), metadata=field_parser(parse_listen))


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
    http: HttpConfig | None = None  # /metrics, /healthz, /readyz
    limits: LimitsConfig = LimitsConfig()
    drain_timeout: float = 30.0  # seconds sessions may take to finish on SIGTERM
    spool: SpoolConfig = SpoolConfig()  # state_dir/spool: delivery: spool and fallback: spool
    token_refresh_margin: float = 600.0  # Exchange HVE refuses tokens with under ~10 min left
    token_keepalive: float = 3 * 86400.0  # redeem quiet refresh tokens this often (90-day inactivity limit)
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


def load_config(path: str | Path, text: str | None = None) -> Config:
    """Read and check a config file; raises ConfigError listing every problem with its line."""
    path = Path(path)
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"cannot read: {exc.strerror}"], str(path)) from None
        except UnicodeDecodeError as exc:
            raise ConfigError([f"not UTF-8 text (byte {exc.start}); save the file as UTF-8"],
                              str(path)) from None
    loader = Loader(str(path))
    config = loader.load(text, Config)
    from dataclasses import replace

    for section, default in (("smtp", SmtpConfig), ("imap", ImapConfig), ("http", HttpConfig)):
        if getattr(config, section) is None and loader.line(section) is not None:
            config = replace(config, **{section: default()})  # `smtp:` alone: the defaults
    problems = list(_cross_check(config, loader))
    if problems:
        raise ConfigError(problems, str(path))
    state_dir = config.state_dir if config.state_dir.is_absolute() else path.parent / config.state_dir
    upstream = config.upstream
    kinds = {"consumers" if a.tenant == "consumers" else a.cloud for a in config.apps.values()}
    if len(kinds) == 1 and (kind := kinds.pop()) != "global":
        smtp_host, imap_host = CLOUD_MAIL_HOSTS[kind]
        if loader.line("upstream.smtp") is None:
            upstream = replace(upstream, smtp=replace(upstream.smtp, host=smtp_host))
        if loader.line("upstream.imap") is None:
            upstream = replace(upstream, imap=replace(upstream.imap, host=imap_host))
    return replace(config, state_dir=state_dir, upstream=upstream, source=str(path))


def _cross_check(c: Config, loader: Loader):
    def at(p: str) -> str:
        line = loader.line(p)
        return f" (line {line})" if line else ""

    if not c.accounts:
        yield "accounts: at least one upstream mailbox is needed" + at("accounts")
    seen: set[str] = set()
    for i, a in enumerate(c.accounts):
        p = f"accounts[{i}]"
        if "@" not in a.mailbox:
            yield f"{p}.mailbox: not an email address: {a.mailbox!r}{at(p + '.mailbox')}"
        if a.mailbox.lower() in seen:
            yield f"{p}.mailbox: {a.mailbox} is listed twice{at(p + '.mailbox')}"
        seen.add(a.mailbox.lower())
        if a.app not in c.apps:
            known = ", ".join(sorted(c.apps)) or "none defined"
            yield f"{p}.app: no app named {a.app!r} (apps: {known}){at(p + '.app') or at(p)}"
        elif a.flow == "client_credentials" and not c.apps[a.app].client_secret:
            yield f"{p}.flow: client_credentials needs apps.{a.app}.client_secret{at(p + '.flow')}"
    names: set[str] = set()
    for i, u in enumerate(c.users):
        p = f"users[{i}]"
        if u.username in names:
            yield f"{p}.username: {u.username!r} is listed twice{at(p + '.username')}"
        names.add(u.username)
        if c.account(u.mailbox) is None:
            yield f"{p}.mailbox: no account for {u.mailbox!r} under accounts{at(p + '.mailbox')}"
        from .passwords import check_hash_format

        problem = check_hash_format(u.password_hash.reveal())
        if problem:
            yield f"{p}.password_hash: {problem}{at(p + '.password_hash')}"
    for name, app in c.apps.items():
        if app.authority and not app.authority.startswith("https://"):
            yield f"apps.{name}.authority: must be an https:// URL{at(f'apps.{name}.authority')}"
        if app.ca_file and not app.ca_file.is_file():
            yield f"apps.{name}.ca_file: no such file: {app.ca_file}{at(f'apps.{name}.ca_file')}"
    if c.upstream.ca_file and not c.upstream.ca_file.is_file():
        yield f"upstream.ca_file: no such file: {c.upstream.ca_file}{at('upstream.ca_file')}"
    for proto, svc in (("smtp", c.smtp), ("imap", c.imap)):
        if svc is None:
            continue
        yield from _check_tls(proto, svc, at)
    if c.smtp:
        for i, n in enumerate(c.smtp.unauthenticated):
            p = f"smtp.unauthenticated[{i}]"
            if c.account(n.mailbox) is None:
                yield f"{p}.mailbox: no account for {n.mailbox!r} under accounts{at(p + '.mailbox') or at(p)}"
            if n.network.prefixlen == 0:
                yield (f"{p}.network: {n.network} would let the whole Internet send without a "
                       f"password (an open relay); list your LAN's networks{at(p + '.network')}")
            elif n.network.prefixlen < (8 if n.network.version == 4 else 16) and not n.network.is_private:
                yield (f"{p}.network: {n.network} would let a large part of the Internet send "
                       f"without a password (an open relay); list your LAN's networks (public "
                       f"ranges at most a /{8 if n.network.version == 4 else 16}){at(p + '.network')}")
    for p, entry in [(f"users[{i}]", u) for i, u in enumerate(c.users)] + (
            [(f"smtp.unauthenticated[{i}]", n) for i, n in enumerate(c.smtp.unauthenticated)]
            if c.smtp else []):
        if entry.fallback == "spool" and entry.delivery == "spool":
            yield (f"{p}.fallback: spool only applies to delivery: direct (this entry spools "
                   f"everything already){at(p + '.fallback')}")
    if c.smtp is None and c.imap is None:
        yield "smtp, imap: no listener configured; add an smtp: or imap: section" + at("")


def _check_tls(proto: str, svc, at):
    if svc.proxy_protocol and not svc.trusted_proxies:
        yield (f"{proto}.trusted_proxies: needed with proxy_protocol: true (the addresses of your "
               f"HAProxy/nginx){at(f'{proto}.proxy_protocol')}")
    if svc.tls != "none":
        for key in ("cert_file", "key_file"):
            f = getattr(svc, key)
            if f is None:
                yield f"{proto}.{key}: needed with tls: {svc.tls}{at(f'{proto}.tls')}"
            elif not f.is_file():
                yield f"{proto}.{key}: no such file: {f}{at(f'{proto}.{key}')}"
    elif not svc.allow_plaintext_auth:
        yield (f"{proto}.allow_plaintext_auth: false needs tls: starttls or implicit, "
               f"or no client could log in{at(f'{proto}.allow_plaintext_auth')}")
