"""Make the seed corpora from what real clients send: `python -m fuzz.seeds` runs smtplib, swaks,
curl, imaplib, poplib and fetchmail against a recording server on 127.0.0.1 that answers with
canned replies (every login succeeds), and writes each client's bytes as one seed. A few
hand-made seeds add what printers and scanners do that these clients don't (HELO then AUTH,
bare-LF lines, PROXY headers, pipelining). The files are committed; rerun this to refresh them.
"""

from __future__ import annotations

import base64
import imaplib
import json
import poplib
import shutil
import smtplib
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

from relay365.spool.queue import Entry

CORPUS = Path(__file__).resolve().parent / "corpus"


def _smtp_reply(line: bytes, state: dict) -> bytes:
    if state.get("data"):
        if line == b".":
            state["data"] = False
            return b"250 2.0.0 OK queued\r\n"
        return b""
    if state.get("auth"):
        state["auth"] -= 1
        return b"334 UGFzc3dvcmQ6\r\n" if state["auth"] else b"235 2.7.0 OK\r\n"
    verb = line.split(b" ", 1)[0].upper()
    if verb == b"EHLO":
        return b"250-relay\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 20000\r\n250 AUTH PLAIN LOGIN\r\n"
    if verb == b"AUTH":
        parts = line.split()
        if len(parts) == 2:
            state["auth"] = 2 if parts[1].upper() == b"LOGIN" else 1
            return b"334 VXNlcm5hbWU6\r\n" if parts[1].upper() == b"LOGIN" else b"334 \r\n"
        if parts[1].upper() == b"LOGIN":
            state["auth"] = 1
            return b"334 UGFzc3dvcmQ6\r\n"
        return b"235 2.7.0 OK\r\n"
    if verb == b"DATA":
        state["data"] = True
        return b"354 go ahead\r\n"
    if verb == b"QUIT":
        state["quit"] = True
        return b"221 bye\r\n"
    return b"250 OK\r\n"


def _imap_reply(line: bytes, state: dict) -> bytes:
    if state.get("auth"):
        state["auth"] = None
        return state.pop("tag") + b" OK done\r\n"
    tag, _, rest = line.partition(b" ")
    verb = rest.split(b" ", 1)[0].upper()
    if verb == b"CAPABILITY":
        return b"* CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR ID\r\n" + tag + b" OK done\r\n"
    if verb == b"AUTHENTICATE" and len(rest.split()) == 2:
        state["auth"], state["tag"] = True, tag
        return b"+ \r\n"
    if verb == b"LOGOUT":
        state["quit"] = True
        return b"* BYE\r\n" + tag + b" OK done\r\n"
    if verb in (b"LOGIN", b"AUTHENTICATE"):
        state["quit"] = True  # logged in: the rest would be after login, not ours
        return tag + b" OK [CAPABILITY IMAP4rev1] done\r\n"
    return tag + b" OK done\r\n"


def _pop3_reply(line: bytes, state: dict) -> bytes:
    verb = line.split(b" ", 1)[0].upper()
    if state.get("auth"):
        state["auth"], state["quit"] = False, True
        return b"+OK logged in\r\n"
    if verb == b"CAPA":
        return b"+OK\r\nUSER\r\nSASL PLAIN\r\nUIDL\r\n.\r\n"
    if verb == b"AUTH" and len(line.split()) == 2:
        state["auth"] = True
        return b"+ \r\n"
    if verb in (b"PASS", b"AUTH", b"QUIT"):
        state["quit"] = True
        return b"+OK logged in\r\n"
    return b"+OK\r\n"


GREETING = {"smtp": b"220 relay ESMTP\r\n", "imap": b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n",
            "pop3": b"+OK ready\r\n"}
REPLY = {"smtp": _smtp_reply, "imap": _imap_reply, "pop3": _pop3_reply}


