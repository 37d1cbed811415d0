"""The envelope decides Graph's recipients; everything but To/Cc/Bcc stays byte for byte."""
import base64
import email
import os

import pytest

from relay365.graph.mime import SENDMAIL_MAX_MIME, prepare, split_head

MSG = (b"From: Scanner <scanner@contoso.test>\r\n"
       b"To: Alice <alice@example.test>, bob@example.test\r\n"
       b"Cc: carol@example.test\r\n"
       b"Subject: scan\r\n"
       b"\r\n"
       b"body line\r\n")


def headers(data):
    return email.message_from_bytes(data)


def test_envelope_equal_to_headers_changes_nothing():
    p = prepare(MSG, ["alice@example.test", "bob@example.test", "carol@example.test"])
    assert p.data == MSG and p.dropped == () and p.bcc == ()


def test_envelope_recipient_not_in_headers_becomes_bcc():
    p = prepare(MSG, ["alice@example.test", "bob@example.test", "carol@example.test",
                      "Dave@Example.test"])
    assert p.bcc == ("Dave@Example.test",)
    assert headers(p.data)["Bcc"] == "Dave@Example.test"
    assert p.data.startswith(MSG.split(b"\r\n\r\n")[0])  # the original fields untouched
    assert p.data.endswith(b"\r\n\r\nbody line\r\n")


def test_header_recipient_not_in_envelope_is_dropped_and_reported():
    p = prepare(MSG, ["ALICE@example.test", "carol@example.test"])
    assert p.dropped == ("bob@example.test",)
    assert headers(p.data)["To"] == "Alice <alice@example.test>"
    assert headers(p.data)["Cc"] == "carol@example.test"
    assert p.data.endswith(b"Subject: scan\r\n\r\nbody line\r\n")


def test_header_that_loses_every_address_goes():
    p = prepare(MSG, ["alice@example.test", "bob@example.test"])
    assert "Cc" not in headers(p.data) and p.dropped == ("carol@example.test",)


def test_existing_bcc_is_rebuilt_from_the_envelope():
    msg = MSG.replace(b"Subject", b"Bcc: x@example.test, y@example.test\r\nSubject")
    p = prepare(msg, ["alice@example.test", "bob@example.test", "carol@example.test",
                      "y@example.test"])
    assert headers(p.data).get_all("Bcc") == ["y@example.test"]
    assert p.dropped == ("x@example.test",)


def test_folded_recipient_header_and_lf_endings():
    msg = b"To: a@example.test,\n  b@example.test\nSubject: s\n\nx\n"
    p = prepare(msg, ["a@example.test"])
    assert p.data == b"To: a@example.test\nSubject: s\n\nx\n"


def test_split_head_is_byte_exact():
    fields, rest = split_head(MSG)
    assert b"".join(fields) + rest == MSG and len(fields) == 4 and rest == b"\r\nbody line\r\n"


@pytest.mark.parametrize("size, fits", [(SENDMAIL_MAX_MIME, True), (SENDMAIL_MAX_MIME + 1, False)])
def test_sendmail_cap_counts_base64(size, fits):
    data = MSG + os.urandom(size - len(MSG))
    p = prepare(data, ["alice@example.test", "bob@example.test", "carol@example.test"])
    assert p.fits_sendmail is fits
    if fits:
        assert len(p.sendmail_body()) <= 4_000_000
        assert base64.b64decode(p.sendmail_body()) == data
