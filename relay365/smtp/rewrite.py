"""Sender rewriting: Office 365 lets a mailbox send only as itself (or with SendAs rights).

`rewrite_from(message, mailbox)` replaces the From header's address with the mailbox, keeps the
original display name, and keeps the original address as Reply-To when the message has none, so
replies still reach the person or device that sent it. It works on the raw header block: the body is
passed through byte for byte (re-serialising MIME would change signatures and attachments).
"""

from __future__ import annotations

import re
from email.utils import formataddr, getaddresses

from ..addrspec import is_plain
from ..delivery.message import Body, BytesMessage, Message, WithHead, read_all

HEADER_END = re.compile(rb"\r?\n\r?\n")  # the blank line after the header block
_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.ASCII)


def split_headers(message: bytes) -> tuple[list[bytes], bytes]:
    """Header fields (each with its folded continuation lines and line ending), and the rest: the
    blank line and the body, untouched. A message that starts with a blank line has no headers."""
    if message.startswith((b"\r\n", b"\n")):
        return [], message
    m = HEADER_END.search(message)
    cut = message.index(b"\n", m.start()) + 1 if m else len(message)
    fields: list[bytes] = []
    for line in message[:cut].splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    if fields and not fields[-1].endswith(b"\n"):
        fields[-1] += b"\r\n"
    return fields, message[cut:]


def _name(field: bytes) -> bytes:
    m = _FIELD.match(field)
    return m.group(1).lower() if m else b""


def _value(field: bytes) -> str:
    raw = field.split(b":", 1)[1] if b":" in field else b""
    return re.sub(r"\r?\n[ \t]", " ", raw.decode("utf-8", "replace")).strip()


def _formataddr(display: str, address: str) -> str:
    """formataddr, which raises on a non-ASCII address; RFC 6532 (SMTPUTF8) headers carry one as is."""
    if address.isascii():
        return formataddr((display, address))
    return formataddr((display, ""))[:-2] + f"<{address}>" if display else address


def from_address(value: str) -> tuple[str, str]:
    """(display name, address) of a From header's value, as `getaddresses` reads it - for a bare
    everyday address (`a@b`, `<a@b>`) without running it (`addrspec`)."""
    bare = value[1:-1] if value.startswith("<") and value.endswith(">") else value
    if is_plain(bare):
        return "", bare
    found = getaddresses([value])
    return found[0] if found else ("", "")


def rewrite_from(message: bytes, mailbox: str) -> bytes:
    fields, rest = split_headers(message)
    eol = b"\n" if fields and not fields[0].endswith(b"\r\n") else b"\r\n"
    froms = [f for f in fields if _name(f) == b"from"]
    display, address = from_address(_value(froms[0])) if froms else ("", "")
    index = fields.index(froms[0]) if froms else 0  # the new From goes where the first one was
    if index == 0 and fields and fields[0][:1] in (b" ", b"\t"):
        index = 1  # a stray continuation line first: before it, it would fold into our From
    out = [f for f in fields if _name(f) != b"from"]
    out.insert(index, b"From: " + _formataddr(display, mailbox).encode("utf-8") + eol)
    has_reply_to = any(_name(f) == b"reply-to" for f in fields)
    if address and address.lower() != mailbox.lower() and not has_reply_to:
        out.insert(index + 1, b"Reply-To: " + _formataddr(display, address).encode("utf-8") + eol)
    if not rest.startswith((b"\r\n", b"\n")):
        rest = eol + rest  # a message that was all headers still needs the blank line
    return b"".join(out) + rest


HEAD_MAX = 256 * 1024  # a header block is read into memory up to this size to be rewritten


def rewrite_message(body: Body, mailbox: str) -> Message:
    """`rewrite_from` on a `Body`: only the header block is read and rewritten, the rest follows
    from where it is (memory or file) without a copy."""
    head = body.head(HEAD_MAX)
    m = HEADER_END.search(head)
    if m:
        cut = m.end()
        return WithHead(body, rewrite_from(head[:cut], mailbox), cut)
    # no blank line in the first 256 KiB: all headers (a short message), or an absurd header block
    return BytesMessage(rewrite_from(head if body.size <= HEAD_MAX else read_all(body), mailbox))