def record(proto: str, client) -> bytes:
    """Run `client(port)` against a canned server; what it sent, until its login (or QUIT)."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    sent = bytearray()

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(10)
            conn.sendall(GREETING[proto])
            state: dict = {}
            buf = b""
            while not state.get("quit"):
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    break
                if not chunk:
                    break
                sent.extend(chunk)
                buf += chunk
                while b"\n" in buf and not state.get("quit"):
                    line, buf = buf.split(b"\n", 1)
                    conn.sendall(REPLY[proto](line.rstrip(b"\r"), state))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        client(port)
    except Exception:
        pass  # the canned server is not a real one; what was sent is what counts
    t.join(10)
    srv.close()
    return bytes(sent)


def _run(*argv: str) -> None:
    subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=20, check=False)


MSG = b"From: dev@lan\r\nTo: bob@x.test\r\nSubject: scan\r\n\r\nscan.pdf attached\r\n.hidden line\r\n"


def smtp_clients() -> dict[str, object]:
    def smtplib_plain(port: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.ehlo("laptop")
            s.login("scanner", "pw")
            s.sendmail("dev@lan", ["bob@x.test", "carol@x.test"], MSG)

    def smtplib_login(port: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.ehlo("laptop")
            s.user, s.password = "scanner", "pw"
            s.auth("LOGIN", s.auth_login, initial_response_ok=False)
            s.sendmail("dev@lan", ["bob@x.test"], b"Subject: x\n\nLF-only lines\n..dot\n")

    def smtplib_helo(port: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.helo("printer")
            s.sendmail("printer@lan", ["bob@x.test"], MSG)

    return {
        "smtplib-plain": smtplib_plain,
        "smtplib-login": smtplib_login,
        "smtplib-helo": smtplib_helo,
        "swaks-plain": lambda p: _run("swaks", "-s", f"127.0.0.1:{p}", "-t", "bob@x.test", "-f", "dev@lan",
                                      "-a", "PLAIN", "-au", "scanner", "-ap", "pw", "--timeout", "5"),
        "swaks-login-pipeline": lambda p: _run("swaks", "-s", f"127.0.0.1:{p}", "-t", "bob@x.test",
                                               "-f", "dev@lan", "-a", "LOGIN", "-au", "scanner",
                                               "-ap", "pw", "--pipeline", "--timeout", "5"),
        "curl": lambda p: _run("curl", "-sS", "--max-time", "8", f"smtp://127.0.0.1:{p}",
                               "--mail-from", "dev@lan", "--mail-rcpt", "bob@x.test",
                               "--user", "scanner:pw", "-T", "-", "--login-options", "AUTH=PLAIN"),
    }


def imap_clients() -> dict[str, object]:
    def imaplib_login(port: int) -> None:
        c = imaplib.IMAP4("127.0.0.1", port, timeout=10)
        c.login("scanner", 'p"w\\1')

    def imaplib_plain(port: int) -> None:
        c = imaplib.IMAP4("127.0.0.1", port, timeout=10)
        c.authenticate("PLAIN", lambda _: b"\0scanner\0pw")

    return {
        "imaplib-login": imaplib_login,
        "imaplib-plain": imaplib_plain,
        "curl": lambda p: _run("curl", "-sS", "--max-time", "8", f"imap://127.0.0.1:{p}/INBOX",
                               "--user", "scanner:pw"),
        "fetchmail": lambda p: _fetchmail("imap", p),
    }


def pop3_clients() -> dict[str, object]:
    def poplib_user(port: int) -> None:
        c = poplib.POP3("127.0.0.1", port, timeout=10)
        c.capa()
        c.user("scanner")
        c.pass_("pw")

    return {
        "poplib-user": poplib_user,
        "curl": lambda p: _run("curl", "-sS", "--max-time", "8", f"pop3://127.0.0.1:{p}/",
                               "--user", "scanner:pw"),
        "curl-sasl": lambda p: _run("curl", "-sS", "--max-time", "8", f"pop3://127.0.0.1:{p}/",
                                    "--user", "scanner:pw", "--login-options", "AUTH=PLAIN"),
        "fetchmail": lambda p: _fetchmail("pop3", p),
    }


def _fetchmail(proto: str, port: int) -> None:
    home = Path(tempfile.mkdtemp())
    rc = home / ".fetchmailrc"
    rc.write_text(f"poll 127.0.0.1 service {port} protocol {proto} user scanner password pw sslproto ''\n")
    rc.chmod(0o600)
    _run("fetchmail", "-f", str(rc), "-c", "--nosslcertck", "-t", "5", "--pidfile", str(home / "pid"))
    shutil.rmtree(home, ignore_errors=True)


def write(target: str, name: str, data: bytes) -> None:
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def _proxy_v2(family: int, addresses: bytes, command: int = 0x21) -> bytes:
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    return sig + bytes([command, family]) + len(addresses).to_bytes(2, "big") + addresses


PROXY_SEEDS = {
    "v1-tcp4": b"PROXY TCP4 10.1.2.3 127.0.0.1 51000 25\r\n",
    "v1-tcp6": b"PROXY TCP6 2001:db8::1 ::1 51000 25\r\n",
    "v1-unknown": b"PROXY UNKNOWN\r\n",
    "v2-tcp4": _proxy_v2(0x11, bytes([10, 1, 2, 3, 127, 0, 0, 1]) + (51000).to_bytes(2, "big")
                         + (25).to_bytes(2, "big")),
    "v2-tcp6-mapped": _proxy_v2(0x21, bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 9]) + bytes(15) + b"\x01"
                                + (1).to_bytes(2, "big") + (25).to_bytes(2, "big")),
    "v2-local": _proxy_v2(0x00, b"", command=0x20),
    "v2-unix": _proxy_v2(0x31, b"/tmp/a".ljust(108, b"\0") * 2),
    "v2-tlv": _proxy_v2(0x11, bytes(12) + b"\x01\x00\x02h2" + b"\x04\x00\x00"),
}

HAND_SMTP = {
    "printer-helo-auth-login": b"HELO scanner.lan\r\nAUTH LOGIN\r\nc2Nhbm5lcg==\r\ncHc=\r\n"
                               b"MAIL FROM:<scan@lan.local>\r\nRCPT TO:<bob@x.test>\r\nDATA\r\n"
                               b"Subject: scan\r\n\r\nscan\r\n.\r\nQUIT\r\n",
    "bare-lf-device": b"EHLO dev\nMAIL FROM:<d@lan>\nRCPT TO:<bob@x.test>\nDATA\nSubject: lf\n\n..x\n.\nQUIT\n",  # noqa: E501
    "smuggling": b"EHLO x\r\nAUTH PLAIN AHNjYW5uZXIAcHc=\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"
                 b"x\n.\r\nMAIL FROM:<evil@x>\r\n\r\n.\n\r\n.\r\nQUIT\r\n",
    "no-auth": b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nQUIT\r\n",
    "bdat-utf8": b"EHLO x\r\nAUTH PLAIN AHNjYW5uZXIAcHc=\r\nMAIL FROM:<j\xc3\xb6@x> SMTPUTF8 BODY=8BITMIME SIZE=99\r\n"  # noqa: E501
                 b"RCPT TO:<c@d> NOTIFY=NEVER\r\nBDAT 5 LAST\r\nhello\r\nRSET\r\nVRFY x\r\nNOOP\r\nHELP\r\n",
}


def _auth_payloads(transcript: bytes) -> list[bytes]:
    """The decoded SASL payloads of an SMTP transcript: AUTH's initial response and the lines
    that answer a 334 (one for PLAIN, username and password for LOGIN)."""
    out, expect = [], 0
    for line in transcript.split(b"\n"):
        words = line.strip().split()
        if expect and len(words) == 1:
            expect -= 1
            candidates = words
        elif len(words) >= 2 and words[0].upper() == b"AUTH":
            login = words[1].upper() == b"LOGIN"
            expect = (2 if login else 1) - (len(words) > 2)
            candidates = words[2:]
        else:
            expect, candidates = 0, []
        for w in candidates:
            try:
                out.append(base64.b64decode(w, validate=True))
            except ValueError:
                pass
    return out


def main() -> None:
    shutil.rmtree(CORPUS, ignore_errors=True)
    smtp = {n: record("smtp", c) for n, c in smtp_clients().items()}
    smtp.update(HAND_SMTP)
    for name, data in smtp.items():
        write("smtp_session", name, b"\x00" + data)
        write("smtp_session", "proxied-" + name, b"\x01" + PROXY_SEEDS["v1-tcp4"] + data)
        if b"DATA" in data:
            body = data.split(b"DATA", 1)[1].split(b"\n", 1)[-1]
            write("smtp_data", name, body)
        for i, raw in enumerate(_auth_payloads(data)):
            write("sasl", f"{name}-{i}", raw)
    write("smtp_data", "lf-and-dots", b"a\n.\n..b\r\n.\nc\r\n.\r\nRSET\r\n")
    write("smtp_data", "long-line", b"x" * 300 + b"\r\n.\r\n")
    for flags in (b"\x06\x00\x03", b"\x03\x01\x02"):
        for name, data in {n: record("imap", c) for n, c in imap_clients().items()}.items():
            write("imap_preauth", f"{name}-{flags[0]}", flags + data)
        for name, data in {n: record("pop3", c) for n, c in pop3_clients().items()}.items():
            write("pop3_preauth", f"{name}-{flags[0]}", flags + data)
    write("imap_preauth", "literal-login", b"\x04\x00\x03a1 LOGIN {7}\r\nscanner {2+}\r\npw\r\n"
          b"a2 ID (\"name\" \"x\")\r\na3 STARTTLS\r\n")
    write("imap_preauth", "starttls", b"\x02\x00\x03a1 CAPABILITY\r\na2 STARTTLS\r\na3 LOGIN a b\r\n")
    write("pop3_preauth", "stls", b"\x02\x00\x03CAPA\r\nSTLS\r\nUSER a\r\nPASS b\r\nQUIT\r\n")
    for name, data in PROXY_SEEDS.items():
        write("proxy_header", name, data + b"EHLO x\r\n")
    write("smtp_policy", "transactions", bytes([0, 1, 0, 0, 1, 0, 2, 0, 2, 2, 3, 0, 0, 1, 1, 2, 4, 3, 1, 3]))
    write("smtp_policy", "network", bytes([2, 0, 0, 1, 1, 2, 1, 2, 3, 3, 1, 1, 4, 0, 1, 0, 2, 0, 3, 0, 2]))
    repo = CORPUS.parent.parent
    write("config", "example", (repo / "config.example.yaml").read_bytes())
    write("config", "minimal", b"accounts: [{mailbox: a@b.test, refresh_token: x}]\n"
          b"apps: {default: {tenant: t, client_id: c}}\nsmtp: {unauthenticated: [{network: 10.0.0.0/8,"
          b" mailbox: a@b.test}]}\nimap:\n  listen: [\"[::1]:1993\"]\n")
    entry = Entry("x", "scanner@contoso.test", "dev@lan", ("bob@x.test",), 1.7e9, 120)
    write("spool_record", "fresh", entry.to_json())
    write("spool_record", "failed", Entry("x", "s@c", "", ("a@b", "c@d"), 1, 5, attempts=3, next_attempt=9.5,
                                          last_error="451 4.4.1 x", mail_options=("SIZE=5",), notice=True,
                                          failed_at=3.0, rcpt_errors={"a@b": "550 x"}).to_json())
    write("spool_record", "old-version", json.dumps({"mailbox": "s@c", "mail_from": "a", "rcpts": ["b"],
                                                     "received_at": 1, "size": 1}).encode())


if __name__ == "__main__":
    main()
