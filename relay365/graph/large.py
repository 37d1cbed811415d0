"""Send a message too large for `sendMail` as a Graph draft: create, attach, upload, send.

1. `scan` the message once for its parts (offsets only, `relay365.graph.parts`);
2. decode each attachment once to learn its size (Graph's upload session wants it up front);
3. `POST /users/{m}/messages`: the draft, with the body and as many small attachments as fit;
4. the other small ones by `POST .../messages/{id}/attachments`, the large ones by
   `POST .../attachments/createUploadSession` and PUTs of `UPLOAD_CHUNK` to its `uploadUrl`
   (decoded again from the message, one piece in memory at a time);
5. `POST .../messages/{id}/send` (202).

Memory stays at the small attachments in the draft (`DRAFT_BUDGET`) or one upload piece, never a
copy of the message. When any step after 3 fails, the draft is deleted (best effort) before the
error is raised, so a retry from the spool does not leave drafts behind; an expired or lost
upload session is transient (the whole message is tried again later).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from . import draft as d
from .client import GraphClient
from .draft import Attachment, Plan
from .errors import GraphError
from .mime import addressing
from .parts import byte_range, decoded, scan


class Content(Protocol):
    """The message, readable from the start as often as needed (`delivery.message.Message`)."""

    def chunks(self) -> Iterator[bytes]: ...


@dataclass(frozen=True)
class DraftSent:
    message_id: str
    attachments: int
    uploaded: int  # of them by upload session
    requests: int
    bcc: int  # envelope recipients sent as Bcc
    dropped: tuple[str, ...]  # header recipients not in the envelope, left out


def _too_big(what: str) -> GraphError:
    return GraphError(f"Graph draft: {what}", code=552, text="5.3.4 Message too big for Microsoft Graph",
                      transient=False, status=0)


class DraftSender:
    def __init__(self, client: GraphClient, mailbox: str, message: Content) -> None:
        self.client, self.mailbox, self.message = client, mailbox, message
        self.base = f"/users/{mailbox}/messages"
        self.requests = 0

    def content(self, att: Attachment) -> Iterator[bytes]:
        leaf = att.leaf
        return decoded(byte_range(self.message.chunks(), leaf.start, leaf.end), att.encoding)

    async def send(self, rcpts: tuple[str, ...], *, save_to_sent: bool) -> DraftSent:
        found = scan(self.message.chunks())
        the_plan = d.plan(found)
        sizes = [sum(map(len, self.content(a))) for a in the_plan.attachments]
        if any(size > d.MAX_UPLOAD for size in sizes):
            raise _too_big(f"an attachment over {d.MAX_UPLOAD} bytes")
        inline, later = self._split(the_plan, sizes)
        to = addressing(found.head, rcpts)
        draft = d.message_json(found.head, to, the_plan.body_type,
                             self._body(the_plan), save_to_sent=save_to_sent,
                             attachments=[d.file_attachment(a, self._read(a)) for a in inline])
        created = await self._call("POST", self.base, draft, "createDraft")
        draft_id = str(created.get("id", ""))
        if not draft_id:
            raise GraphError("Graph createDraft: no id in the answer", code=451, status=201,
                             text="4.4.0 Microsoft Graph answered nonsense", transient=True)
        try:
            for att, size in later:
                await self._attach(draft_id, att, size)
            await self._call("POST", f"{self.base}/{draft_id}/send", None, "sendDraft")
        except BaseException:
            with contextlib.suppress(GraphError):
                await self._call("DELETE", f"{self.base}/{draft_id}", None, "deleteDraft")
            raise
        uploaded = sum(1 for _, size in later if size >= d.SMALL_ATTACHMENT)
        return DraftSent(draft_id, len(sizes), uploaded, self.requests, len(to.bcc), to.dropped)

    def _split(self, the_plan: Plan, sizes: list[int]
               ) -> tuple[list[Attachment], list[tuple[Attachment, int]]]:
        """Small attachments that fit in the draft request; the others with their sizes."""
        inline: list[Attachment] = []
        later: list[tuple[Attachment, int]] = []
        budget = d.DRAFT_BUDGET
        for att, size in zip(the_plan.attachments, sizes, strict=True):
            encoded = (size + 2) // 3 * 4
            if size < d.SMALL_ATTACHMENT and encoded <= budget:
                inline.append(att)
                budget -= encoded
            else:
                later.append((att, size))
        return inline, later

    def _read(self, att: Attachment) -> bytes:
        return b"".join(self.content(att))

    def _body(self, the_plan: Plan) -> str:
        leaf = the_plan.body
        if leaf is None:
            return ""
        if leaf.encoded_size > 2 * d.MAX_BODY:
            raise _too_big("a body text over the draft request cap")
        encoding = str(leaf.headers.get("content-transfer-encoding", "7bit"))
        text = d.body_text(leaf, b"".join(decoded(byte_range(self.message.chunks(), leaf.start,
                                                             leaf.end), encoding)))
        if len(text) > d.MAX_BODY:
            raise _too_big("a body text over the draft request cap")
        return text

    async def _call(self, method: str, path: str, payload: dict[str, Any] | None,
                    what: str) -> dict[str, Any]:
        self.requests += 1
        return await self.client.call(self.mailbox, method, path, payload, what=what)

    async def _attach(self, draft_id: str, att: Attachment, size: int) -> None:
        path = f"{self.base}/{draft_id}/attachments"
        if size < d.SMALL_ATTACHMENT:
            await self._call("POST", path, d.file_attachment(att, self._read(att)), "addAttachment")
            return
        session = await self._call("POST", f"{path}/createUploadSession", d.upload_item(att, size),
                                   "createUploadSession")
        url = str(session.get("uploadUrl", ""))
        if not url:
            raise GraphError("Graph createUploadSession: no uploadUrl", code=451, status=201,
                             text="4.4.0 Microsoft Graph answered nonsense", transient=True)
        await self._upload(url, att, size)

    async def _upload(self, url: str, att: Attachment, size: int) -> None:
        sent = 0
        for piece in pieces(self.content(att), d.UPLOAD_CHUNK):
            self.requests += 1
            try:
                answer = await self.client.upload(self.mailbox, url, piece,
                                                  d.content_range(sent, len(piece), size))
            except GraphError as exc:
                if exc.status in (404, 410):  # the session expired or was lost: a new try later
                    raise GraphError(str(exc), code=451, status=exc.status, transient=True,
                                     text="4.4.2 Microsoft Graph upload session expired, try later",
                                     graph_code=exc.graph_code, request_id=exc.request_id) from None
                raise
            sent += len(piece)
            if answer.status == 201 and sent < size:
                raise GraphError("Graph upload: finished early", code=451, status=201,
                                 text="4.4.0 Microsoft Graph upload failed", transient=True)
        if sent != size:
            raise GraphError(f"Graph upload: {sent} of {size} bytes", code=451, status=0,
                             text="4.4.0 Microsoft Graph upload failed", transient=True)


def pieces(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    """The content again in pieces of exactly `size` bytes (the last one shorter)."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)
