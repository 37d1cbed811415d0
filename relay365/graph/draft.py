"""A MIME message as a Graph draft: the JSON of `POST /users/{id}/messages`, and its attachments.

Theory of operation. Over `SENDMAIL_MAX_MIME` a message cannot go in one `sendMail`, so it is
rebuilt as a Graph message: `plan(scan)` picks the body (the first text/html part that is not an
attachment, else the first text/plain; the other half of a multipart/alternative is left out, as
Graph writes its own) and makes every other leaf part an `Attachment` (inline ones keep their
Content-ID, so `cid:` links in the HTML still work). `message_json` builds the draft from the
header block: Subject, From, Sender, Reply-To, Message-ID, the recipients as the envelope decides
them (`mime.addressing`), and the `X-` headers (the only ones Graph lets a client set). An
attachment under `SMALL_ATTACHMENT` goes inline in the draft (or in one `POST .../attachments`
when the draft is full, `DRAFT_BUDGET`); larger ones through an upload session, PUT in
`UPLOAD_CHUNK` pieces (a multiple of 320 KiB, as Graph asks of every piece but the last).

`save_to_sent: false`: a draft that is sent always moves to Sent Items, and `send` has no
`saveToSentItems`. The draft gets the MAPI property PidTagDeleteAfterSubmit (0x0E01, Boolean)
set, which tells Exchange to delete the message once it is submitted instead of moving it
(MS-OXOMSG 3.3.5.1.3; Graph sets MAPI properties as `singleValueExtendedProperties`). Pure code.
"""

from __future__ import annotations

import base64
import mimetypes
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Any, Literal

from .mime import Addressing
from .parts import Leaf, Scan, parse_head

SMALL_ATTACHMENT = 3_000_000  # bytes: under this, an attachment is posted; from it, uploaded
DRAFT_BUDGET = 3_000_000  # base64 bytes of attachments carried in the draft itself (cap ~4 MB)
PIECE = 320 * 1024  # upload pieces are multiples of this (all but the last)
UPLOAD_CHUNK = 8 * PIECE  # 2.5 MiB per PUT
MAX_UPLOAD = 150 * 1024 * 1024  # Graph's largest attachment by upload session
MAX_BODY = 2_000_000  # characters of body text a draft request can carry with room to spare
MAX_X_HEADERS = 20
DELETE_AFTER_SUBMIT = "Boolean 0x0E01"  # PidTagDeleteAfterSubmit


@dataclass(frozen=True)
class Attachment:
    leaf: Leaf
    name: str
    content_type: str
    encoding: str  # Content-Transfer-Encoding
    inline: bool
    content_id: str | None


@dataclass(frozen=True)
class Plan:
    body: Leaf | None
    body_type: Literal["text", "html"]
    attachments: tuple[Attachment, ...]


def _is_attachment(leaf: Leaf) -> bool:
    h = leaf.headers
    return h.get_content_disposition() == "attachment" or h.get_filename() is not None


def plan(scan: Scan) -> Plan:
    """Which part is the body, and which are attachments."""
    texts = [leaf for leaf in scan.leaves if leaf.headers.get_content_type() in
             ("text/plain", "text/html") and not _is_attachment(leaf)]
    html = [t for t in texts if t.headers.get_content_type() == "text/html"]
    body = html[0] if html else texts[0] if texts else None
    skipped = {id(body)}
    if body is not None and "alternative" in body.parents:  # the plain text twin of the HTML
        skipped |= {id(t) for t in texts if _alternative(t.parents) == _alternative(body.parents)}
    attachments = tuple(attachment(leaf, n) for n, leaf in enumerate(scan.leaves, 1)
                        if id(leaf) not in skipped)
    return Plan(body, "html" if html else "text", attachments)


def _alternative(parents: tuple[str, ...]) -> tuple[str, ...]:
    """The path to the innermost multipart/alternative (empty when there is none)."""
    for depth in range(len(parents) - 1, -1, -1):
        if parents[depth] == "alternative":
            return parents[:depth + 1]
    return ()


def attachment(leaf: Leaf, n: int) -> Attachment:
    h = leaf.headers
    content_type = h.get_content_type()
    name = h.get_filename() or h.get_param("name")
    if not isinstance(name, str) or not name:
        name = f"attachment-{n}{mimetypes.guess_extension(content_type) or '.bin'}"
        if content_type == "message/rfc822":
            name = f"message-{n}.eml"
    cid = h.get("content-id")
    content_id = str(cid).strip().strip("<>") if cid else None
    inline = content_id is not None and h.get_content_disposition() != "attachment"
    return Attachment(leaf, name, content_type, str(h.get("content-transfer-encoding", "7bit")),
                      inline, content_id)


def body_text(leaf: Leaf, content: bytes) -> str:
    return content.decode(leaf.headers.get_content_charset() or "utf-8", "replace")


def _recipient(name: str, address: str) -> dict[str, Any]:
    return {"emailAddress": {"name": name, "address": address} if name else {"address": address}}


def _one(value: object) -> list[dict[str, Any]]:
    pairs = [(n, a) for n, a in getaddresses([str(value)]) if "@" in a] if value else []
    return [_recipient(n, a) for n, a in pairs]


def _x_headers(head: bytes) -> list[dict[str, str]]:
    parsed = parse_head(head)
    out = [{"name": k, "value": str(v)[:995]} for k, v in parsed.items() if k.lower().startswith("x-")]
    return out[:MAX_X_HEADERS]


def message_json(head: bytes, to: Addressing, body_type: str, body: str, *, save_to_sent: bool,
                 attachments: list[dict[str, Any]]) -> dict[str, Any]:
    """The draft: what the recipient sees of the header, and the body."""
    h = parse_head(head)
    draft: dict[str, Any] = {
        "subject": str(h.get("subject", "")),
        "body": {"contentType": body_type, "content": body},
        "toRecipients": [_recipient(n, a) for n, a in to.to],
        "ccRecipients": [_recipient(n, a) for n, a in to.cc],
        "bccRecipients": [_recipient("", a) for a in to.bcc],
    }
    for key, header in (("from", "from"), ("sender", "sender")):
        if found := _one(h.get(header)):
            draft[key] = found[0]
    if reply_to := _one(h.get("reply-to")):
        draft["replyTo"] = reply_to
    if h.get("message-id"):
        draft["internetMessageId"] = str(h["message-id"]).strip()
    if x := _x_headers(head):
        draft["internetMessageHeaders"] = x
    if not save_to_sent:
        draft["singleValueExtendedProperties"] = [{"id": DELETE_AFTER_SUBMIT, "value": "true"}]
    if attachments:
        draft["attachments"] = attachments
    return draft


def file_attachment(att: Attachment, content: bytes) -> dict[str, Any]:
    """A small attachment as Graph's `fileAttachment`, its bytes base64 in `contentBytes`."""
    out: dict[str, Any] = {"@odata.type": "#microsoft.graph.fileAttachment", "name": att.name,
                           "contentType": att.content_type, "isInline": att.inline,
                           "contentBytes": base64.b64encode(content).decode("ascii")}
    if att.content_id:
        out["contentId"] = att.content_id
    return out


def upload_item(att: Attachment, size: int) -> dict[str, Any]:
    """The body of `createUploadSession` for a large attachment."""
    item: dict[str, Any] = {"attachmentType": "file", "name": att.name, "size": size,
                            "contentType": att.content_type, "isInline": att.inline}
    if att.content_id:
        item["contentId"] = att.content_id
    return {"AttachmentItem": item}


def content_range(start: int, length: int, total: int) -> str:
    return f"bytes {start}-{start + length - 1}/{total}"

