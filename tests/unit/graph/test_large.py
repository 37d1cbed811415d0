"""DraftSender against the stand-in's draft store, in memory: what goes where, and clean-up."""
import asyncio
import email
import hashlib
import os
from email.message import EmailMessage
from email.policy import default

import pytest

from relay365.delivery.message import BytesMessage
from relay365.graph.client import Answer
from relay365.graph.draft import UPLOAD_CHUNK
from relay365.graph.errors import GraphError
from relay365.graph.large import DraftSender, pieces
from relay365.standins.graphdrafts import Drafts, Sent

BOX = "box@x.test"


class StoreClient:
    """`GraphClient.call` / `.upload` answered by a `Drafts` store (no HTTP)."""

    def __init__(self, fail_at: str | None = None) -> None:
        self.drafts = Drafts("https://g/upload")
        self.calls: list[str] = []
        self.sent: list[Sent] = []
        self.fail_at = fail_at

    async def call(self, mailbox, method, path, payload, *, what):
        self.calls.append(what)
        if what == self.fail_at:
            raise GraphError("injected", code=451, text="4.4.2 busy", transient=True, status=503)
        parts = path.split("/")[3:]  # after /users/{m}/
        if method == "DELETE":
            status, body, _ = self.drafts.delete(mailbox, parts[1])
        elif parts == ["messages"]:
            status, body, _ = self.drafts.create(mailbox, payload)
        elif parts[2:] == ["attachments"]:
            status, body, _ = self.drafts.attach(mailbox, parts[1], payload)
        elif parts[2:] == ["attachments", "createUploadSession"]:
            status, body, _ = self.drafts.open_session(mailbox, parts[1], payload, 0.0)
        else:
            sent = self.drafts.send(mailbox, parts[1])
            assert isinstance(sent, Sent), sent
            self.sent.append(sent)
            status, body = 202, None
        assert status < 300, body
        return body or {}

    async def upload(self, mailbox, url, piece, content_range):
        self.calls.append("upload")
        status, body, _ = self.drafts.put(url.rsplit("/", 1)[1], content_range, piece, 0.0)
        if status >= 300:
            raise GraphError(str(body), code=451, text="4.4.0 x", transient=True, status=status)
        return Answer(status, "rid", b"")


def message(sizes: list[int]) -> tuple[bytes, dict[str, str]]:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "s@x.test", "bob@x.test", "many"
    m.set_content("body\n")
    digests = {}
    for n, size in enumerate(sizes):
        blob = os.urandom(size)
        digests[f"f{n}.pdf"] = hashlib.sha256(blob).hexdigest()
        m.add_attachment(blob, maintype="application", subtype="pdf", filename=f"f{n}.pdf")
    return m.as_bytes(policy=default.clone(linesep="\r\n")), digests


def test_small_ones_fill_the_draft_the_rest_are_posted_large_ones_uploaded():
    data, digests = message([1_200_000, 1_200_000, 1_200_000, 3_500_000])
    client = StoreClient()
    done = asyncio.run(DraftSender(client, BOX, BytesMessage(data)).send(("bob@x.test",),
                                                                         save_to_sent=True))
    # 1.2 MB is 1.6 MB of base64: one fits the draft's 3 MB budget, two are posted one by one
    assert client.calls == ["createDraft", "addAttachment", "addAttachment", "createUploadSession",
                            "upload", "upload", "sendDraft"]
    assert (done.attachments, done.uploaded) == (4, 1)
    got = email.message_from_bytes(client.sent[0].mime)
    assert {p.get_filename(): hashlib.sha256(p.get_payload(decode=True)).hexdigest()
            for p in got.walk() if p.get_filename()} == digests
    assert client.drafts.pieces == [(0, UPLOAD_CHUNK), (UPLOAD_CHUNK, 3_500_000 - UPLOAD_CHUNK)]


@pytest.mark.parametrize("step", ["createUploadSession", "sendDraft"])
def test_a_failure_after_the_draft_deletes_it(step):
    data, _ = message([3_100_000])
    client = StoreClient(fail_at=step)
    with pytest.raises(GraphError) as info:
        asyncio.run(DraftSender(client, BOX, BytesMessage(data)).send(("bob@x.test",),
                                                                      save_to_sent=True))
    assert info.value.transient
    assert client.calls[-1] == "deleteDraft" and not client.drafts.drafts


def test_an_expired_upload_session_is_transient():
    data, _ = message([3_100_000])
    client = StoreClient()
    client.drafts.session_ttl = -1
    with pytest.raises(GraphError) as info:
        asyncio.run(DraftSender(client, BOX, BytesMessage(data)).send(("bob@x.test",),
                                                                      save_to_sent=True))
    assert info.value.transient and info.value.code == 451 and "expired" in info.value.text


def test_pieces_are_exact():
    assert [len(p) for p in pieces(iter([b"a" * 5, b"b" * 7, b"c"]), 4)] == [4, 4, 4, 1]
    assert list(pieces(iter([]), 4)) == []
