"""Transcript helpers for the IMAP core tests."""

from __future__ import annotations

from collections.abc import Callable

from relay365.imap.core import Effect, ImapPreauth, SendToClient

Feed = Callable[[ImapPreauth, bytes], list[Effect]]


def merge(effects: list[Effect]) -> list[Effect]:
    """Adjacent SendToClient effects joined, so how replies were batched doesn't matter."""
    merged: list[Effect] = []
    for effect in effects:
        if merged and isinstance(effect, SendToClient) and isinstance(merged[-1], SendToClient):
            merged[-1] = SendToClient(merged[-1].data + effect.data)
        else:
            merged.append(effect)
    return merged


def feed_whole(core: ImapPreauth, data: bytes) -> list[Effect]:
    return merge(core.receive_data(data))


def feed_bytewise(core: ImapPreauth, data: bytes) -> list[Effect]:
    effects: list[Effect] = []
    for i in range(len(data)):
        effects += core.receive_data(data[i:i + 1])
    return merge(effects)


def make(*, tls_active: bool = False, starttls_available: bool = True,
         allow_plaintext_auth: bool = True) -> ImapPreauth:
    return ImapPreauth(tls_active=tls_active, starttls_available=starttls_available,
                       allow_plaintext_auth=allow_plaintext_auth)


def sent(*lines: bytes) -> SendToClient:
    """One SendToClient of CRLF-terminated `lines`."""
    return SendToClient(b"".join(line + b"\r\n" for line in lines))
