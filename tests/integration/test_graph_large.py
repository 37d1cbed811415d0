"""Messages over Graph's sendMail cap (~3 MB of MIME): a draft, upload sessions, send.

smtplib -> relay365 (subprocess) -> the Graph stand-in (drafts, attachments, upload sessions with
their Content-Range and 320 KiB rules) -> the real Dovecot over LMTP. What the recipients' real
mailboxes hold is compared with what the device sent: subject, body text, sender, and every
attachment by SHA-256; Sent Items as `save_to_sent` says.
"""

from __future__ import annotations

import email
import hashlib
import os
import uuid
from email.message import EmailMessage
from email.policy import default

import pytest

from relay365.standins.graphdrafts import PIECE
from tests.integration import test_graph_relay as base
from tests.integration.conftest import MAILBOX

pytestmark = pytest.mark.integration
graph, _graph_clean = base.graph, base._graph_clean  # the fixtures, shared with test_graph_relay
BOB, CAROL, find, graph_config, none_for, send = (base.BOB, base.CAROL, base.find, base.graph_config,
                                                  base.none_for, base.send)
MB = 1024 * 1024
BODY = "Scanned on Printer 3.\nPages: 12\n"


def scan_message(subject: str, sizes: list[int]) -> tuple[bytes, dict[str, str]]:
    """What a scanner sends: From, To, Subject, a plain body, PDFs (base64)."""
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "Printer 3 <printer3@lan.local>", BOB, subject
    m["Message-ID"] = f"<{uuid.uuid4()}@lan.local>"
    m["X-Scanner-Job"] = "4711"
    m.set_content(BODY)
    digests = {}
    for n, size in enumerate(sizes, 1):
        blob = os.urandom(size)
        name = f"scan-{n}.pdf"
        digests[name] = hashlib.sha256(blob).hexdigest()
        m.add_attachment(blob, maintype="application", subtype="pdf", filename=name)
    return m.as_bytes(policy=default.clone(linesep="\r\n")), digests


def attachments(msg: email.message.Message) -> dict[str, str]:
    return {part.get_filename(): hashlib.sha256(part.get_payload(decode=True)).hexdigest()
            for part in msg.walk() if part.get_filename()}


def body_text(msg: email.message.Message) -> str:
    part = next(p for p in msg.walk() if p.get_content_type() == "text/plain" and not p.get_filename())
    return part.get_payload(decode=True).decode().replace("\r\n", "\n")


@pytest.mark.parametrize("sizes, save_to_sent", [
    pytest.param([1 * MB], False, id="1MB-no-sent-copy"),
    pytest.param([5 * MB, 200_000], True, id="5MB-and-a-small-one"),
    pytest.param([20 * MB], True, id="20MB"),
])
def test_large_message_arrives_whole_through_a_draft(make_relay, tmp_path, pki, idp, upstream, graph,
                                                     sizes, save_to_sent):
    config = graph_config(tmp_path, pki, idp, upstream, graph)
    config["accounts"][0]["save_to_sent"] = save_to_sent
    relay = make_relay(config)
    subject = f"graph large {sum(sizes)} {uuid.uuid4()}"
    data, digests = scan_message(subject, sizes)
    code, text = send(relay.smtp_port, [BOB, CAROL], data)  # carol: envelope only, so Bcc
    assert (code, text) == (250, b"2.0.0 OK sent through Microsoft Graph")
    for rcpt in (BOB, CAROL):
        (got,) = find(upstream, rcpt, subject, timeout=60)
        assert attachments(got) == digests
        assert body_text(got) == BODY
        assert MAILBOX in got["From"] and got["Bcc"] is None
        assert got["X-Scanner-Job"] == "4711"
    assert not graph.sends()  # not one sendMail: the draft way
    drafts = [r for r in graph.requests if "/messages" in r.path]
    assert [r.path.rsplit("/", 1)[1] for r in drafts][-1] == "send"
    assert all(r.status < 300 for r in graph.requests), [(r.path, r.status) for r in graph.requests]
    assert not graph.drafts.drafts and not graph.drafts.sessions  # nothing left behind
    pieces = graph.drafts.pieces
    uploads = [s for s in sizes if s >= 3_000_000]
    assert len([p for p in pieces if p[0] == 0]) == len(uploads)
    ends = {start + length for start, length in pieces}
    assert all(length % PIECE == 0 or start + length in set(uploads) for start, length in pieces), ends
    assert max(graph.concurrent_max.values()) <= 4
    kept = graph.sent_items[MAILBOX.lower()]
    assert len(kept) == (1 if save_to_sent else 0)
    if save_to_sent:
        assert attachments(email.message_from_bytes(kept[0])) == digests
    relayed = relay.find("message_relayed", via="graph")
    assert relayed and relayed[0]["size"] >= sum(sizes)
    assert relay.find("graph_sent", draft=True)[0]["uploaded"] == len(uploads)


def test_small_message_without_sent_copy_goes_as_a_draft(make_relay, tmp_path, pki, idp, upstream,
                                                         graph):
    """sendMail always saves to Sent Items: save_to_sent false takes the draft way."""
    config = graph_config(tmp_path, pki, idp, upstream, graph)
    config["accounts"][0]["save_to_sent"] = False
    relay = make_relay(config)
    subject = f"graph nosent {uuid.uuid4()}"
    data, digests = scan_message(subject, [30_000])
    assert send(relay.smtp_port, [BOB], data)[0] == 250
    assert attachments(find(upstream, BOB, subject)[0]) == digests
    assert not graph.sends() and not graph.sent_items[MAILBOX.lower()]


def test_expired_upload_session_is_4xx_and_leaves_no_draft(make_relay, tmp_path, pki, idp, upstream,
                                                           graph):
    relay = make_relay(graph_config(tmp_path, pki, idp, upstream, graph))
    graph.drafts.session_ttl = -1  # every session has expired when first used
    subject = f"graph expired {uuid.uuid4()}"
    data, _ = scan_message(subject, [4 * MB])
    code, text = send(relay.smtp_port, [BOB], data)
    assert code == 451 and text.startswith(b"4.4.2"), text
    assert none_for(upstream, BOB, subject)
    assert not graph.drafts.drafts  # the half-built draft was deleted
    assert [r.method for r in graph.requests][-1] == "DELETE"


def test_large_message_in_the_spool_after_a_429_is_delivered_once(make_relay, tmp_path, pki, idp,
                                                                   upstream, graph):
    relay = make_relay(graph_config(tmp_path, pki, idp, upstream, graph, delivery="spool"))
    graph.fail_next(1, 429, "ApplicationThrottled", retry_after=1)
    subject = f"graph spool large {uuid.uuid4()}"
    data, digests = scan_message(subject, [4 * MB])
    code, text = send(relay.smtp_port, [BOB], data)
    assert code == 250 and text.startswith(b"2.0.0 OK queued as")
    relay.wait_log("spool_delivered", timeout=60)
    (got,) = find(upstream, BOB, subject)
    assert attachments(got) == digests
    assert graph.requests[0].status == 429
