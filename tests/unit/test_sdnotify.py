"""The notify protocol against real AF_UNIX datagram sockets, and `relay365 serve` under it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest
import yaml
from structlog.testing import capture_logs

from relay365.sdnotify import Notifier, from_env


@pytest.fixture
def listener(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield str(path), sock
    sock.close()


def recv(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_without_notify_socket_nothing_is_sent_and_nothing_fails():
    n = from_env({})
    assert not n.enabled
    n.ready("x")
    n.reloading()
    n.stopping()
    assert n.send("READY=1") is False


def test_ready_reloading_stopping_datagrams(listener):
    path, sock = listener
    n = from_env({"NOTIFY_SOCKET": path})
    n.ready("listening on\n127.0.0.1:25")
    assert recv(sock) == ["READY=1", "STATUS=listening on 127.0.0.1:25"]
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.reloading()
    fields = recv(sock)
    assert fields[0] == "RELOADING=1" and fields[1].startswith("MONOTONIC_USEC=")
    assert 0 <= int(fields[1].split("=")[1]) - before < 5_000_000
    n.ready()
    assert recv(sock) == ["READY=1"]
    n.stopping()
    assert recv(sock)[0] == "STOPPING=1"
    n.close()


def test_abstract_socket_address():
    name = f"relay365-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        n = from_env({"NOTIFY_SOCKET": "@" + name})
        n.ready()
        assert recv(sock) == ["READY=1"]
        n.close()
    finally:
        sock.close()


def test_watchdog_pings_at_half_the_interval(listener):
    path, sock = listener
    n = from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    assert n.watchdog_interval == pytest.approx(0.1)

    async def run():
        task = asyncio.create_task(n.watchdog_loop())
        await asyncio.sleep(0.55)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    sock.settimeout(0.2)
    pings = []
    try:
        while True:
            pings.append(recv(sock))
    except TimeoutError:
        pass
    assert 4 <= len(pings) <= 7 and all(p == ["WATCHDOG=1"] for p in pings)
    n.close()


def test_watchdog_for_another_pid_is_not_ours(listener):
    path, _ = listener
    n = from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert n.watchdog_interval is None
    n = from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())})
    assert n.watchdog_interval == pytest.approx(0.1)


def test_a_vanished_socket_never_raises_and_is_logged_once(tmp_path):
    n = Notifier(str(tmp_path / "gone.sock"))
    with capture_logs() as logs:
        assert n.send("READY=1") is False
        n.ready("x")
        n.stopping()
        assert n.send("WATCHDOG=1") is False
    assert [e["event"] for e in logs] == ["sdnotify_failed"]
    assert logs[0]["socket"] == str(tmp_path / "gone.sock") and logs[0]["log_level"] == "warning"
    n.close()


def test_a_notify_socket_bound_anew_is_found_again(tmp_path):
    """A send that fails drops the connection; the next one reaches whoever owns the path now."""
    path = str(tmp_path / "notify.sock")
    first = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    first.bind(path)
    n = Notifier(path)
    try:
        assert n.send("READY=1") is True
        assert first.recv(64) == b"READY=1"
        first.close()
        os.unlink(path)
        assert n.send("WATCHDOG=1") is False  # nobody there
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as second:
            second.bind(path)
            second.settimeout(5)
            assert n.send("WATCHDOG=1") is True
            assert second.recv(64) == b"WATCHDOG=1"
    finally:
        first.close()
        n.close()


def test_a_receiver_that_never_reads_holds_us_at_most_the_send_timeout(listener):
    """A busy service manager must not freeze the event loop: the kernel queues only
    net.unix.max_dgram_qlen datagrams (10 by default), then a blocking sender would wait forever."""
    path, sock = listener
    n = Notifier(path, send_timeout=0.2)
    sent: list[bool] = []
    with capture_logs() as logs:
        while len(sent) < 10_000 and (not sent or sent[-1]):
            started, cpu = time.monotonic(), time.thread_time()
            sent.append(n.send(f"STATUS={len(sent)}"))
        blocked_for, cpu = time.monotonic() - started, time.thread_time() - cpu
        assert n.send("WATCHDOG=1") is False
    assert sent[0] is True and sent[-1] is False  # the queue filled up, and we came back
    assert 0.15 <= blocked_for < 2.0
    assert cpu < 0.1  # waited in poll() on the receiver, not spinning on EAGAIN
    assert [e["event"] for e in logs] == ["sdnotify_failed"]
    assert recv(sock) == ["STATUS=0"]  # what was queued arrives, in order
    assert recv(sock) == ["STATUS=1"]
    n.close()


def test_relay_serve_speaks_the_protocol(listener, tmp_path):
    """READY once bound, watchdog pings, RELOADING then READY on SIGHUP, STOPPING on SIGTERM."""
    path, sock = listener
    config = {
        "state_dir": str(tmp_path / "state"), "log": {"level": "info", "format": "json"},
        "apps": {"default": {"tenant": "t", "client_id": "c", "authority": "https://127.0.0.1:1"}},
        "accounts": [{"mailbox": "printer@example.test"}],
        "smtp": {"listen": ["127.0.0.1:0"],
                 "unauthenticated": [{"network": "127.0.0.1/32", "mailbox": "printer@example.test"}]},
    }
    cfg = tmp_path / "relay.yaml"
    cfg.write_text(yaml.safe_dump(config))
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    env.pop("WATCHDOG_PID", None)
    log = open(tmp_path / "relay.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "relay365", "serve", "-c", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    seen: list[list[str]] = []

    def until(first: str, timeout: float = 15) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                fields = recv(sock)
            except TimeoutError:
                continue
            seen.append(fields)
            if fields[0] == first:
                return fields
        raise AssertionError(f"no {first} within {timeout}s; got {seen}\n"
                             + (tmp_path / "relay.log").read_text()[-2000:])

    try:
        ready = until("READY=1")
        assert ready[1].startswith("STATUS=listening on")
        # READY means bound: the SMTP listener named in STATUS answers at once
        port = int(re.search(r"127\.0\.0\.1:(\d+)", ready[1]).group(1))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as smtp:
            assert smtp.recv(512).startswith(b"220 ")
        until("WATCHDOG=1")
        until("WATCHDOG=1")
        proc.send_signal(signal.SIGHUP)
        until("RELOADING=1")
        assert until("READY=1") == ["READY=1", "STATUS=reloaded"]
        proc.send_signal(signal.SIGTERM)
        until("STOPPING=1")
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
