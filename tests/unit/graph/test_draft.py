"""A MIME message becomes Graph draft JSON: body, addressing by the envelope, attachments."""
from email.message import EmailMessage
from email.policy import default

from relay365.graph.draft import DELETE_AFTER_SUBMIT, file_attachment, message_json, plan, upload_item
from relay365.graph.mime import addressing
from relay365.graph.parts import scan


def mime() -> bytes:
    m = EmailMessage()
    m["From"] = "Scanner <scan@contoso.test>"
    m["To"] = "Alice <alice@x.test>, dave@x.test"
    m["Cc"] = "carol@x.test"
    m["Subject"] = "=?utf-8?q?R=C3=A9sum=C3=A9?="
    m["Message-ID"] = "<1@lan>"
    m["X-Job"] = "7"
    m.set_content("plain\n")
    m.add_alternative('<p>html <img src="cid:logo"></p>\n', subtype="html")
    m.get_payload()[1].add_related(b"PNG", maintype="image", subtype="png", cid="<logo>")
    m.add_attachment(b"%PDF", maintype="application", subtype="pdf", filename="s.pdf")
    return m.as_bytes(policy=default.clone(linesep="\r\n"))


def test_html_body_chosen_plain_twin_dropped_inline_image_kept():
    p = plan(scan([mime()]))
    assert p.body_type == "html" and p.body is not None
    assert [(a.name, a.inline, a.content_id) for a in p.attachments] == [
        ("attachment-3.png", True, "logo"), ("s.pdf", False, None)]


def test_message_json_addressing_follows_the_envelope():
    data = mime()
    found = scan([data])
    to = addressing(found.head, ["alice@x.test", "carol@x.test", "eve@x.test"])
    j = message_json(found.head, to, "html", "<p/>", save_to_sent=True, attachments=[])
    assert j["subject"] == "R\u00e9sum\u00e9"
    assert j["toRecipients"] == [{"emailAddress": {"name": "Alice", "address": "alice@x.test"}}]
    assert j["ccRecipients"] == [{"emailAddress": {"address": "carol@x.test"}}]
    assert j["bccRecipients"] == [{"emailAddress": {"address": "eve@x.test"}}]
    assert to.dropped == ("dave@x.test",)
    assert j["from"] == {"emailAddress": {"name": "Scanner", "address": "scan@contoso.test"}}
    assert j["internetMessageId"] == "<1@lan>"
    assert j["internetMessageHeaders"] == [{"name": "X-Job", "value": "7"}]
    assert "singleValueExtendedProperties" not in j and "attachments" not in j


def test_no_sent_copy_asks_exchange_to_delete_after_submit():
    found = scan([mime()])
    j = message_json(found.head, addressing(found.head, ["alice@x.test"]), "text", "", save_to_sent=False,
                     attachments=[{"x": 1}])
    assert j["singleValueExtendedProperties"] == [{"id": DELETE_AFTER_SUBMIT, "value": "true"}]
    assert j["attachments"] == [{"x": 1}]


def test_attachment_shapes():
    a = plan(scan([mime()])).attachments[0]
    assert file_attachment(a, b"PNG")["contentBytes"] == "UE5H"
    assert file_attachment(a, b"PNG")["contentId"] == "logo"
    assert upload_item(a, 5)["AttachmentItem"]["size"] == 5
