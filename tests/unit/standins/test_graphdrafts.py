"""The Graph stand-in's upload sessions keep Graph's rules, so the relay is held to them."""
import base64
import email

import pytest

from relay365.standins.graphdrafts import PIECE, Drafts, Sent

NOW = 1000.0


def session(size: int, ttl: float = 900.0) -> tuple[Drafts, str, str]:
    d = Drafts("https://g/upload", session_ttl=ttl)
    _, created, _ = d.create("Box@x.test", {"subject": "s", "toRecipients": [
        {"emailAddress": {"address": "bob@x.test"}}], "body": {"contentType": "text", "content": "hi"}})
    draft_id = created["id"]
    status, answer, _ = d.open_session("box@x.test", draft_id, {"AttachmentItem": {
        "attachmentType": "file", "name": "a.pdf", "size": size, "contentType": "application/pdf"}}, NOW)
    assert status == 201 and answer["nextExpectedRanges"] == ["0-"]
    return d, draft_id, answer["uploadUrl"].rsplit("/", 1)[1]


def test_pieces_in_order_multiples_of_320k_then_the_rest():
    size = 2 * PIECE + 10
    d, draft_id, token = session(size)
    data = bytes(range(256)) * (size // 256 + 1)
    data = data[:size]
    assert d.put(token, f"bytes 0-{PIECE - 1}/{size}", data[:PIECE], NOW)[0] == 200
    status, answer, _ = d.put(token, f"bytes {PIECE}-{size - 1}/{size}", data[PIECE:], NOW)
    assert status == 201 and answer is None
    sent = d.send("box@x.test", draft_id)
    assert isinstance(sent, Sent) and sent.rcpts == ["bob@x.test"] and sent.keep
    part = next(p for p in email.message_from_bytes(sent.mime).walk() if p.get_filename() == "a.pdf")
    assert part.get_payload(decode=True) == data


@pytest.mark.parametrize("header, length, status", [
    ("bytes 0-99/{size}", 100, 400),  # not a multiple of 320 KiB and not the last piece
    ("bytes 10-{end}/{size}", PIECE, 416),  # not where the last one ended
    ("bytes 0-{end}/999", PIECE, 400),  # another total than the session's
    ("bytes 0-{end}/{size}", PIECE - 1, 400),  # says more than it carries
    ("0-{end}", PIECE, 400),
])
def test_bad_pieces_are_refused(header, length, status):
    size = 3 * PIECE
    d, _, token = session(size)
    got = d.put(token, header.format(size=size, end=PIECE - 1 + (10 if "10-" in header else 0)),
                b"x" * length, NOW)[0]
    assert got == status


def test_expired_session_is_404():
    d, _, token = session(PIECE, ttl=5)
    assert d.put(token, f"bytes 0-{PIECE - 1}/{PIECE}", b"x" * PIECE, NOW + 6)[0] == 404
    assert token not in d.sessions


def test_delete_after_submit_leaves_no_sent_copy():
    d = Drafts("https://g/upload")
    att = {"name": "n.txt", "contentType": "text/plain", "contentBytes": base64.b64encode(b"n").decode()}
    _, created, _ = d.create("box@x.test", {"subject": "s", "bccRecipients": [
        {"emailAddress": {"address": "bob@x.test"}}], "attachments": [att],
        "singleValueExtendedProperties": [{"id": "Boolean 0x0E01", "value": "true"}]})
    sent = d.send("box@x.test", created["id"])
    assert isinstance(sent, Sent) and not sent.keep and b"Bcc" not in sent.mime
    assert d.send("box@x.test", created["id"])[0] == 404  # a sent draft is gone


def test_another_mailbox_cannot_touch_the_draft():
    d, draft_id, _ = session(PIECE)
    assert d.delete("other@x.test", draft_id)[0] == 404
    assert d.delete("box@x.test", draft_id)[0] == 204
