"""Stand-ins for Microsoft's side of the wire, for `relay365 demo` and for tests.

`FakeIdP` (fakeidp.py) plays Entra ID for real msal over HTTPS; `FakeO365SMTP` (fakeo365.py) plays
smtp.office365.com (STARTTLS, then AUTH XOAUTH2 checked against the FakeIdP's tokens). Both bind
127.0.0.1 only. `make_test_certs` mints a throw-away CA and a server certificate for 127.0.0.1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme

from .fakeidp import FakeIdP
from .fakeo365 import FakeO365SMTP, ReceivedMessage

__all__ = ["FakeIdP", "FakeO365SMTP", "ReceivedMessage", "TestCerts", "make_test_certs"]


@dataclass(frozen=True)
class TestCerts:
    ca_file: Path  # trust this to talk to the fakes
    cert_file: Path
    key_file: Path

    __test__ = False  # not a pytest test class, whatever its name says


def make_test_certs(directory: Path) -> TestCerts:
    """A fresh CA and a certificate for 127.0.0.1 and localhost, written as PEM into `directory`."""
    ca = trustme.CA(organization_name="relay365 test CA")
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    certs = TestCerts(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca.cert_pem.write_to_path(str(certs.ca_file))
    leaf.cert_chain_pems[0].write_to_path(str(certs.cert_file))
    for pem in leaf.cert_chain_pems[1:]:
        pem.write_to_path(str(certs.cert_file), append=True)
    leaf.private_key_pem.write_to_path(str(certs.key_file))
    certs.key_file.chmod(0o600)
    return certs
