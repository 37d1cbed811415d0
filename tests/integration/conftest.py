"""The world the integration tests run in: a test CA, the fake identity platform, real Postfix and
Dovecot as Office 365, and relay365 itself as a subprocess started from a real config file."""

from __future__ import annotations

import pytest

from relay365.passwords import hash_password
from relay365.standins.fakeidp import FakeIdP
from tests.support.pki import make_pki
from tests.support.relayproc import RelayProcess
from tests.support.upstream import MailUpstream, missing_binaries

CLIENT_ID, CLIENT_SECRET = "relay365-tests", "test-client-secret"
DOMAIN = "example.test"
MAILBOX = f"scanner@{DOMAIN}"
USER, PASSWORD = "scanner", "correct horse battery staple"
PASSWORD_HASH = hash_password(PASSWORD, ln=10)  # cheap for tests; the format carries the cost


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def idp(pki):
    with FakeIdP(pki.cert_file, pki.key_file) as server:
        server.add_client(CLIENT_ID, secret=CLIENT_SECRET, app_mailboxes=[f"app@{DOMAIN}"])
        yield server


@pytest.fixture(autouse=True)
def _idp_clean(request):
    """Each test starts with a healthy identity platform and fresh counters."""
    if "idp" in request.fixturenames:
        server = request.getfixturevalue("idp")
        server.down, server.delay = False, 0.0
        server.sign_in_as, server.authorize_error = None, None
        server.device_code_lifetime = 900
        server.reset_counters()
        server.clear_faults()  # a fault one test armed and never drew must not hit the next
    yield


@pytest.fixture(scope="session")
def upstream(tmp_path_factory, pki, idp):
    missing = missing_binaries()
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (scripts/install-test-deps.sh installs them)")
    with MailUpstream(tmp_path_factory.mktemp("upstream"), pki, f"{idp.url}/introspect",
                      grant_url=f"{idp.url}/grant", domain=DOMAIN) as server:
        yield server


def relay_config(tmp_path, pki, idp, upstream, *, refresh_token: str | None = None,
                 smtp: dict | None = None, imap: dict | None = None, pop3: dict | None = None,
                 upstream_extra: dict | None = None, **top) -> dict:
    config = {
        "state_dir": str(tmp_path / "state"),
        "log": {"level": "info", "format": "json"},
        "apps": {"default": {"tenant": "contoso.test", "client_id": CLIENT_ID,
                             "client_secret": CLIENT_SECRET, "authority": idp.url,
                             "ca_file": str(pki.ca_file)}},
        "upstream": {"smtp": {"host": "127.0.0.1", "port": upstream.smtp_port, "tls": "starttls"},
                     "imap": {"host": "127.0.0.1", "port": upstream.imap_port, "tls": "implicit"},
                     "pop3": {"host": "127.0.0.1", "port": upstream.pop3_port, "tls": "implicit"},
                     "ca_file": str(pki.ca_file), **(upstream_extra or {})},
        "accounts": [{"mailbox": MAILBOX,
                      "refresh_token": refresh_token or idp.issue_refresh_token(MAILBOX)}],
        "users": [{"username": USER, "password_hash": PASSWORD_HASH, "mailbox": MAILBOX}],
        "limits": {"auth_failure_delay": 0.05, "auth_max_delay": 0.2},
    }
    if smtp is not None:
        config["smtp"] = {"listen": ["127.0.0.1:0"], **smtp}
    if imap is not None:
        config["imap"] = {"listen": ["127.0.0.1:0"], **imap}
    if pop3 is not None:
        config["pop3"] = {"listen": ["127.0.0.1:0"], **pop3}
    config.update(top)
    return config


@pytest.fixture
def make_relay(tmp_path, pki, idp, upstream):
    """Start relay365 (`python -m relay365 serve`) with a config built by `relay_config`."""
    started: list[RelayProcess] = []

    def make(config: dict | None = None, *, name: str = "relay", start: bool = True,
             env: dict | None = None, **kw):
        if config is None:
            config = relay_config(tmp_path, pki, idp, upstream, **kw)
        proc = RelayProcess(tmp_path, config, env=env, name=name)
        started.append(proc)
        return proc.start() if start else proc

    yield make
    for proc in started:
        proc.stop()
