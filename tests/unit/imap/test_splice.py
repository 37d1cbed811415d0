"""The splice over real sockets, under uvloop and asyncio's own loop: bytes the stream readers
already held go across, back-pressure bounds what the relay buffers, and each way of ending is
named."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from relay365.imap.splice import SpliceResult, splice
from relay365.states import ClosedBy

Pair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def run(loop: str, main: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(main(), 60)  # a splice that never ends fails, not hangs

    (uvloop.run if loop == "uvloop" else asyncio.run)(bounded())


async def ends() -> tuple[Pair, socket.socket]:
    """The relay's stream end of a socket pair, and the far end (a client or the upstream)."""
    mine, far = socket.socketpair()
    far.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=mine)
    return (reader, writer), far


async def recv_until(far: socket.socket, want: bytes, timeout: float = 5) -> bytes:
    loop, got = asyncio.get_running_loop(), b""
    async with asyncio.timeout(timeout):
        while want not in got:
            chunk = await loop.sock_recv(far, 65536)
            assert chunk, f"closed after {got!r}"
            got += chunk
    return got


LOOPS = pytest.mark.parametrize("loop", ["uvloop", "asyncio"])


@LOOPS
def test_bytes_the_readers_already_held_go_across_first(loop):
    """A client that pipelined after LOGIN and an upstream that sent an untagged line before the
    splice began: both were sitting in the stream readers, and neither is lost."""

    async def main() -> None:
        client, c_far = await ends()
        upstream, u_far = await ends()
        c_far.send(b"a LOGIN\r\nb SELECT INBOX\r\n")
        u_far.send(b"* OK hello\r\n* 1 EXISTS\r\n")
        assert await client[0].readline() == b"a LOGIN\r\n"  # what the login core read
        assert await upstream[0].readline() == b"* OK hello\r\n"
        task = asyncio.create_task(splice(client, upstream, idle_timeout=30))
        assert await recv_until(u_far, b"b SELECT INBOX\r\n") == b"b SELECT INBOX\r\n"
        assert await recv_until(c_far, b"* 1 EXISTS\r\n") == b"* 1 EXISTS\r\n"
        c_far.close()
        result = await asyncio.wait_for(task, 5)
        assert result == SpliceResult(ClosedBy.CLIENT, len(b"b SELECT INBOX\r\n"), len(b"* 1 EXISTS\r\n"))
        u_far.close()

    run(loop, main)


@LOOPS
def test_a_client_that_does_not_read_holds_the_upstream_back(loop):
    """64 MiB from the upstream to a client that reads nothing: the relay's buffers stay near the
    transports' high-water marks instead of holding the message; then the client reads it all."""

    async def main() -> None:
        client, c_far = await ends()
        upstream, u_far = await ends()
        task = asyncio.create_task(splice(client, upstream, idle_timeout=30))
        total, block = 64 * 2**20, b"x" * 2**20
        u_far.setblocking(True)
        c_far.setblocking(True)

        def send_all() -> None:  # the upstream, in a thread: it blocks when the relay stops reading
            with contextlib.suppress(OSError):
                for _ in range(total // len(block)):
                    u_far.sendall(block)

        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        try:
            await asyncio.sleep(1.0)
            buffered = client[1].transport.get_write_buffer_size()
            assert sender.is_alive()  # the upstream is held back: its socket is full
            assert buffered < 4 * 2**20, buffered
            got = 0
            while got < total:
                chunk = await asyncio.to_thread(c_far.recv, 2**20)
                assert chunk
                got += len(chunk)
            await asyncio.to_thread(sender.join, 10)
            u_far.close()
            result = await asyncio.wait_for(task, 5)
            assert result.closed_by == ClosedBy.UPSTREAM and result.bytes_down == total
        finally:
            for sock in (u_far, c_far):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    run(loop, main)


@LOOPS
def test_idle_timeout_and_session_time_end_it(loop):
    async def main() -> None:
        for kwargs, why in (({"idle_timeout": 0.2}, ClosedBy.IDLE_TIMEOUT),
                            ({"idle_timeout": 30, "max_time": 0.3}, ClosedBy.SESSION_TIME)):
            client, c_far = await ends()
            upstream, u_far = await ends()
            result = await asyncio.wait_for(splice(client, upstream, **kwargs), 5)
            assert result.closed_by == why
            # both sides hear the close
            assert await asyncio.get_running_loop().sock_recv(c_far, 10) == b""
            assert await asyncio.get_running_loop().sock_recv(u_far, 10) == b""
            c_far.close()
            u_far.close()

    run(loop, main)


@LOOPS
def test_the_upstream_closing_ends_it_and_closes_the_client(loop):
    async def main() -> None:
        client, c_far = await ends()
        upstream, u_far = await ends()
        task = asyncio.create_task(splice(client, upstream, idle_timeout=30))
        u_far.send(b"* BYE shutting down\r\n")
        u_far.close()
        assert await recv_until(c_far, b"BYE") == b"* BYE shutting down\r\n"
        assert (await asyncio.wait_for(task, 5)).closed_by == ClosedBy.UPSTREAM
        assert await asyncio.get_running_loop().sock_recv(c_far, 10) == b""
        c_far.close()

    run(loop, main)
