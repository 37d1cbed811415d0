"""Large messages through relay365 into real Postfix and Dovecot: streamed as they arrive, in
bounded memory, and never delivered in part."""

from __future__ import annotations

import base64
import os
import smtplib
import socket
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import DOMAIN, MAILBOX, PASSWORD, USER
from tests.integration.test_smtp_relay import delivered

pytestmark = pytest.mark.integration

RCPT = f"bob@{DOMAIN}"


def big_message(subject: str, size: int) -> bytes:
    """Base64 lines like a scanned PDF, with dot lines in between (dot-stuffing must round-trip)."""
    line = base64.b64encode(os.urandom(57)) + b"\r\n"
    body = bytearray()
    n = 0
    while len(body) < size:
        body += line
        n += 1
        if n % 1000 == 0:
            body += b".leading dot\r\n..two\r\n.\r\n"  # content, not the end of DATA
    return (f"From: Scanner <scanner@lan.local>\r\nTo: {RCPT}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{uuid.uuid4()}@lan.local>\r\n\r\n").encode() + bytes(body)


def stuffed(data: bytes) -> bytes:
    """Dot-stuffed as a client sends it (smtplib does this itself)."""
    return data.replace(b"\r\n.", b"\r\n..")


def peak_rss_reset(pid: int) -> int:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    return status_kb(pid, "VmHWM")


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(key)


class RawClient:
    """Just enough SMTP by hand to stop in the middle of DATA."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")
        self.reply()
        for line in ("EHLO raw", "AUTH PLAIN " + base64.b64encode(
                f"\0{USER}\0{PASSWORD}".encode()).decode(),
                     "MAIL FROM:<scanner@lan.local>", f"RCPT TO:<{RCPT}>", "DATA"):
            self.sock.sendall(line.encode() + b"\r\n")
            self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def reply(self) -> bytes:
        while True:
            line = self.file.readline()
            if line[3:4] != b"-":
                return line


def upstream_incoming(upstream) -> int:
    """Bytes in Postfix's incoming queue: a message it is receiving right now."""
    return sum(f.stat().st_size for f in (upstream.root / "spool" / "incoming").rglob("*")
               if f.is_file())


def test_a_large_message_arrives_exact_with_memory_far_below_its_size(make_relay, upstream):
    relay = make_relay(smtp={})
    subject = f"big {uuid.uuid4()}"
    data = big_message(subject, 24 * 2**20)
    base = peak_rss_reset(relay.proc.pid)
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=120) as s:
        s.login(USER, PASSWORD)
        s.sendmail("scanner@lan.local", [RCPT], data)
    growth_mib = (status_kb(relay.proc.pid, "VmHWM") - base) / 1024
    assert growth_mib < 12, f"relay peak RSS grew {growth_mib:.1f} MiB for a 24 MiB message"
    msg = delivered(upstream, RCPT, subject, timeout=60)
    assert msg["From"] == f"Scanner <{MAILBOX}>" and msg["Reply-To"] == "Scanner <scanner@lan.local>"
    raw = next(r for r in upstream.messages(RCPT) if subject.encode() in r)
    assert raw.split(b"\r\n\r\n", 1)[1] == data.split(b"\r\n\r\n", 1)[1]  # the body, byte for byte
    assert relay.wait_log("message_relayed")["size"] == len(data)


def test_the_message_reaches_office_365_while_it_still_arrives(make_relay, upstream):
    relay = make_relay(smtp={})
    subject = f"stream {uuid.uuid4()}"
    data = big_message(subject, 8 * 2**20)
    client = RawClient(relay.smtp_port)
    data = stuffed(data)
    client.sock.sendall(data[:6 * 2**20])  # three quarters, then a pause
    deadline = time.monotonic() + 20
    while upstream_incoming(upstream) < 4 * 2**20:
        assert time.monotonic() < deadline, "nothing reached Postfix before the end of DATA"
        time.sleep(0.05)
    client.sock.sendall(data[6 * 2**20:] + b"\r\n.\r\n")
    assert client.reply().startswith(b"250")
    client.close()
    delivered(upstream, RCPT, subject, timeout=30)


def test_a_client_gone_mid_data_delivers_nothing(make_relay, upstream):
    relay = make_relay(smtp={})
    gone = f"gone {uuid.uuid4()}"
    client = RawClient(relay.smtp_port)
    client.sock.sendall(stuffed(big_message(gone, 3 * 2**20))[:2 * 2**20])
    time.sleep(0.5)
    client.close()  # no "." ever: Office 365 must not get a truncated scan
    after = f"after {uuid.uuid4()}"
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as s:
        s.login(USER, PASSWORD)
        s.sendmail("scanner@lan.local", [RCPT], big_message(after, 1000))
    delivered(upstream, RCPT, after)
    time.sleep(1)
    assert not [r for r in upstream.messages(RCPT) if gone.encode() in r]


def test_over_the_size_limit_mid_stream_is_552_and_nothing_is_delivered(make_relay, upstream):
    relay = make_relay(smtp={"max_message_size": "1MB"})
    subject = f"toobig {uuid.uuid4()}"
    client = RawClient(relay.smtp_port)  # no SIZE= on MAIL: the limit hits during DATA
    client.sock.sendall(stuffed(big_message(subject, 2 * 2**20)) + b"\r\n.\r\n")
    assert client.reply().startswith(b"552")
    client.sock.sendall(b"NOOP\r\n")
    assert client.reply().startswith(b"250")  # still in step with the client
    client.close()
    time.sleep(1)
    assert not [r for r in upstream.messages(RCPT) if subject.encode() in r]


def test_a_header_block_over_256_kb_is_refused_as_exchange_does(make_relay, upstream):
    relay = make_relay(smtp={})
    subject = f"headers {uuid.uuid4()}"
    headers = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"h" * 200) for i in range(1500))
    data = f"From: a@lan.local\r\nSubject: {subject}\r\n".encode() + headers + b"\r\nbody\r\n"
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as s:
        s.login(USER, PASSWORD)
        with pytest.raises(smtplib.SMTPDataError) as err:
            s.sendmail("a@lan.local", [RCPT], data)
    assert err.value.smtp_code == 552 and err.value.smtp_error.startswith(b"5.3.4")
    assert not [r for r in upstream.messages(RCPT) if subject.encode() in r]
