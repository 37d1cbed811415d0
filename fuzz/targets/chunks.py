"""Splitting one input into chunks, deterministically (the same input always splits the same way),
so a sans-IO core can be fed whole and in pieces and the two compared."""

from __future__ import annotations

import random
import zlib


def chunked(data: bytes) -> list[bytes]:
    rng = random.Random(zlib.crc32(data))
    out, i = [], 0
    while i < len(data):
        n = rng.choice((1, 1, 2, 3, 7, 64, 512))
        out.append(data[i:i + n])
        i += n
    return out


def check_wire(data: bytes, where: str) -> None:
    """What a server sends is CRLF-terminated lines with no stray CR or LF inside: client input
    echoed into a reply must never start a line of its own (reply injection)."""
    if not data.endswith(b"\r\n"):
        raise AssertionError(f"{where}: reply does not end in CRLF: {data[-80:]!r}")
    if data.count(b"\n") != data.count(b"\r\n") or data.count(b"\r") != data.count(b"\r\n"):
        raise AssertionError(f"{where}: bare CR or LF in a reply: {data[:200]!r}")
