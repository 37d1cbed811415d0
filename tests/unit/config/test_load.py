"""Config errors name the key path and the line; values are typed; nothing makes an open relay."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay365.config import (
    AccountConfig,
    AppConfig,
    Config,
    Endpoint,
    ImapConfig,
    LimitsConfig,
    ListenAddr,
    SmtpConfig,
    UnauthenticatedNet,
    UpstreamConfig,
    UserConfig,
    load_config,
    parse_listen,
    parse_network,
    parse_size,
)
from relay365.errors import ConfigError
from relay365.passwords import hash_password
from relay365.secret import Secret

ROOT = Path(__file__).resolve().parents[3]
HASH = hash_password("pw", ln=10)

GOOD = f"""\
apps:
  default: {{client_id: x, tenant: t.test}}
accounts:
  - mailbox: scanner@contoso.com
    refresh_token: seed
users:
  - username: scanner
    password_hash: "{HASH}"
    mailbox: scanner@contoso.com
smtp:
  listen: ["127.0.0.1:2525", "[::1]:2525"]
  max_message_size: 10MB
  unauthenticated:
    - network: 192.168.10.0/24
      mailbox: scanner@contoso.com
"""


def problems(text: str, tmp_path) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "c.yaml", text=text)
    return err.value.problems


def test_a_good_config_is_typed(tmp_path):
    c = load_config(tmp_path / "c.yaml", text=GOOD)
    assert [(a.host, a.port) for a in c.smtp.listen] == [("127.0.0.1", 2525), ("::1", 2525)]
    assert c.smtp.max_message_size == 10 * 1024**2
    assert str(c.smtp.unauthenticated[0].network) == "192.168.10.0/24"
    assert c.smtp.unauthenticated[0].delivery == "spool" and c.users[0].delivery == "direct"
    assert c.state_dir == tmp_path / "state"  # relative to the config file
    assert "seed" not in repr(c)  # secrets stay typed


def test_unknown_app_names_the_key_and_line(tmp_path):
    text = GOOD.replace("    refresh_token: seed\n", "    app: x\n    refresh_token: seed\n")
    assert problems(text, tmp_path) == [
        "accounts[0].app: no app named 'x' (apps: default) (line 5)"]


def test_unknown_and_duplicate_keys(tmp_path):
    text = GOOD.replace("  max_message_size: 10MB\n", "  max_mesage_size: 10MB\n  listen: []\n")
    found = problems(text, tmp_path)
    assert any(re.fullmatch(r"smtp\.max_mesage_size: unknown key.*\(line 12\)", p) for p in found), found
    assert any(p.startswith("smtp.listen: duplicate key") and "(line 13)" in p for p in found), found


def test_bad_values_name_the_key(tmp_path):
    text = GOOD.replace("10MB", "ten megs").replace("192.168.10.0/24", "192.168.10.300/24")
    found = problems(text, tmp_path)
    assert any(p.startswith("smtp.max_message_size: not a size: 'ten megs'") for p in found), found
    assert any(p.startswith("smtp.unauthenticated[0].network:") for p in found), found


def test_open_relay_is_refused(tmp_path):
    found = problems(GOOD.replace("192.168.10.0/24", "0.0.0.0/0"), tmp_path)
    assert found == ["smtp.unauthenticated[0].network: 0.0.0.0/0 would let the whole Internet send "
                     "without a password (an open relay); list your LAN's networks (line 14)"]


def test_users_must_point_at_accounts_and_hashes_must_be_hashes(tmp_path):
    text = GOOD.replace("    mailbox: scanner@contoso.com\nsmtp", "    mailbox: other@contoso.com\nsmtp")
    text = text.replace(HASH, "plain")
    found = problems(text, tmp_path)
    assert "users[0].mailbox: no account for 'other@contoso.com' under accounts (line 9)" in found
    assert any(p.startswith("users[0].password_hash: not a relay365 password hash") for p in found)


def test_environment_and_file_secrets(tmp_path, monkeypatch):
    secret_file = tmp_path / "client-secret"
    secret_file.write_text("from-a-file\n")
    monkeypatch.setenv("RT_SEED", "from-env")
    monkeypatch.delenv("NOPE", raising=False)
    text = GOOD.replace("refresh_token: seed", "refresh_token: ${RT_SEED}").replace(
        "{client_id: x, tenant: t.test}",
        f"{{client_id: '${{NOPE:-fallback-id}}', tenant: t.test, client_secret: {{file: {secret_file}}}}}")
    c = load_config(tmp_path / "c.yaml", text=text)
    assert c.accounts[0].refresh_token.reveal() == "from-env"
    assert c.apps["default"].client_id == "fallback-id"
    assert c.apps["default"].client_secret.reveal() == "from-a-file"
    found = problems(GOOD.replace("refresh_token: seed", "refresh_token: ${NOPE}"), tmp_path)
    assert found == ["accounts[0].refresh_token: environment variable NOPE is not set (line 5)"]


def test_fallback_only_with_direct_delivery(tmp_path):
    text = GOOD.replace("      mailbox: scanner@contoso.com\n", "      mailbox: scanner@contoso.com\n"
                        "      fallback: spool\n")
    assert problems(text, tmp_path)[0].startswith("smtp.unauthenticated[0].fallback: spool only "
                                                  "applies to delivery: direct")


def test_not_yaml_is_one_problem_with_a_line(tmp_path):
    found = problems("apps: [\n", tmp_path)
    assert len(found) == 1 and found[0].startswith("not valid YAML") and "(line" in found[0]


def test_example_config_loads_and_every_key_has_a_comment(monkeypatch):
    monkeypatch.setenv("RELAY365_CLIENT_SECRET", "x")
    monkeypatch.setenv("SCANNER_RT", "y")
    path = ROOT / "config.example.yaml"
    load_config(path)
    undocumented = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)(- )?([a-z_]+):", line)
        if not m or "#" in line:
            continue
        # a key may be explained on the line above or below, or be a section header
        # whose children carry the comments
        before = lines[i - 1].strip() if i else ""
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if nxt.strip().startswith("#"):  # a long value, explained on the line below
            continue
        section = line.rstrip().endswith(":") and len(nxt) - len(nxt.lstrip()) > len(m.group(1))
        if not before.startswith("#") and not section:
            undocumented.append(f"line {i + 1}: {line.strip()}")
    assert undocumented == []


# -- error messages: the key path, what is wrong, the line ---------------------------------------

def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing `needle` (so the tests don't count by hand)."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def replaced(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


@pytest.mark.parametrize("text, path, message, at", [
    (GOOD + "smpt: {}\n", "smpt", "unknown key (did you mean 'smtp'?)", "smpt:"),
    (replaced("  max_message_size: 10MB\n", "  max_message_size: 10MB\n  zzz: 1\n"), "smtp.zzz",
     "unknown key (allowed: allow_plaintext_auth, backlog, cert_file, hostname, key_file, listen, "
     "max_message_size, max_session_time, proxy_protocol, sender, timeout, tls, trusted_proxies, "
     "unauthenticated)", "zzz:"),
    (GOOD + "source: elsewhere.yaml\n", "source",
     "unknown key (allowed: accounts, alerts, apps, drain_timeout, http, imap, limits, log, pop3, smtp, "
     "spool, state_dir, token_keepalive, token_refresh_margin, upstream, users)", "source:"),
    (replaced("  default: {client_id: x, tenant: t.test}\n",
              "  default: {client_id: x, tenant: t.test}\n  default: {client_id: y}\n"),
     "apps.default", "duplicate key", "client_id: y"),
    (replaced("  listen:", "  tls: ssl\n  listen:"), "smtp.tls",
     "must be one of none, starttls, implicit, not 'ssl'", "tls: ssl"),
    (replaced("  listen:", "  allow_plaintext_auth: maybe\n  listen:"), "smtp.allow_plaintext_auth",
     "expected true or false, not 'maybe'", "maybe"),
    (GOOD + "upstream:\n  smtp: {host: h, port: \"587\", tls: starttls}\n", "upstream.smtp.port",
     "expected integer, not '587'", "port: \"587\""),
    (GOOD + "upstream:\n  timeout: [1]\n", "upstream.timeout", "expected a number, not a list", "[1]"),
    (GOOD + "upstream:\n  smtp: {host: h, port: 587}\n", "upstream.smtp.tls", "missing (required)",
     "port: 587"),
    (replaced("{client_id: x, tenant: t.test}", "{client_id: null}"), "apps.default.client_id",
     "expected a string, not null", "client_id: null"),
    (replaced('["127.0.0.1:2525", "[::1]:2525"]', '["127.0.0.1:2525", "[::1]:99999"]'),
     "smtp.listen[1]", "port out of range in '[::1]:99999'", "99999"),
    (replaced('["127.0.0.1:2525", "[::1]:2525"]', "localhost"), "smtp.listen[0]",
     "not a listen address: 'localhost' (examples: 0.0.0.0:2525, [::1]:1143)", "localhost"),
    (replaced("    - network: 192.168.10.0/24\n", "    - network:\n"), "smtp.unauthenticated[0].network",
     "expected a string, not null", "network:"),
    (replaced("apps:\n  default: {client_id: x, tenant: t.test}\n", "apps: []\n"), "apps",
     "expected a mapping", "apps:"),
    (replaced("  - mailbox: scanner@contoso.com\n    refresh_token: seed\n", "  - scanner@contoso.com\n"),
     "accounts[0]", "expected a mapping of keys", "  - scanner@contoso.com"),
    (replaced("  - mailbox: scanner@contoso.com\n    refresh_token: seed\n", "  - refresh_token: seed\n"),
     "accounts[0].mailbox", "missing (required)", "refresh_token: seed"),
    (replaced("{client_id: x, tenant: t.test}", "{client_id: x, client_secret: {path: /x}}"),
     "apps.default.client_secret", "a secret is a string, ${ENV} or {file: PATH}", "client_secret"),
    (replaced("{client_id: x, tenant: t.test}", "{client_id: x, client_secret: {file: /nonexistent/s}}"),
     "apps.default.client_secret", "cannot read secret file /nonexistent/s: No such file or directory",
     "client_secret"),
])
def test_loader_errors_name_path_message_and_line(tmp_path, text, path, message, at):
    assert problems(text, tmp_path) == [f"{path}: {message} (line {line_of(text, at)})"]


def test_keys_must_be_plain_strings(tmp_path):
    text = GOOD + "[a, b]: 1\n"
    assert problems(text, tmp_path) == [f"<top>: keys must be plain strings (line {line_of(text, '[a, b]')})"]


@pytest.mark.parametrize("text, first", [
    ("", "accounts: missing (required) (line 1)"),
    ("# only a comment\n", "accounts: missing (required) (line 1)"),
    ("- a\n- b\n", "<top>: expected a mapping of keys (line 1)"),
    ("accounts: []\n---\naccounts: []\n", "not valid YAML: but found another document (line 2)"),
    ("accounts: []\n\tsmtp: {}\n", "not valid YAML: found character '\\t' that cannot start any token "
                                   "(line 2)"),
])
def test_documents_that_are_not_a_config(tmp_path, text, first):
    assert problems(text, tmp_path)[0] == first


def test_every_problem_is_reported_in_one_run(tmp_path):
    text = replaced("10MB", "huge").replace("192.168.10.0/24", "nonsense").replace(
        "tenant: t.test}", "tenant: t.test, shade: blue}")
    assert problems(text, tmp_path) == [
        f"apps.default.shade: unknown key (allowed: authority, ca_file, client_id, client_secret, "
        f"client_secret_expires, cloud, tenant, timeout) (line {line_of(text, 'shade')})",
        f"smtp.max_message_size: not a size: 'huge' (examples: 35MB, 512KB, 1048576) "
        f"(line {line_of(text, 'huge')})",
        f"smtp.unauthenticated[0].network: not an IP network: 'nonsense' (examples: 192.168.10.0/24, "
        f"10.0.0.5) (line {line_of(text, 'nonsense')})",
    ]


def test_cannot_read_the_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "missing.yaml")
    assert err.value.problems == ["cannot read: No such file or directory"]
    assert str(err.value) == f"{tmp_path / 'missing.yaml'}: cannot read: No such file or directory"


# -- cross-checks: what no single field can say --------------------------------------------------

CERT = Path(__file__)  # any existing file stands in for a certificate here


@pytest.mark.parametrize("text, expected", [
    (replaced("  - mailbox: scanner@contoso.com\n", "  - mailbox: scanner.contoso.com\n"),
     ["accounts[0].mailbox: not an email address: 'scanner.contoso.com' (line {mailbox: scanner.contoso})",
      "users[0].mailbox: no account for 'scanner@contoso.com' under accounts (line {    mailbox: scanner@})",
      "smtp.unauthenticated[0].mailbox: no account for 'scanner@contoso.com' under accounts "
      "(line {      mailbox: scanner@})"]),
    (replaced("    refresh_token: seed\n", "    refresh_token: seed\n  - mailbox: SCANNER@contoso.com\n"),
     ["accounts[1].mailbox: SCANNER@contoso.com is listed twice (line {SCANNER@})"]),
    (replaced("    refresh_token: seed\n", "    flow: client_credentials\n"),
     ["accounts[0].flow: client_credentials needs apps.default.client_secret (line {flow:})"]),
    (replaced("smtp:\n", f"  - username: scanner\n    password_hash: \"{HASH}\"\n"
                         f"    mailbox: scanner@contoso.com\nsmtp:\n"),
     ["users[1].username: 'scanner' is listed twice (line {- username: scanner@2})"]),
    (replaced("tenant: t.test}", "tenant: t.test, authority: 'http://login.test'}"),
     ["apps.default.authority: must be an https:// URL (line {authority})"]),
    (replaced("tenant: t.test}", "tenant: t.test, ca_file: /nonexistent/ca.pem}"),
     ["apps.default.ca_file: no such file: /nonexistent/ca.pem (line {ca_file})"]),
    (GOOD + "upstream: {ca_file: /nonexistent/ca.pem}\n",
     ["upstream.ca_file: no such file: /nonexistent/ca.pem (line {upstream:})"]),
    (replaced("  max_message_size: 10MB\n", "  max_message_size: 10MB\n  tls: starttls\n"),
     ["smtp.cert_file: needed with tls: starttls (line {tls: starttls})",
      "smtp.key_file: needed with tls: starttls (line {tls: starttls})"]),
    (replaced("  max_message_size: 10MB\n", f"  max_message_size: 10MB\n  tls: implicit\n"
                                            f"  cert_file: {CERT}\n  key_file: /nonexistent/key.pem\n"),
     ["smtp.key_file: no such file: /nonexistent/key.pem (line {key_file})"]),
    (replaced("  max_message_size: 10MB\n", "  max_message_size: 10MB\n  allow_plaintext_auth: false\n"),
     ["smtp.allow_plaintext_auth: false needs tls: starttls or implicit, or no client could log in "
      "(line {allow_plaintext_auth})"]),
    (GOOD + "imap: {proxy_protocol: true}\n",
     ["imap.trusted_proxies: needed with proxy_protocol: true (the addresses of your HAProxy/nginx) "
      "(line {imap:})"]),
    (replaced("192.168.10.0/24", "::/0"),
     ["smtp.unauthenticated[0].network: ::/0 would let the whole Internet send without a password "
      "(an open relay); list your LAN's networks (line {::/0})"]),
    (replaced("192.168.10.0/24", "0.0.0.0/0"),
     ["smtp.unauthenticated[0].network: 0.0.0.0/0 would let the whole Internet send without a password "
      "(an open relay); list your LAN's networks (line {0.0.0.0/0})"]),
    (GOOD.split("smtp:\n")[0],
     ["smtp, imap, pop3: no listener configured; add an smtp:, imap: or pop3: section (line 1)"]),
    (GOOD.split("users:\n")[0].replace("  - mailbox: scanner@contoso.com\n    refresh_token: seed\n",
                                       "  []\n") + "imap: {}\n",
     ["accounts: at least one upstream mailbox is needed (line {  []})"]),
])
def test_cross_checks(tmp_path, text, expected):
    def resolve(msg: str) -> str:
        m = re.search(r"\{([^}]*)\}\)$", msg)
        if not m:
            return msg
        needle, _, nth = m.group(1).partition("@")
        lines = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
        return msg[:m.start()] + f"{lines[int(nth or 1) - 1]})"

    assert problems(text, tmp_path) == [resolve(e) for e in expected]


def test_a_narrow_network_and_ipv6_are_fine(tmp_path):
    text = replaced("    - network: 192.168.10.0/24\n", "    - network: 10.1.2.3\n"
                    "      mailbox: scanner@contoso.com\n    - network: fd00::/8\n")
    c = load_config(tmp_path / "c.yaml", text=text)
    assert [str(n.network) for n in c.smtp.unauthenticated] == ["10.1.2.3/32", "fd00::/8"]


# -- values: sizes, addresses, networks ---------------------------------------------------------

@pytest.mark.parametrize("text, size", [
    ("35MB", 36_700_160), ("35 mb", 36_700_160), ("512KB", 524_288), ("1048576", 1_048_576),
    ("2GiB", 2 * 1024**3), ("1.5M", 1_572_864), ("10K", 10_240), ("0", 0), (" 7 B ", 7),
])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "-1MB", "35TB", "1e3", "35 MBs", "3,5MB"])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError) as err:
        parse_size(text)
    assert str(err.value) == f"not a size: {text!r} (examples: 35MB, 512KB, 1048576)"


def test_sizes_also_come_as_plain_yaml_numbers(tmp_path):
    c = load_config(tmp_path / "c.yaml", text=replaced("10MB", "1048576"))
    assert c.smtp.max_message_size == 1_048_576


@pytest.mark.parametrize("text, host, port, shown", [
    ("0.0.0.0:2525", "0.0.0.0", 2525, "0.0.0.0:2525"),
    (":25", "0.0.0.0", 25, "0.0.0.0:25"),
    ("[::]:1143", "::", 1143, "[::]:1143"),
    ("[::1]:0", "::1", 0, "[::1]:0"),
    (" relay.lan:587 ", "relay.lan", 587, "relay.lan:587"),
])
def test_parse_listen(text, host, port, shown):
    addr = parse_listen(text)
    assert (addr.host, addr.port, str(addr)) == (host, port, shown)
    assert parse_listen(str(addr)) == addr


@pytest.mark.parametrize("text, why", [
    ("2525", "not a listen address: '2525'"),
    ("[::1]", "not a listen address: '[::1]'"),
    ("::1:25", "not a listen address: '::1:25'"),
    ("[fe80::zz]:25", "not a listen address: '[fe80::zz]:25'"),
    ("h:65536", "port out of range in 'h:65536'"),
])
def test_parse_listen_refuses(text, why):
    with pytest.raises(ValueError) as err:
        parse_listen(text)
    assert str(err.value).startswith(why)


@pytest.mark.parametrize("text, network", [
    ("10.0.0.5", "10.0.0.5/32"), ("192.168.10.77/24", "192.168.10.0/24"), ("fe80::1/10", "fe80::/10"),
    (" 2001:db8::/32 ", "2001:db8::/32"),
])
def test_parse_network(text, network):
    assert str(parse_network(text)) == network


def test_one_listen_address_need_not_be_a_list(tmp_path):
    c = load_config(tmp_path / "c.yaml", text=replaced('["127.0.0.1:2525", "[::1]:2525"]', "'[::]:25'"))
    assert c.smtp.listen == [ListenAddr("::", 25)]


# -- ${ENV} and ${ENV:-default} ------------------------------------------------------------------

def test_environment_interpolation(tmp_path, monkeypatch):
    monkeypatch.setenv("R_HOST", "smtp.test")
    monkeypatch.setenv("R_PORT", "2587")
    monkeypatch.setenv("R_FLAG", "false")
    monkeypatch.setenv("R_DIR", str(tmp_path))
    monkeypatch.delenv("R_UNSET", raising=False)
    (tmp_path / "rt").write_text("  from-file  \n")
    text = replaced("    refresh_token: seed\n", "    refresh_token: {file: '${R_DIR}/rt'}\n") + (
        "upstream:\n"
        "  smtp: {host: 'mx-${R_HOST}.${R_UNSET:-local}', port: '${R_PORT}', tls: starttls}\n"
        "  imap: {host: '${R_UNSET:-}x', port: '${R_UNSET:-993}', tls: implicit}\n"
        "  smtp_pool_idle: '${R_UNSET:-2.5}'\n"
        "imap: {allow_plaintext_auth: '${R_FLAG}', tls: implicit, cert_file: '${R_DIR}/rt', "
        "key_file: '${R_DIR}/rt'}\n")
    c = load_config(tmp_path / "c.yaml", text=text)
    assert (c.upstream.smtp.host, c.upstream.smtp.port) == ("mx-smtp.test.local", 2587)
    assert (c.upstream.imap.host, c.upstream.imap.port) == ("x", 993)
    assert c.upstream.smtp_pool_idle == 2.5
    assert c.imap.allow_plaintext_auth is False and c.imap.cert_file == tmp_path / "rt"
    assert c.accounts[0].refresh_token.reveal() == "from-file"


@pytest.mark.parametrize("value, message", [
    ("'${R_BAD}'", "expected integer, not '${R_BAD}'"),      # "[1" is not YAML, let alone a port
    ("'${R_TAG}'", "expected integer, not '${R_TAG}'"),      # nor is a python tag
    ("'${R_WORD}'", "expected integer, not '${R_WORD}'"),
    ("'${R_UNSET}'", "environment variable R_UNSET is not set"),
    ("'${R_UNSET:-}'", "expected integer, not '${R_UNSET:-}'"),
])
def test_numbers_from_the_environment_are_checked(tmp_path, monkeypatch, value, message):
    monkeypatch.setenv("R_BAD", "[1")
    monkeypatch.setenv("R_TAG", "!!python/object/apply:os.system ['true']")
    monkeypatch.setenv("R_WORD", "many")
    monkeypatch.delenv("R_UNSET", raising=False)
    text = GOOD + f"limits:\n  max_connections: {value}\n"
    assert problems(text, tmp_path) == [f"limits.max_connections: {message} (line {line_of(text, value)})"]


def test_a_secret_file_that_is_not_text(tmp_path):
    (tmp_path / "secret.der").write_bytes(b"\x30\x82\xff\xfe")
    text = replaced("{client_id: x, tenant: t.test}", f"{{client_id: x, client_secret: {{file: "
                                                      f"{tmp_path / 'secret.der'}}}}}")
    assert problems(text, tmp_path) == [f"apps.default.client_secret: secret file {tmp_path / 'secret.der'} "
                                        f"is not UTF-8 text (line 2)"]


# -- the typed result ----------------------------------------------------------------------------

def test_result_is_frozen_and_has_the_defaults(tmp_path):
    c = load_config(tmp_path / "c.yaml", text=GOOD)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.smtp.tls = "implicit"  # type: ignore[misc]
    assert c.imap is None and c.http is None and c.source == str(tmp_path / "c.yaml")
    assert (c.smtp.tls, c.smtp.sender, c.smtp.timeout, c.smtp.max_session_time) == (
        "none", "rewrite", 300.0, 3600.0)
    assert (c.limits.auth_block_after, c.limits.auth_window, c.token_refresh_margin) == (10, 900.0, 600.0)
    assert (c.upstream.smtp.host, c.upstream.smtp.port, c.upstream.smtp.tls) == (
        "smtp.office365.com", 587, "starttls")
    assert isinstance(c.users[0].password_hash, Secret) and c.users[0].password_hash.reveal() == HASH


def test_lookups_and_scopes(tmp_path):
    text = replaced("    refresh_token: seed\n", "    refresh_token: seed\n"
                    "  - {mailbox: app@contoso.com, flow: client_credentials}\n"
                    "  - {mailbox: pop@contoso.com, scopes: [https://outlook.office.com/POP.AccessAsUser.All]}\n"
                    ).replace("tenant: t.test}", "tenant: t.test, client_secret: s}")
    c = load_config(tmp_path / "c.yaml", text=text)
    assert c.account("SCANNER@Contoso.com") is c.accounts[0] and c.account("nobody@x") is None
    assert c.user("scanner") is c.users[0] and c.user("Scanner") is None
    assert c.scopes_for(c.accounts[0]) == [
        "https://outlook.office.com/IMAP.AccessAsUser.All", "https://outlook.office.com/POP.AccessAsUser.All",
        "https://outlook.office.com/SMTP.Send"]
    assert c.scopes_for(c.accounts[1]) == ["https://outlook.office365.com/.default"]
    assert c.scopes_for(c.accounts[2]) == ["https://outlook.office.com/POP.AccessAsUser.All"]


def test_an_absolute_state_dir_stays(tmp_path):
    c = load_config(tmp_path / "c.yaml", text=GOOD + f"state_dir: {tmp_path / 'elsewhere'}\n")
    assert c.state_dir == tmp_path / "elsewhere"


def test_every_key_of_the_model_is_in_the_example():
    """config.example.yaml shows every key (a commented-out example counts), so the reference is whole."""
    text = (ROOT / "config.example.yaml").read_text()
    loaded = yaml.safe_load(text.replace("${", "$_{"))

    def walk(tp, data, prefix):
        hints = typing.get_type_hints(tp)
        for f in dataclasses.fields(tp):
            if f.metadata.get("internal"):
                continue
            path = prefix + f.name
            if not (isinstance(data, dict) and f.name in data) and not re.search(
                    rf"#\s*{f.name}:", text):
                yield path
            sub = data.get(f.name) if isinstance(data, dict) else None
            t = hints[f.name]
            if typing.get_origin(t) in (typing.Union, types.UnionType):
                t = next(a for a in typing.get_args(t) if a is not type(None))
            origin = typing.get_origin(t)
            if "parse" in f.metadata:  # written as a string (listen addresses, networks)
                continue
            if origin is list and dataclasses.is_dataclass(typing.get_args(t)[0]):
                yield from walk(typing.get_args(t)[0], (sub or [{}])[0], path + "[0].")
            elif origin is dict and dataclasses.is_dataclass(typing.get_args(t)[1]):
                for name, value in (sub or {"x": {}}).items():
                    yield from walk(typing.get_args(t)[1], value, f"{path}.{name}.")
            elif dataclasses.is_dataclass(t):
                yield from walk(t, sub or {}, path + ".")

    assert list(walk(Config, loaded, "")) == []


# -- property: any YAML gives a Config or a ConfigError, never another exception -----------------

_KEYS = sorted({f.name for tp in (Config, AppConfig, AccountConfig, UserConfig, SmtpConfig, ImapConfig,
                                  UnauthenticatedNet, UpstreamConfig, Endpoint, LimitsConfig)
                for f in dataclasses.fields(tp)} | {"file", "x"})
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 70_000), st.floats(allow_nan=False, width=32),
    st.sampled_from(["", "0.0.0.0:25", "[::1]:1", "10.0.0.0/8", "0.0.0.0/0", "35MB", "${NOPE}",
                     "${NOPE:-7}", "[1", "a@b.c", "scanner@contoso.com", "default", "starttls", "spool",
                     "client_credentials", HASH, "/nonexistent", "http://x", "https://x"]),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=8),
)
_TREES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4)),
    max_leaves=12)
_PATHS = [("apps", "default"), ("apps", "default", "client_secret"), ("accounts", 0),
          ("accounts", 0, "flow"), ("users", 0), ("users", 0, "password_hash"), ("smtp",),
          ("smtp", "listen"), ("smtp", "unauthenticated", 0), ("smtp", "unauthenticated", 0, "network"),
          ("smtp", "tls"), ("imap",), ("upstream",), ("limits",), ("spool",), ("state_dir",), ("x",)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_PATHS), _TREES), min_size=1, max_size=3))
def test_any_tree_gives_a_config_or_config_errors(tmp_path_factory, edits):
    data = yaml.safe_load(GOOD)
    for path, value in edits:
        node = data
        for key in path[:-1]:
            if isinstance(node, dict):
                node = node.setdefault(key, {})
            elif isinstance(node, list) and isinstance(key, int) and key < len(node):
                node = node[key]
            else:
                break
        else:
            if isinstance(node, dict) or (isinstance(node, list) and isinstance(path[-1], int)
                                          and path[-1] < len(node)):
                node[path[-1]] = value
    text = yaml.safe_dump(data, allow_unicode=True)
    try:
        load_config(tmp_path_factory.getbasetemp() / "c.yaml", text=text)
    except ConfigError as err:
        assert err.problems and all(p and "\n" not in p for p in err.problems), err.problems


# -- ranges, empty sections, encodings, wide networks ----------------------------------------------

@pytest.mark.parametrize("extra, expected", [
    ("limits:\n  max_connections: 0\n", "limits.max_connections: must be at least 1 (got 0) (line 17)"),
    ("limits:\n  auth_window: -5\n", "limits.auth_window: must be more than 0 (got -5.0) (line 17)"),
    ("imap:\n  idle_timeout: 0\n", "imap.idle_timeout: must be more than 0 (got 0.0) (line 17)"),
    ("upstream:\n  smtp_pool_idle: -1\n",
     "upstream.smtp_pool_idle: must not be negative (got -1.0) (line 17)"),
])
def test_ranges_name_the_key_and_its_line(tmp_path, extra, expected):
    assert GOOD.count("\n") == 15  # so the added section starts on line 16
    assert problems(GOOD + extra, tmp_path) == [expected]


def test_zero_message_size_is_refused(tmp_path):
    found = problems(GOOD.replace("max_message_size: 10MB", "max_message_size: 0"), tmp_path)
    assert found == ["smtp.max_message_size: must be more than 0 (got 0) (line 12)"]


def test_an_empty_section_means_its_defaults(tmp_path):
    c = load_config(tmp_path / "c.yaml", text=GOOD + "imap:\nhttp:\n")
    assert c.imap is not None and c.imap.idle_timeout == 1900.0
    assert c.http is not None and c.http.listen.port == 9465


def test_a_file_that_is_not_utf8_is_one_clear_problem(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(GOOD.encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.problems == [f"not UTF-8 text (byte {len(GOOD.encode()) + 5}); save the file as UTF-8"]


@pytest.mark.parametrize("network, refused", [
    ("0.0.0.0/1", True), ("128.0.0.0/1", True), ("64.0.0.0/7", True), ("::/1", True),
    ("10.0.0.0/8", False), ("172.16.0.0/12", False), ("fd00::/8", False), ("198.51.100.0/24", False),
])
def test_wide_public_networks_are_an_open_relay(tmp_path, network, refused):
    text = GOOD.replace("192.168.10.0/24", network)
    if refused:
        assert "open relay" in problems(text, tmp_path)[0]
    else:
        load_config(tmp_path / "c.yaml", text=text)


def test_every_duration_and_size_key_takes_units(tmp_path):
    """`30s`, `15m`, `1h`, `5d` wherever a key is seconds; `35MB` wherever it is bytes."""
    text = GOOD.replace("  max_message_size: 10MB\n", "  max_message_size: 10MB\n  timeout: 5m\n"
                        "  max_session_time: 2h\n") + (
        "drain_timeout: 30s\ntoken_keepalive: 3d\ntoken_refresh_margin: 10m\n"
        "upstream: {smtp_pool_idle: 30s, timeout: 2m, connect_timeout: 15s}\n"
        "imap: {login_timeout: 1m, idle_timeout: 31m, max_session_time: 1d}\n"
        "limits: {auth_failure_delay: 1s, auth_max_delay: 10s, auth_block_seconds: 15m, "
        "auth_window: 1h}\n"
        "spool: {max_lifetime: 5d, min_free_space: 64MB}\n")
    c = load_config(tmp_path / "c.yaml", text=text)
    assert (c.smtp.timeout, c.smtp.max_session_time, c.drain_timeout) == (300, 7200, 30)
    assert (c.token_keepalive, c.token_refresh_margin) == (3 * 86400, 600)
    assert (c.upstream.smtp_pool_idle, c.upstream.timeout, c.upstream.connect_timeout) == (30, 120, 15)
    assert (c.imap.login_timeout, c.imap.idle_timeout, c.imap.max_session_time) == (60, 1860, 86400)
    assert (c.limits.auth_block_seconds, c.limits.auth_window) == (900, 3600)
    assert (c.spool.max_lifetime, c.spool.min_free_space) == (5 * 86400, 64 * 1024**2)
    durations = [f"{type(o).__name__}.{f.name}" for o in (c, c.smtp, c.imap, c.upstream, c.limits,
                                                          c.spool, c.apps["default"])
                 for f in dataclasses.fields(o)
                 if f.type in ("float", "float | None") and "parse" not in f.metadata]
    assert durations == ["SpoolConfig.rate_per_minute"]  # the one float key that is not seconds
