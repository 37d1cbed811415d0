"""A local HTTPS webhook receiver, as Slack/Teams/ntfy would be: records every JSON POST.

`status` may be changed while it runs (a 500 or 429 to see the relay retry); `received` holds
(headers, body) pairs in arrival order.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class WebhookReceiver:
    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(str(cert_file), str(key_file))
        self.status = 200
        self.received: list[tuple[dict[str, str], dict]] = []
        self.raw: list[bytes] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._lock:
                    receiver.raw.append(body)
                    if receiver.status == 200:
                        receiver.received.append(({k.lower(): v for k, v in self.headers.items()},
                                                  json.loads(body)))
                self.send_response(receiver.status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):  # type: ignore[no-untyped-def]
                sock, addr = super().get_request()
                return receiver.tls.wrap_socket(sock, server_side=True), addr

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}/hooks/T0/B0/s3cretpath"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def bodies(self, **match: str) -> list[dict]:
        with self._lock:
            return [b for _, b in self.received if all(b.get(k) == v for k, v in match.items())]

    def wait(self, n: int = 1, timeout: float = 20.0, **match: str) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(found := self.bodies(**match)) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} of {n} webhook posts {match} in {timeout}s: "
                                     f"{self.bodies()}")
            time.sleep(0.05)
        return found
