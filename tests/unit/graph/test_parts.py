"""The MIME scanner finds every part by offset and decodes it back, whatever the chunking."""
import base64
import hashlib
import os
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay365.graph.parts import MAX_LINE, byte_range, decoded, lines, scan


def scanned_message() -> tuple[bytes, dict[str, bytes]]:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "Scanner <scan@contoso.test>", "bob@example.test", "Scan"
    m.set_content("Body text\n")
    m.add_alternative("<p>Body</p>\n", subtype="html")
    files = {"scan.pdf": os.urandom(200_000), "notes.txt": "caf\u00e9 = ok\n".encode() * 50,
             "raw.bin": bytes(range(256)) * 40}
    m.add_attachment(files["scan.pdf"], maintype="application", subtype="pdf", filename="scan.pdf")
    m.add_attachment(files["notes.txt"].decode(), filename="notes.txt", cte="quoted-printable")
    files["notes.txt"] = files["notes.txt"].replace(b"\n", b"\r\n")  # text travels as CRLF
    m.add_attachment(files["raw.bin"], maintype="application", subtype="octet-stream",
                     filename="raw.bin")
    return m.as_bytes(policy=m.policy.clone(linesep="\r\n")), files


def contents(data: bytes, chunks: list[bytes]) -> dict[str, bytes]:
    found = scan(chunks)
    out = {}
    for leaf in found.leaves:
        h = leaf.headers
        cte = str(h.get("content-transfer-encoding", "7bit"))
        out[h.get_filename() or h.get_content_type()] = b"".join(
            decoded(byte_range([data], leaf.start, leaf.end), cte))
    return out


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 7, 1000, 1 << 30])
def test_every_part_decodes_to_its_bytes_in_any_chunking(size):
    data, files = scanned_message()
    got = contents(data, split(data, size))
    for name, blob in files.items():
        assert hashlib.sha256(got[name]).hexdigest() == hashlib.sha256(blob).hexdigest(), name
    assert got["text/plain"].strip() == b"Body text"
    assert got["text/html"].strip() == b"<p>Body</p>"


def test_header_and_parents():
    data, _ = scanned_message()
    found = scan([data])
    assert b"Subject: Scan" in found.head and found.size == len(data)
    assert [leaf.parents for leaf in found.leaves[:2]] == [("mixed", "alternative")] * 2
    assert found.leaves[2].parents == ("mixed",)


def test_a_single_part_message_is_one_leaf_to_the_end():
    data = b"Subject: x\r\n\r\nline one\r\nline two\r\n"
    found = scan([data])
    (leaf,) = found.leaves
    assert data[leaf.start:leaf.end] == b"line one\r\nline two\r\n"


def test_a_header_without_body():
    (leaf,) = scan([b"Subject: x\r\n"]).leaves
    assert leaf.start == leaf.end


def test_long_lines_are_cut_not_held():
    data = b"a" * (MAX_LINE * 3 + 5)
    assert [len(line) for _, line in lines(split(data, 10_000))] == [MAX_LINE] * 3 + [5]


def test_unclosed_multipart_ends_at_eof():
    data = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
            b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(b"pdf!") )
    (leaf,) = scan([data]).leaves
    assert b"".join(decoded(byte_range([data], leaf.start, leaf.end), "base64")) == b"pdf!"


def test_damaged_base64_never_raises():
    assert b"".join(decoded([b"QUJD", b"RA=", b"=x"], "base64")) in (b"ABCD", b"ABC")
    assert b"".join(decoded([b"QUJDRA"], "base64")) == b"ABCD"  # missing padding


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=60))
def test_property_any_split_same_parts(cuts):
    data, _ = scanned_message()
    chunks, pos = [], 0
    for c in cuts:
        chunks.append(data[pos:pos + c])
        pos += c
    chunks.append(data[pos:])
    assert scan(chunks) == scan([data])


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000))
def test_property_arbitrary_bytes_scan_without_error(blob):
    found = scan([b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\n" + blob])
    assert all(0 <= leaf.start <= leaf.end <= found.size for leaf in found.leaves)
