"""SASL codecs: what local clients send (PLAIN, LOGIN) and what we send upstream (XOAUTH2).

Pure functions; no I/O. Decoders raise `SaslError` with a short reason that is safe to log (it never
contains the credentials).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from .secret import Secret


class SaslError(ValueError):
    pass


@dataclass(frozen=True)
class Credentials:
    username: str
    password: Secret
    authzid: str = ""


def b64decode_strict(text: str | bytes) -> bytes:
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    raw = raw.strip()
    if raw == b"=":  # RFC 4954: "=" is an empty initial response
        return b""
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise SaslError("not valid base64") from None


def decode_plain(message: bytes) -> Credentials:
    """RFC 4616: [authzid] NUL authcid NUL passwd. An authzid other than the user is refused."""
    parts = message.split(b"\0")
    if len(parts) != 3:
        raise SaslError("PLAIN message must have three NUL-separated parts")
    try:
        authzid, user, password = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError:
        raise SaslError("PLAIN message is not UTF-8") from None
    if not user:
        raise SaslError("empty user name")
    if authzid and authzid != user:
        raise SaslError("authorization identity differs from the user (proxy login is not supported)")
    return Credentials(user, Secret(password), authzid)


def decode_text(message: bytes, what: str) -> str:
    """One LOGIN-mechanism step (user name or password)."""
    try:
        return message.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError(f"{what} is not UTF-8") from None


def xoauth2_initial_response(mailbox: str, token: Secret) -> str:
    """base64 of `user=<mailbox>^Aauth=Bearer <token>^A^A`, as Exchange Online expects."""
    raw = f"user={mailbox}\x01auth=Bearer {token.reveal()}\x01\x01".encode()
    return base64.b64encode(raw).decode("ascii")


def decode_xoauth2_error(challenge: str | bytes) -> dict[str, object]:
    """The base64 JSON an XOAUTH2 server sends on failure ({"status": "401", ...}); {} if unreadable."""
    try:
        data = json.loads(b64decode_strict(challenge).decode("utf-8"))
    except (SaslError, UnicodeDecodeError, ValueError, RecursionError):  # "[[[[..." nests too deep
        return {}
    return data if isinstance(data, dict) else {}
