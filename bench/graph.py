"""relay365 sending one 20 MiB scan through Microsoft Graph: the relay's CPU and peak RSS.

    .venv/bin/python -m bench.run --only graph [--reps 3]

A scanner-like message (a short text body and one 20 MiB PDF attachment, base64: ~27 MiB of MIME)
goes smtplib -> relay365 (a subprocess, `send_via: graph`, direct delivery) -> the Graph stand-in
(HTTPS, in this process, so its work is not counted): a draft, one upload session in 2.5 MiB
PUTs, send. Only the relay process is measured: CPU seconds (utime + stime from /proc) and the
growth of its peak RSS (VmHWM, reset with /proc/PID/clear_refs before each message) over a warm
relay (token fetched, one small message sent first). The stand-in discards what it accepts (no
Dovecot), which changes nothing for the relay.
"""

from __future__ import annotations

import os
import smtplib
import statistics
import time
import uuid
from email.message import EmailMessage
from email.policy import default
from pathlib import Path

from bench.run import MAILBOX, PASSWORD, USER, cpu_seconds, peak_kb, progress, rss_kb
from relay365.passwords import hash_password
from relay365.standins.fakegraph import FakeGraph
from relay365.standins.fakeidp import FakeIdP
from tests.support.pki import make_pki
from tests.support.relayproc import RelayProcess

CLIENT_ID, SECRET = "bench-graph", "bench-secret"
SIZE = 20 * 2**20


def scan(size: int) -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "Printer <printer@lan.test>", "sink@example.test", "bench"
    m["Message-ID"] = f"<{uuid.uuid4()}@bench>"
    m.set_content("Scanned document attached.\n")
    m.add_attachment(os.urandom(size), maintype="application", subtype="pdf", filename="scan.pdf")
    return m.as_bytes(policy=default.clone(linesep="\r\n"))


def send(port: int, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=600) as s:
        s.login(USER, PASSWORD)
        refused = s.sendmail("printer@lan.test", ["sink@example.test"], data)
        assert not refused, refused


def graph_rows(workdir: Path, reps: int) -> list:
    pki = make_pki(workdir / "pki-graph")
    idp = FakeIdP(pki.cert_file, pki.key_file).start()
    idp.add_client(CLIENT_ID, secret=SECRET)
    graph = FakeGraph(pki.cert_file, pki.key_file, check_token=idp.valid_token,
                      token_scopes=idp.token_scopes).start()
    config = {
        "state_dir": str(workdir / "state-graph"), "log": {"level": "info", "format": "json"},
        "apps": {"default": {"tenant": "bench", "client_id": CLIENT_ID, "client_secret": SECRET,
                             "authority": idp.url, "ca_file": str(pki.ca_file)}},
        "upstream": {"smtp": {"host": "127.0.0.1", "port": 9, "tls": "starttls"},
                     "ca_file": str(pki.ca_file), "graph": {"base_url": graph.base_url}},
        "accounts": [{"mailbox": MAILBOX, "refresh_token": idp.issue_refresh_token(MAILBOX),
                      "send_via": "graph"}],
        "users": [{"username": USER, "password_hash": hash_password(PASSWORD), "mailbox": MAILBOX}],
        "smtp": {"listen": ["127.0.0.1:0"]},
    }
    relay = RelayProcess(workdir / "relay-graph", config).start()
    try:
        pid = relay.proc.pid
        send(relay.smtp_port, scan(10_000))  # warm: token, TLS to Graph, code paths
        data = scan(SIZE)
        results = []
        for _ in range(reps):
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            base, cpu0, t0 = rss_kb(pid), cpu_seconds(pid), time.perf_counter()
            send(relay.smtp_port, data)
            results.append((time.perf_counter() - t0, cpu_seconds(pid) - cpu0,
                            (peak_kb(pid) - base) / 1024, peak_kb(pid) / 1024))
        puts = sum(1 for r in graph.requests if r.method == "PUT")
    finally:
        relay.stop()
        graph.stop()
        idp.stop()
    progress("graph 20 MiB")
    name = f"{SIZE >> 20} MiB PDF ({len(data) / 2**20:.1f} MiB MIME) via Graph"
    med = [statistics.median(r[i] for r in results) for i in range(4)]
    return [(f"{name}: sent in", "s", {"relay": med[0]}),
            (f"{name}: relay CPU", "s", {"relay": med[1]}),
            (f"{name}: peak RSS growth", "MiB", {"relay": med[2]}),
            (f"{name}: peak RSS", "MiB", {"relay": med[3]}),
            (f"{name}: upload PUTs", "requests", {"relay": puts / reps})]
