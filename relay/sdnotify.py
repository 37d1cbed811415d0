"""systemd's notify protocol: READY, RELOADING, STOPPING, STATUS and the watchdog, over $NOTIFY_SOCKET.

Theory of operation. systemd hands a service with `Type=notify` the path of an AF_UNIX datagram
socket in `$NOTIFY_SOCKET` (a leading `@` means the abstract namespace) and, with `WatchdogSec=`,
the interval in `$WATCHDOG_USEC` (for the process in `$WATCHDOG_PID`, when set). Each message is
one datagram of `KEY=value` lines. Without `$NOTIFY_SOCKET` every call is a no-op, so the daemon
runs the same under systemd, in a container and in a terminal. Sending never raises: a vanished
socket is logged once and ignored (the service manager is the one to act on missing pings).

`RELOADING=1` carries `MONOTONIC_USEC`, which `Type=notify-reload` (systemd 253+) requires and
older versions ignore; a reload ends with `READY=1` again.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

import structlog

log = structlog.get_logger("relay.sdnotify")


class Notifier:
    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_interval = watchdog_usec / 2e6 if watchdog_usec else None
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """One datagram of `KEY=value` lines; False when nothing could be sent."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), target)
            return True
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("sdnotify_failed", socket=self.address, error=exc.strerror or str(exc))
            return False

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


def from_env(environ: os._Environ | dict | None = None) -> Notifier:
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
