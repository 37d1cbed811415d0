"""Drafts, attachments and upload sessions for the Graph stand-in (`fakegraph.FakeGraph`).

What Graph does, as far as relay365 uses it:

* `POST /users/{m}/messages` creates a draft from Graph's message JSON (201, with its `id`),
  small `attachments` included;
* `POST .../messages/{id}/attachments` adds one `fileAttachment` (`contentBytes` base64, < 3 MB);
* `POST .../attachments/createUploadSession` (`AttachmentItem` with name, size, contentType)
  answers an `uploadUrl` (which needs no bearer token) and `expirationDateTime`; each `PUT` of it
  carries `Content-Range: bytes a-b/total`, must start where the last one ended (else 416), say
  the length it carries, use the size of the session, and - all but the last - be a multiple of
  320 KiB (else 400). Intermediate answers are 200 with `nextExpectedRanges`, the last one 201.
  An expired session is 404;
* `POST .../messages/{id}/send` (202) turns the draft into MIME (headers, the body, every
  attachment) and returns it with its recipients for delivery; it is kept in Sent Items unless the
  draft has PidTagDeleteAfterSubmit (`Boolean 0x0E01`) true. `DELETE .../messages/{id}` is 204.

The caller (`FakeGraph.handle`) holds its lock around every call; time is a parameter.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

PIECE = 320 * 1024
MAX_ATTACHMENT_POST = 3 * 1024 * 1024
UPLOAD_MIN, UPLOAD_MAX = 1, 150 * 1024 * 1024
_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
Answer = tuple[int, dict[str, Any] | None, dict[str, str]]


def error(status: int, code: str, message: str) -> Answer:
    return status, {"error": {"code": code, "message": message}}, {}


@dataclass
class File:
    name: str
    content_type: str
    data: bytes
    inline: bool = False
    content_id: str | None = None


@dataclass
class Draft:
    mailbox: str
    message: dict[str, Any]
    files: list[File] = field(default_factory=list)


@dataclass
class Session:
    draft_id: str
    item: dict[str, Any]
    size: int
    expires: float
    data: bytearray = field(default_factory=bytearray)


@dataclass(frozen=True)
class Sent:
    mailbox: str
    rcpts: list[str]
    mime: bytes
    keep: bool  # a copy stays in Sent Items


def _file(payload: dict[str, Any]) -> File:
    return File(str(payload.get("name") or "attachment"),
                str(payload.get("contentType") or "application/octet-stream"),
                base64.b64decode(str(payload.get("contentBytes", "")), validate=True),
                bool(payload.get("isInline")), payload.get("contentId"))


class Drafts:
    def __init__(self, upload_url: str, session_ttl: float = 900.0) -> None:
        self.upload_url = upload_url  # PUT {upload_url}/{token}
        self.session_ttl = session_ttl
        self.drafts: dict[str, Draft] = {}
        self.sessions: dict[str, Session] = {}
        self.pieces: list[tuple[int, int]] = []  # (start, length) of every accepted PUT

    def create(self, mailbox: str, payload: dict[str, Any]) -> Answer:
        try:
            files = [_file(a) for a in payload.pop("attachments", [])]
        except (binascii.Error, ValueError, AttributeError):
            return error(400, "ErrorInvalidRequest", "Invalid contentBytes.")
        draft_id = "AAMk" + uuid.uuid4().hex
        self.drafts[draft_id] = Draft(mailbox.lower(), payload, files)
        return 201, {"id": draft_id, "isDraft": True}, {}

    def _draft(self, mailbox: str, draft_id: str) -> Draft | None:
        draft = self.drafts.get(draft_id)
        return draft if draft is not None and draft.mailbox == mailbox.lower() else None

    def attach(self, mailbox: str, draft_id: str, payload: dict[str, Any]) -> Answer:
        draft = self._draft(mailbox, draft_id)
        if draft is None:
            return error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        try:
            file = _file(payload)
        except (binascii.Error, ValueError):
            return error(400, "ErrorInvalidRequest", "Invalid contentBytes.")
        if len(file.data) > MAX_ATTACHMENT_POST:
            return error(413, "ErrorAttachmentSizeLimitExceeded", "Use an upload session.")
        draft.files.append(file)
        return 201, {"id": uuid.uuid4().hex}, {}

    def open_session(self, mailbox: str, draft_id: str, payload: dict[str, Any], now: float) -> Answer:
        if self._draft(mailbox, draft_id) is None:
            return error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        item = payload.get("AttachmentItem")
        if not isinstance(item, dict) or item.get("attachmentType") != "file":
            return error(400, "ErrorInvalidRequest", "AttachmentItem with attachmentType file needed.")
        size = item.get("size")
        if not isinstance(size, int) or not UPLOAD_MIN <= size <= UPLOAD_MAX:
            return error(400, "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize", "Bad size.")
        token = uuid.uuid4().hex
        self.sessions[token] = Session(draft_id, item, size, now + self.session_ttl)
        return 201, {"uploadUrl": f"{self.upload_url}/{token}", "nextExpectedRanges": ["0-"],
                     "expirationDateTime": formatdate(now + self.session_ttl, usegmt=True)}, {}

    def put(self, token: str, content_range: str, body: bytes, now: float) -> Answer:
        session = self.sessions.get(token)
        if session is None or now > session.expires:
            self.sessions.pop(token, None)
            return error(404, "ItemNotFound", "The upload session was not found or has expired.")
        m = _RANGE.match(content_range.strip())
        if m is None:
            return error(400, "InvalidContentRange", "Content-Range: bytes a-b/total needed.")
        start, end, total = map(int, m.groups())
        length = end - start + 1
        if total != session.size or length != len(body) or length <= 0:
            return error(400, "InvalidContentRange", "Content-Range does not match the bytes sent.")
        if start != len(session.data):
            return 416, {"error": {"code": "InvalidRange", "message": "Not the next expected range"},
                         "nextExpectedRanges": [f"{len(session.data)}-"]}, {}
        if end + 1 < total and length % PIECE:
            return error(400, "InvalidChunkSize", "Pieces other than the last: multiples of 320 KiB.")
        session.data += body
        self.pieces.append((start, length))
        if len(session.data) < session.size:
            return 200, {"nextExpectedRanges": [f"{len(session.data)}-"],
                         "expirationDateTime": formatdate(session.expires, usegmt=True)}, {}
        del self.sessions[token]
        draft = self.drafts.get(session.draft_id)
        if draft is None:
            return error(404, "ErrorItemNotFound", "The draft is gone.")
        item = session.item
        draft.files.append(File(str(item.get("name") or "attachment"),
                                str(item.get("contentType") or "application/octet-stream"),
                                bytes(session.data), bool(item.get("isInline")), item.get("contentId")))
        return 201, None, {}

    def delete(self, mailbox: str, draft_id: str) -> Answer:
        if self._draft(mailbox, draft_id) is None:
            return error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        del self.drafts[draft_id]
        return 204, None, {}

    def send(self, mailbox: str, draft_id: str) -> Sent | Answer:
        draft = self._draft(mailbox, draft_id)
        if draft is None:
            return error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        rcpts = [r["emailAddress"]["address"] for key in ("toRecipients", "ccRecipients", "bccRecipients")
                 for r in draft.message.get(key, [])]
        if not rcpts:
            return error(400, "ErrorInvalidRecipients", "At least one recipient is not valid.")
        del self.drafts[draft_id]
        props = draft.message.get("singleValueExtendedProperties", [])
        keep = not any(p.get("id", "").lower() == "boolean 0x0e01" and str(p.get("value")).lower()
                       == "true" for p in props)
        return Sent(mailbox, rcpts, to_mime(draft), keep)


def _addresses(recipients: list[dict[str, Any]]) -> str:
    out = []
    for r in recipients:
        e = r["emailAddress"]
        out.append(f'"{e["name"]}" <{e["address"]}>' if e.get("name") else e["address"])
    return ", ".join(out)


def to_mime(draft: Draft) -> bytes:
    """The message Exchange would send for this draft (without Bcc)."""
    m, msg = draft.message, EmailMessage()
    msg["From"] = _addresses([m["from"]]) if "from" in m else draft.mailbox
    if "sender" in m:
        msg["Sender"] = _addresses([m["sender"]])
    for header, key in (("To", "toRecipients"), ("Cc", "ccRecipients"), ("Reply-To", "replyTo")):
        if m.get(key):
            msg[header] = _addresses(m[key])
    msg["Subject"] = m.get("subject", "")
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = m.get("internetMessageId") or f"<{uuid.uuid4().hex}@fakegraph>"
    for h in m.get("internetMessageHeaders", []):
        msg[h["name"]] = h["value"]
    body = m.get("body", {})
    subtype = "html" if str(body.get("contentType", "text")).lower() == "html" else "plain"
    msg.set_content(str(body.get("content", "")), subtype=subtype)
    for f in draft.files:
        maintype, _, subtype = f.content_type.partition("/")
        if maintype == "message" or maintype == "text":  # kept byte for byte, not re-encoded text
            maintype, subtype = "application", "octet-stream"
        msg.add_attachment(f.data, maintype=maintype, subtype=subtype or "octet-stream",
                           filename=f.name, disposition="inline" if f.inline else "attachment",
                           cid=f"<{f.content_id}>" if f.content_id else None)
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
