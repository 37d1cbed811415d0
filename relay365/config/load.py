"""Loading the config file: YAML into the model, then the checks no single field can make.

`load_config(path)` reads the file (`loader` does the typed conversion and the error format), then
checks that names refer to things that exist, that TLS settings come with certificates and that
nothing makes an open relay; every problem is reported as `key: problem (line N)`, all at once.
It also applies the defaults that depend on other keys (a national cloud's mail hosts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from ..errors import ConfigError
from ..passwords import check_hash_format
from .loader import Loader
from .model import CLOUD_GRAPH_HOSTS, CLOUD_MAIL_HOSTS, Config, GraphConfig
from .services import HttpConfig, ImapConfig, Pop3Config, SmtpConfig, UnauthenticatedNet, UserConfig


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
    config = _bare_sections(config, loader)
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
        if loader.line("upstream.pop3") is None:
            upstream = replace(upstream, pop3=replace(upstream.pop3, host=imap_host))
        if loader.line("upstream.graph.base_url") is None:
            graph = GraphConfig(f"https://{CLOUD_GRAPH_HOSTS[kind]}/v1.0")
            upstream = replace(upstream, graph=graph)
    return replace(config, state_dir=state_dir, upstream=upstream, source=str(path))


At = Callable[[str], str]
"""`at(key)` is " (line N)" for a key the file has, "" for one it does not."""


def _bare_sections(config: Config, loader: Loader) -> Config:
    """`smtp:` with nothing under it (YAML null) means the section with its defaults."""
    present = {name for name in ("smtp", "imap", "pop3", "http")
               if getattr(config, name) is None and loader.line(name) is not None}
    return replace(
        config,
        smtp=SmtpConfig() if "smtp" in present else config.smtp,
        imap=ImapConfig() if "imap" in present else config.imap,
        pop3=Pop3Config() if "pop3" in present else config.pop3,
        http=HttpConfig() if "http" in present else config.http)


def _cross_check(c: Config, loader: Loader) -> Iterator[str]:
    def at(p: str) -> str:
        line = loader.line(p)
        return f" (line {line})" if line else ""

    if not c.accounts:
        yield "accounts: at least one upstream mailbox is needed" + at("accounts")
    yield from _check_accounts(c, at)
    yield from _check_users(c, at)
    yield from _check_apps(c, at)
    for proto, svc in (("smtp", c.smtp), ("imap", c.imap), ("pop3", c.pop3)):
        if svc is not None:
            yield from _check_tls(proto, svc, at)
    if c.smtp:
        yield from _check_unauthenticated(c, c.smtp, at)
    yield from _check_fallback(c, at)
    yield from _check_alerts(c, at)
    if c.smtp is None and c.imap is None and c.pop3 is None:
        yield "smtp, imap, pop3: no listener configured; add an smtp:, imap: or pop3: section" + at("")


def _check_accounts(c: Config, at: At) -> Iterator[str]:
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


def _check_users(c: Config, at: At) -> Iterator[str]:
    names: set[str] = set()
    for i, u in enumerate(c.users):
        p = f"users[{i}]"
        if u.username in names:
            yield f"{p}.username: {u.username!r} is listed twice{at(p + '.username')}"
        names.add(u.username)
        yield from _check_account_ref(c, p, u, at)
        problem = check_hash_format(u.password_hash.reveal())
        if problem:
            yield f"{p}.password_hash: {problem}{at(p + '.password_hash')}"


def _check_account_ref(c: Config, p: str, entry: UserConfig | UnauthenticatedNet,
                       at: At) -> Iterator[str]:
    """`account` (or, without one, `mailbox`) must be a mailbox under accounts: its token is used."""
    if entry.account is not None:
        if c.account(entry.account) is None:
            known = ", ".join(a.mailbox for a in c.accounts) or "none"
            yield (f"{p}.account: no account {entry.account!r} under accounts (accounts: {known})"
                   f"{at(p + '.account') or at(p)}")
        if "@" not in entry.mailbox:
            yield f"{p}.mailbox: not an email address: {entry.mailbox!r}{at(p + '.mailbox') or at(p)}"
    elif c.account(entry.mailbox) is None:
        # (a shared mailbox has no account of its own: the entry names one with `account:`)
        yield f"{p}.mailbox: no account for {entry.mailbox!r} under accounts{at(p + '.mailbox') or at(p)}"


def _check_apps(c: Config, at: At) -> Iterator[str]:
    for name, app in c.apps.items():
        if app.authority and not app.authority.startswith("https://"):
            yield f"apps.{name}.authority: must be an https:// URL{at(f'apps.{name}.authority')}"
        if app.ca_file and not _is_file(app.ca_file):
            yield f"apps.{name}.ca_file: no such file: {app.ca_file}{at(f'apps.{name}.ca_file')}"
    if c.upstream.ca_file and not _is_file(c.upstream.ca_file):
        yield f"upstream.ca_file: no such file: {c.upstream.ca_file}{at('upstream.ca_file')}"
    if not c.upstream.graph.base_url.startswith("https://"):
        yield f"upstream.graph.base_url: must be an https:// URL{at('upstream.graph.base_url')}"


def _check_unauthenticated(c: Config, smtp: SmtpConfig, at: At) -> Iterator[str]:
    for i, n in enumerate(smtp.unauthenticated):
        p = f"smtp.unauthenticated[{i}]"
        yield from _check_account_ref(c, p, n, at)
        widest = 8 if n.network.version == 4 else 16
        if n.network.prefixlen == 0:
            yield (f"{p}.network: {n.network} would let the whole Internet send without a "
                   f"password (an open relay); list your LAN's networks{at(p + '.network')}")
        elif n.network.prefixlen < widest and not n.network.is_private:
            yield (f"{p}.network: {n.network} would let a large part of the Internet send "
                   f"without a password (an open relay); list your LAN's networks (public "
                   f"ranges at most a /{widest}){at(p + '.network')}")


def _check_fallback(c: Config, at: At) -> Iterator[str]:
    entries: list[tuple[str, UserConfig | UnauthenticatedNet]] = [
        (f"users[{i}]", u) for i, u in enumerate(c.users)]
    if c.smtp:
        entries += [(f"smtp.unauthenticated[{i}]", n) for i, n in enumerate(c.smtp.unauthenticated)]
    for p, entry in entries:
        if entry.fallback == "spool" and entry.delivery == "spool":
            yield (f"{p}.fallback: spool only applies to delivery: direct (this entry spools "
                   f"everything already){at(p + '.fallback')}")


def _check_tls(proto: str, svc: SmtpConfig | ImapConfig | Pop3Config, at: At) -> Iterator[str]:
    if svc.proxy_protocol and not svc.trusted_proxies:
        yield (f"{proto}.trusted_proxies: needed with proxy_protocol: true (the addresses of your "
               f"HAProxy/nginx){at(f'{proto}.proxy_protocol')}")
    if svc.tls != "none":
        for key in ("cert_file", "key_file"):
            f = getattr(svc, key)
            if f is None:
                yield f"{proto}.{key}: needed with tls: {svc.tls}{at(f'{proto}.tls')}"
            elif not _is_file(f):
                yield f"{proto}.{key}: no such file: {f}{at(f'{proto}.{key}')}"
    elif not svc.allow_plaintext_auth:
        yield (f"{proto}.allow_plaintext_auth: false needs tls: starttls or implicit, "
               f"or no client could log in{at(f'{proto}.allow_plaintext_auth')}")


def _check_alerts(c: Config, at: At) -> Iterator[str]:
    a = c.alerts
    if a is None:
        return
    if not a.mail_to and a.webhook is None:
        yield "alerts: give mail_to, webhook or both (nobody would be told)" + at("alerts")
    for i, rcpt in enumerate(a.mail_to):
        if "@" not in rcpt or " " in rcpt.strip():
            yield f"alerts.mail_to[{i}]: not an email address: {rcpt!r}{at(f'alerts.mail_to[{i}]')}"
    if a.from_account is not None and c.account(a.from_account) is None:
        known = ", ".join(x.mailbox for x in c.accounts) or "none"
        yield (f"alerts.from_account: no account {a.from_account!r} under accounts (accounts: "
               f"{known}){at('alerts.from_account')}")
    if a.webhook is not None:
        if not a.webhook.url.reveal().startswith(("https://", "http://")):
            yield f"alerts.webhook.url: must be an https:// (or http://) URL{at('alerts.webhook.url')}"
        if a.webhook.ca_file and not _is_file(a.webhook.ca_file):
            yield (f"alerts.webhook.ca_file: no such file: {a.webhook.ca_file}"
                   f"{at('alerts.webhook.ca_file')}")


def _is_file(path: Path) -> bool:
    """`Path.is_file`, False also for a path the system refuses to look at (too long, a NUL in
    it): found by fuzzing, such a path raised OSError out of the config check."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False
