"""A throwaway CA and one server certificate for tests, made with trustme at test time.

Keys are written into the test's own directory and never committed. The server certificate is valid
for every name a test might dial on loopback (127.0.0.1, ::1, localhost), so one PKI serves the fake
identity provider, the relay's listeners and the Dovecot/Postfix upstream alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import trustme

SERVER_NAMES = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class PKI:
    ca_file: Path  # PEM CA certificate: what clients trust
    cert_file: Path  # PEM server certificate chain (leaf + CA)
    key_file: Path  # PEM private key of the server certificate, mode 0600


def make_pki(directory: Path | str, names: tuple[str, ...] = SERVER_NAMES) -> PKI:
    """Create a CA and a server certificate for `names` and write them into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="relay365 test CA")
    server = ca.issue_cert(*names)
    pki = PKI(
        ca_file=directory / "ca.pem",
        cert_file=directory / "server.pem",
        key_file=directory / "server.key",
    )
    ca.cert_pem.write_to_path(str(pki.ca_file))
    server.private_key_pem.write_to_path(str(pki.key_file))
    os.chmod(pki.key_file, 0o600)
    with open(pki.cert_file, "wb") as chain:
        for blob in server.cert_chain_pems:
            chain.write(blob.bytes())
    return pki
