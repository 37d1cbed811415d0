"""A small, deterministic mutation fuzzer: the fallback when atheris is not installed, and the
engine of the short run in the test suite (no subprocess, a fixed seed, so a failure reproduces).

Not coverage-guided: it mutates the seed corpus (bit flips, byte and token insertions, deletions,
duplications, splices of two seeds, CRLF games) and keeps every input it made that raised. atheris
(`fuzz/run --engine atheris`) is the coverage-guided one.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

# Bytes that matter to the parsers under test: line ends, the SMTP/IMAP/POP3 syntax, literals,
# base64, PROXY, YAML and JSON structure.
TOKENS = (
    b"\r\n", b"\n", b"\r", b"\0", b" ", b"\t", b".", b"\r\n.\r\n", b"\n.\n", b"{", b"}", b"{0}",
    b"{4294967296}", b"{5+}", b"~{3}", b"\"", b"\\", b"(", b")", b"[", b"]", b"<", b">", b":", b"=",
    b"*", b"+", b"-", b"%", b"@", b"AUTH PLAIN ", b"AUTH LOGIN ", b"MAIL FROM:<a@b>", b"RCPT TO:<c@d>",
    b"DATA\r\n", b"BDAT 3 LAST\r\n", b"STARTTLS\r\n", b"EHLO x\r\n", b"HELO x\r\n", b"RSET\r\n",
    b"a1 LOGIN ", b"a1 AUTHENTICATE PLAIN ", b"a1 ID (", b"USER ", b"PASS ", b"STLS\r\n", b"CAPA\r\n",
    b"AGFsaWNlAHB3", b"AHNjYW5uZXIAcHc=", b"=", b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN",
    b"\r\n\r\n\0\r\nQUIT\n", b"::ffff:127.0.0.1", b"127.0.0.1", b"65535", b"99999999999999999999",
    b"-1", b"1e9999", b"NaN", b"null", b"true", b"[]", b"{}", b"- ", b": ", b"&a", b"*a", b"!!", b"${",
    b"\xff", b"\xc3\xa9", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\x1b",
)


@dataclass
class Result:
    target: str
    inputs: int = 0
    seconds: float = 0.0
    crashes: list[tuple[bytes, str]] = field(default_factory=list)


class Mutator:
    def __init__(self, seeds: list[bytes], rng: random.Random, max_len: int = 4096) -> None:
        self.seeds = seeds or [b""]
        self.rng = rng
        self.max_len = max_len

    def mutate(self, data: bytes) -> bytes:
        buf = bytearray(data)
        for _ in range(self.rng.choice((1, 1, 2, 3, 5, 8))):
            self._one(buf)
        return bytes(buf[: self.max_len])

    def _one(self, buf: bytearray) -> None:
        r, n = self.rng, len(buf)
        op = r.randrange(9)
        pos = r.randrange(n + 1)
        if op == 0 and n:  # flip a bit
            i = r.randrange(n)
            buf[i] ^= 1 << r.randrange(8)
        elif op == 1:  # a random byte
            buf[pos:pos] = bytes([r.randrange(256)])
        elif op in (2, 3):  # a token
            buf[pos:pos] = r.choice(TOKENS)
        elif op == 4 and n:  # delete a run
            del buf[pos:pos + r.randrange(1, 16)]
        elif op == 5 and n:  # duplicate a run (repetition finds limits and counters)
            run = buf[pos:pos + r.randrange(1, 64)]
            buf[pos:pos] = bytes(run) * r.randrange(1, 40)
        elif op == 6:  # splice in a piece of another seed
            other = r.choice(self.seeds)
            a = r.randrange(len(other) + 1)
            buf[pos:pos] = other[a:a + r.randrange(1, 200)]
        elif op == 7 and n:  # an interesting number where a digit is
            digits = [i for i, c in enumerate(buf) if 48 <= c <= 57]
            if digits:
                i = r.choice(digits)
                buf[i:i + 1] = r.choice((b"0", b"-1", b"4294967296", b"65536", b"99999999999", b"9" * 40))
        elif op == 8 and n:  # swap line ends
            i = r.randrange(n)
            buf[i:i] = r.choice((b"\r", b"\n", b"\r\n"))


def run(name: str, target: Callable[[bytes], None], seeds: list[bytes], inputs: int,
        seed: int = 0, max_crashes: int = 5) -> Result:
    """Every seed once, then mutations until `inputs` inputs ran. Crashes are kept, not raised."""
    rng = random.Random(f"{name}:{seed}")
    mutator = Mutator(seeds, rng)
    result = Result(name)
    started = time.monotonic()
    pool = list(seeds) or [b""]
    for i in range(inputs):
        data = seeds[i] if i < len(seeds) else mutator.mutate(rng.choice(pool))
        try:
            target(data)
        except Exception:
            result.crashes.append((data, traceback.format_exc()))
            if len(result.crashes) >= max_crashes:
                result.inputs = i + 1
                break
        else:
            if rng.random() < 0.05 and len(pool) < 2000:
                pool.append(data)  # walk further from the seeds now and then
        result.inputs = i + 1
    result.seconds = time.monotonic() - started
    return result
