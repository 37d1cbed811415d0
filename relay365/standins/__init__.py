"""Stand-ins for Microsoft's side of the wire, for `relay365 demo` and for tests.

The daemon never imports this package (tests/test_architecture.py checks it); only the CLI's `demo`
command does, lazily. `FakeIdP` (fakeidp.py) plays Entra ID for real msal over HTTPS; `FakeO365SMTP`
(fakeo365.py) plays smtp.office365.com (STARTTLS, then AUTH XOAUTH2 checked against the FakeIdP's
tokens). All bind 127.0.0.1 only. `make_test_certs` (certs.py) mints a throwaway CA and a server
certificate for loopback with `cryptography`.
"""

from __future__ import annotations

from .certs import TestCerts, make_test_certs
from .fakeidp import FakeIdP
from .fakeo365 import FakeO365SMTP, ReceivedMessage

__all__ = ["FakeIdP", "FakeO365SMTP", "ReceivedMessage", "TestCerts", "make_test_certs"]
