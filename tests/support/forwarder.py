"""A TCP forwarder between the relay and a real upstream, for outages the test decides.

`Gate(target_port)` listens on a port of its own (the one the relay is configured with) and
forwards each connection to `target_port` on 127.0.0.1: `open()` and `shut()` make Office 365 come
and go while its address stays the same; shut, the port refuses connections and the connections
in progress are cut.

`cut_after(n, then)` breaks one connection at a chosen point: the next connection whose client
(the relay) has sent more than `n` bytes gets exactly `n` of them through, then `then()` runs (say,
stop Postfix) while nothing more is forwarded from the client, then both ends are closed. Past
STARTTLS the forwarder sees only ciphertext, so the point is chosen by size: the dialogue before
DATA (TLS handshake, EHLO, AUTH XOAUTH2 with its token, MAIL, RCPT) is a few KB, so `n` well
past that and well short of the message's size lands inside the DATA body. One-shot: the
connections after it are forwarded whole.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from tests.support.upstream import free_port


class Gate:
    """A TCP forwarder to `target_port` on a fixed port of its own; shut, it refuses connections."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.connections = 0
        self._cut: tuple[int, Callable[[], None] | None] | None = None
        self.cut = threading.Event()  # set once a cut_after() point was reached and carried out

    def open(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def shut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:  # wakes the thread blocked in accept(); close() alone would not free the port
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            _close(c)
            c.close()

    def cut_after(self, n: int, then: Callable[[], None] | None = None) -> None:
        """Break the next connection whose client sends more than `n` bytes (see the module)."""
        self.cut.clear()
        self._cut = (n, then)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
                self.connections += 1
            threading.Thread(target=self._pump_up, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump_up(self, client: socket.socket, server: socket.socket) -> None:
        """Client to server, counting, and breaking the link at a cut_after() point."""
        sent = 0
        try:
            while data := client.recv(65536):
                cut, room = self._cut, None
                if cut is not None and sent + len(data) > cut[0]:
                    with self._lock:  # one connection only takes the cut
                        if self._cut is cut:
                            self._cut, room = None, cut[0] - sent
                if room is not None:
                    assert cut is not None
                    server.sendall(data[:room])
                    self._break(client, server, cut[1])
                    return
                server.sendall(data)
                sent += len(data)
        except OSError:
            pass
        _close(client, server)

    def _break(self, client: socket.socket, server: socket.socket,
               then: Callable[[], None] | None) -> None:
        try:
            if then is not None:
                then()
        finally:
            _close(client, server)
            self.cut.set()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        _close(src, dst)


def _close(*socks: socket.socket) -> None:
    """Shut both directions (the peer sees the end at once), leaving close() to the owner."""
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
