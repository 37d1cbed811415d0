"""Client TLS contexts: one per purpose and CA file, made again when the file changes."""

from __future__ import annotations

import os
import shutil
import ssl

import pytest
import requests

from relay365.standins.fakeidp import FakeIdP
from relay365.tlsutil import client_context, https_context
from relay365.tokens.http import TokenHTTPSession


def test_one_context_per_ca_file_shared_by_every_caller(certs, tmp_path):
    other = tmp_path / "other.pem"
    shutil.copy(certs.ca_file, other)

    assert client_context(certs.ca_file) is client_context(certs.ca_file)
    assert https_context(certs.ca_file) is https_context(certs.ca_file)
    assert client_context(None) is client_context(None)
    assert client_context(other) is not client_context(certs.ca_file)
    assert client_context(None) is not client_context(certs.ca_file)


def test_mail_and_https_contexts_are_apart(certs):
    """httpcore and urllib3 set ALPN http/1.1 on the context they get: a mail handshake must not
    offer it, so the HTTPS clients never get the mail context."""
    assert client_context(certs.ca_file) is not https_context(certs.ca_file)


def test_a_changed_ca_file_is_read_again(certs, tmp_path):
    ca = tmp_path / "ca.pem"
    shutil.copy(certs.ca_file, ca)
    before = client_context(ca)
    assert len(before.get_ca_certs()) >= 1

    ca.write_bytes(ca.read_bytes() + b"\n")  # the operator replaced the file (reload follows)
    os.utime(ca, ns=(1, 1))
    after = client_context(ca)

    assert after is not before
    assert after is client_context(ca)


def test_a_changed_system_bundle_is_read_again(certs, tmp_path, monkeypatch):
    """The system store is part of every context: a reload after update-ca-certificates (or a
    new SSL_CERT_FILE) trusts what is there now."""
    bundle = tmp_path / "system.pem"
    shutil.copy(certs.ca_file, bundle)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    before = client_context(None)
    assert before is client_context(None)

    bundle.write_bytes(bundle.read_bytes() + b"\n")
    os.utime(bundle, ns=(1, 1))

    assert client_context(None) is not before


def test_every_context_verifies(certs):
    for ctx in (client_context(certs.ca_file), https_context(certs.ca_file), client_context(None)):
        assert ctx.verify_mode is ssl.CERT_REQUIRED
        assert ctx.check_hostname
        assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
        assert any(c["subject"] == c["issuer"] for c in ctx.get_ca_certs())


def test_a_missing_ca_file_still_fails_where_it_is_read(tmp_path):
    with pytest.raises(FileNotFoundError):
        client_context(tmp_path / "nowhere.pem")


def test_token_session_trusts_its_context_and_loads_nothing_into_it(certs, monkeypatch):
    """requests would hand urllib3 certifi's path for every new connection, and urllib3 would
    load it into the shared context each time; the session's context is already complete."""
    loads: list[object] = []
    real = ssl.SSLContext.load_verify_locations

    def counted(self, *args, **kwargs):
        loads.append(args or kwargs)
        return real(self, *args, **kwargs)

    with FakeIdP(certs.cert_file, certs.key_file) as idp:
        url = f"{idp.url}/common/v2.0/.well-known/openid-configuration"
        https_context(certs.ca_file)
        monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
        for _ in range(3):
            with TokenHTTPSession(certs.ca_file) as session:  # a new pool: a new connection
                assert session.get(url).ok
        assert loads == []
        monkeypatch.undo()
        with TokenHTTPSession(None) as untrusting, pytest.raises(requests.exceptions.SSLError):
            untrusting.get(url)  # the test CA is not in the system store: still verified
