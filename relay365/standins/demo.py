"""`relay365 demo`: the whole relay, end to end, against an embedded Office 365 stand-in.

It mints a throwaway CA (`certs`, with cryptography), starts a local identity platform (token
endpoint with rotating refresh tokens) and a local "smtp.office365.com" that requires STARTTLS and
XOAUTH2 and checks the token, writes a real config file pointing relay365 at them, starts relay365
exactly as `serve` would, sends one message through it as a legacy client would (plain SMTP, AUTH
PLAIN), and shows what the upstream received next to the relay's own log line. Then it keeps
serving until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import smtplib
import sys
import tempfile
import textwrap
from email.message import EmailMessage
from pathlib import Path
from typing import TextIO

from structlog.typing import EventDict

from ..app import Relay
from ..config import load_config
from ..logs import configure
from ..passwords import hash_password
from ..runloop import run
from .certs import make_test_certs
from .fakeidp import FakeIdP
from .fakeo365 import FakeO365SMTP, ReceivedMessage

MAILBOX = "scanner@contoso.example"
USER, PASSWORD = "scanner", "demo-password"
ADMIN_TOKEN = "demo-admin-token"  # the status page's actions; a throwaway, like the rest


class _Tap:
    """Keeps the relay's `message_relayed` log events, to show them next to what arrived (a
    structlog processor: the relay's own events do not pass through `logging`)."""

    def __init__(self) -> None:
        self.events: list[dict[str, object]] = []

    def __call__(self, logger: object, method: str, event: EventDict) -> EventDict:
        if event.get("event") == "message_relayed":
            self.events.append(dict(event))
        return event


def _pki(workdir: Path) -> tuple[Path, Path, Path]:
    certs = make_test_certs(workdir / "pki", organization="relay365 demo CA")
    return certs.ca_file, certs.cert_file, certs.key_file


def _write_config(workdir: Path, idp: FakeIdP, smtp_port: int, relay_port: int,
                  ca_file: Path, refresh_token: str) -> Path:
    path = workdir / "config.yaml"
    path.write_text(textwrap.dedent(f"""\
        # written by relay365 demo: the relay against a local Office 365 stand-in
        state_dir: {workdir / 'state'}
        log: {{level: info, format: console}}
        apps:
          default:
            tenant: contoso.example
            client_id: demo-client
            client_secret: demo-secret
            authority: {idp.url}
            ca_file: {ca_file}
        upstream:
          smtp: {{host: 127.0.0.1, port: {smtp_port}, tls: starttls}}
          ca_file: {ca_file}
        accounts:
          - mailbox: {MAILBOX}
            refresh_token: "{refresh_token}"
        users:
          - username: {USER}
            password_hash: "{hash_password(PASSWORD, ln=14)}"
            mailbox: {MAILBOX}
        smtp:
          listen: ["127.0.0.1:{relay_port}"]
          sender: rewrite
        http:
          listen: 127.0.0.1:0
          admin_token: {ADMIN_TOKEN}
        """))
    return path


def _send_sample(port: int) -> None:
    msg = EmailMessage()
    msg["From"] = "Scanner 3rd floor <scanner3@printers.lan>"
    msg["To"] = "alice@contoso.example"
    msg["Subject"] = "Scan from relay365 demo"
    msg.set_content("A legacy device sent this with plain SMTP and a password.\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.login(USER, PASSWORD)
        s.send_message(msg)


def _show(received: ReceivedMessage, tap: _Tap, port: int, config_path: Path, out: TextIO,
          status_url: str = "") -> None:
    print("\n== what the Office 365 stand-in received ==", file=out)
    print(f"  TLS: {'yes' if received.tls else 'no'}   AUTH: {received.mechanism} as {received.mailbox}",
          file=out)
    print(f"  MAIL FROM: {received.mail_from}   RCPT TO: {', '.join(received.rcpt_tos)}", file=out)
    for line in received.data.decode("utf-8", "replace").splitlines():
        if line.lower().startswith(("from:", "reply-to:", "subject:")):
            print(f"  {line}", file=out)
    if tap.events:
        ev = tap.events[-1]
        print("\n== the relay's log line ==", file=out)
        print("  " + " ".join(f"{k}={ev[k]}" for k in ("event", "peer", "user", "mailbox",
                                                        "recipients", "size", "upstream_reply")
                              if k in ev), file=out)
    print(textwrap.dedent(f"""
        == try it yourself ==
          relay365 is listening on 127.0.0.1:{port} (config: {config_path})
          swaks --server 127.0.0.1:{port} --auth PLAIN --auth-user {USER} --auth-password {PASSWORD} \\
                --from me@printers.lan --to bob@contoso.example
          A printer: SMTP server = this host, port {port}, user {USER}, password {PASSWORD}, no TLS.
          Status page: {status_url} (admin token for its actions: {ADMIN_TOKEN})
          Ctrl-C stops the demo.
        """), file=out)


async def _demo(keep_serving: bool, port: int, out: TextIO) -> int:
    with tempfile.TemporaryDirectory(prefix="relay365-demo-") as tmp:
        workdir = Path(tmp)
        ca_file, cert_file, key_file = _pki(workdir)
        with FakeIdP(str(cert_file), str(key_file)) as idp:
            idp.add_client("demo-client", secret="demo-secret")
            refresh_token = idp.issue_refresh_token(MAILBOX)
            o365 = FakeO365SMTP(str(cert_file), str(key_file), check_token=idp.valid_token)
            smtp_port = await o365.start()
            config_path = _write_config(workdir, idp, smtp_port, port, ca_file, refresh_token)
            config = load_config(config_path)
            tap = _Tap()
            configure(config.log.level, config.log.format, stream=out, taps=[tap])
            relay = Relay(config)
            try:
                await relay.start()
            except OSError as exc:
                print(f"relay365 demo: cannot listen on 127.0.0.1:{port}: {exc.strerror}; "
                      f"try --port 0", file=sys.stderr)
                await o365.stop()
                return 1
            port = relay.addresses["smtp"][0][1]
            try:
                await asyncio.to_thread(_send_sample, port)
                http = relay.addresses.get("http", [("127.0.0.1", 0)])[0]
                _show(o365.messages[-1], tap, port, config_path, out, f"http://{http[0]}:{http[1]}/")
                if keep_serving:
                    await relay.serve()
            finally:
                await relay.stop(drain_timeout=5)
                await o365.stop()
    return 0


def run_demo(keep_serving: bool = True, port: int = 2525, out: TextIO | None = None) -> int:
    try:
        return run(_demo(keep_serving, port, out or sys.stdout))
    except KeyboardInterrupt:
        return 0
