"""systemd's notify protocol: READY, RELOADING, STOPPING, STATUS and the watchdog, over $NOTIFY_SOCKET.

Theory of operation. systemd hands a service with `Type=notify` the path of an AF_UNIX datagram
socket in `$NOTIFY_SOCKET` (a leading `@` means the abstract namespace) and, with `WatchdogSec=`,
the interval in `$WATCHDOG_USEC` (for the process in `$WATCHDOG_PID`, when set). Each message is
one datagram of `KEY=value` lines. Without `$NOTIFY_SOCKET` every call is a no-op, so the daemon
runs the same under systemd, in a container and in a terminal. Sending never raises: a vanished
socket is logged once and ignored (the service manager is the one to act on missing pings).

`RELOADING=1` carries `MONOTONIC_USEC`, which `Type=notify-reload` (systemd 253+) requires and
older versions ignore; a reload ends with `READY=1` again.

Sends happen on the event loop, so they must not block for long: a service manager busy elsewhere
(a daemon-reload, say) lets the socket's queue fill, and the kernel then holds a blocking sender
until it drains. We wait at most `SEND_TIMEOUT` and drop the datagram (logged), rather than stall
every session; a dropped `WATCHDOG=1` is repeated half a watchdog interval later anyway.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger("relay365.sdnotify")

# Longest a send may hold the event loop. The receiver's queue is net.unix.max_dgram_qlen
# datagrams (10 by default); PID 1 drains it in microseconds unless it is busy.
SEND_TIMEOUT = 1.0


class Notifier:
    def __init__(self, address: str | None, watchdog_usec: int | None = None,
                 send_timeout: float = SEND_TIMEOUT) -> None:
        self.address = address
        self.watchdog_interval = watchdog_usec / 2e6 if watchdog_usec else None
        self.send_timeout = send_timeout
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """One datagram of `KEY=value` lines; False when nothing could be sent."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = self._connect(self.address)
            self._sock.send("\n".join(fields).encode())
            return True
        except OSError as exc:  # TimeoutError included: the receiver's queue stayed full
            self.close()  # connect afresh next time: the manager may have a new socket by then
            if not self._warned:
                self._warned = True
                log.warning("sdnotify_failed", socket=self.address,
                            error=exc.strerror or str(exc) or type(exc).__name__)
            return False

    def _connect(self, address: str) -> socket.socket:
        # Connected, so that a full queue makes poll() wait on the receiver (the kernel only
        # knows whom we are waiting for when we have a peer) instead of spinning until timeout.
        target = "\0" + address[1:] if address.startswith("@") else address
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(self.send_timeout)
            sock.connect(target)
        except OSError:
            sock.close()
            raise
        return sock

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the configuration")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=draining sessions")

    def status(self, text: str) -> None:
        self.send(f"STATUS={_one_line(text)}")

    async def watchdog_loop(self) -> None:
        """Ping every half watchdog interval for as long as the event loop runs; cancel to stop."""
        if self.address is None or self.watchdog_interval is None:
            await asyncio.Event().wait()
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(text.split())[:500]


def from_env(environ: Mapping[str, str] | None = None) -> Notifier:
    """The notifier systemd asked for (a no-op one when not started by systemd)."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET") or None
    usec: int | None = None
    pid = env.get("WATCHDOG_PID")
    if env.get("WATCHDOG_USEC") and (not pid or pid == str(os.getpid())):
        try:
            usec = int(env["WATCHDOG_USEC"]) or None
        except ValueError:
            log.warning("sdnotify_bad_watchdog", WATCHDOG_USEC=env["WATCHDOG_USEC"])
    return Notifier(address, usec)
