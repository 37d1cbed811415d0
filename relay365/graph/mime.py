"""Make a message's headers say what its SMTP envelope says, for Graph's MIME `sendMail`.

Graph has no envelope: it sends to the addresses in To, Cc and Bcc, and strips Bcc from the copy
it delivers. SMTP semantics are that the envelope (RCPT TO) decides who receives a message, so:

- an envelope recipient not in To/Cc is put into a Bcc header (Graph delivers it, nobody sees it);
- a header recipient (To/Cc/Bcc) that is not in the envelope is taken out of that header. The
  client did not ask us to send to it (a client that sends one copy per recipient, or a forward,
  names others in To), and delivering to an address the client never gave in RCPT TO is worse
  than a To line that no longer lists it. Such a drop is reported (`Prepared.dropped`) for the log.

Only the To/Cc/Bcc header fields are rewritten, and only when their addresses change; every other
byte of the message (all other headers, the body, line endings) is kept as it came. Pure code.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from email.utils import formataddr, getaddresses

# Graph refuses requests over about 4 MB. sendMail carries the MIME base64-encoded (4 bytes per 3),
# so 3,000,000 bytes of MIME make a 4,000,000-byte body; larger messages need a draft plus upload
# sessions for their large attachments.
SENDMAIL_MAX_MIME = 3_000_000
RECIPIENT_HEADERS = (b"to", b"cc", b"bcc")
_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:")


@dataclass(frozen=True)
class Prepared:
    data: bytes  # the message with To/Cc/Bcc matching the envelope
    dropped: tuple[str, ...]  # header recipients that were not in the envelope
    bcc: tuple[str, ...]  # envelope recipients that Graph gets as Bcc

    @property
    def fits_sendmail(self) -> bool:
        return len(self.data) <= SENDMAIL_MAX_MIME

    def sendmail_body(self) -> bytes:
        return base64.b64encode(self.data)


def split_head(data: bytes) -> tuple[list[bytes], bytes]:
    """The header fields (each with its folded lines and line ending) and the rest, byte exact."""
    fields: list[bytes] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        line = data[pos:] if end < 0 else data[pos:end + 1]
        if line in (b"\r\n", b"\n"):
            return fields, data[pos:]
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        elif _FIELD.match(line):
            fields.append(line)
        else:
            break  # not a header line: the body starts here (no blank line in between)
        pos += len(line)
    return fields, data[pos:]


def _name(field: bytes) -> bytes:
    m = _FIELD.match(field)
    return m.group(1).lower() if m else b""


def _addresses(fields: list[bytes]) -> list[tuple[str, str]]:
    values = [f.split(b":", 1)[1].decode("utf-8", "replace") for f in fields]
    return [(n, a) for n, a in getaddresses(values) if "@" in a]


def prepare(data: bytes, rcpts: tuple[str, ...] | list[str]) -> Prepared:
    """Rewrite To/Cc/Bcc so that Graph sends to exactly `rcpts` (compared case-insensitively)."""
    fields, rest = split_head(data)
    first = data.find(b"\n")
    eol = b"\r\n" if first > 0 and data[first - 1:first] == b"\r" else b"\n"
    wanted = {r.lower() for r in rcpts}
    visible: set[str] = set()
    dropped: list[str] = []
    out: list[bytes] = []
    for field in fields:
        name = _name(field)
        if name not in RECIPIENT_HEADERS:
            out.append(field)
            continue
        pairs = _addresses([field])
        dropped += [a for _, a in pairs if a.lower() not in wanted]
        if name == b"bcc":
            continue  # rebuilt below from the envelope
        kept = [(n, a) for n, a in pairs if a.lower() in wanted]
        visible.update(a.lower() for _, a in kept)
        if len(kept) == len(pairs):
            out.append(field)
        elif kept:
            value = ", ".join(formataddr(p) for p in kept)
            out.append(field.split(b":", 1)[0] + b": " + value.encode("utf-8") + eol)
    bcc = tuple(dict.fromkeys(r for r in rcpts if r.lower() not in visible))
    if bcc:
        out.append(b"Bcc: " + ", ".join(bcc).encode("utf-8") + eol)
    return Prepared(b"".join(out) + rest, tuple(dict.fromkeys(dropped)), bcc)


@dataclass(frozen=True)
class Addressing:
    """Who a Graph draft goes to, by the same rules as `prepare`."""

    to: tuple[tuple[str, str], ...]  # (display name, address) kept from To
    cc: tuple[tuple[str, str], ...]
    bcc: tuple[str, ...]
    dropped: tuple[str, ...]


def addressing(head: bytes, rcpts: tuple[str, ...] | list[str]) -> Addressing:
    """To/Cc as the header has them, less what is not in the envelope; the rest of the envelope
    as Bcc. Reads only the message's header block."""
    fields, _ = split_head(head + b"\r\n")
    wanted = {r.lower() for r in rcpts}
    kept: dict[bytes, list[tuple[str, str]]] = {b"to": [], b"cc": []}
    dropped: list[str] = []
    for field in fields:
        name = _name(field)
        if name in RECIPIENT_HEADERS:
            for pair in _addresses([field]):
                if pair[1].lower() not in wanted:
                    dropped.append(pair[1])
                elif name in kept:
                    kept[name].append(pair)
    visible = {a.lower() for pairs in kept.values() for _, a in pairs}
    bcc = tuple(dict.fromkeys(r for r in rcpts if r.lower() not in visible))
    return Addressing(tuple(kept[b"to"]), tuple(kept[b"cc"]), bcc, tuple(dict.fromkeys(dropped)))
