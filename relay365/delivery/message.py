"""A message's content held in bounded memory: small ones in RAM, large ones in a temporary file.

Theory of operation. The SMTP side writes DATA into a `Body` as it decodes it (CRLF line ends, no
dot-stuffing). Up to `spill` bytes stay in memory; past that the content moves to an anonymous
temporary file (O_TMPFILE where the kernel has it: nothing to clean up after a crash) under the
spool's directory (the system's temp dir when that refuses one), and memory per message stays at
one read buffer whatever its size.
Everything that sends or stores a message reads it back as chunks (`Message.chunks()`): the
upstream SMTP session (`UpstreamSMTP.send`, through `wire.WireEncoder`), the spool, Graph.

`with_head(body, head, offset)` is the same message with its header block replaced (the From
rewrite): the new header bytes, then the body from `offset`, with no copy of the body.
`BytesMessage` wraps content already in memory (notices, tests).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Protocol

CHUNK = 64 * 1024
SPILL = 256 * 1024  # content kept in memory before it moves to a file


class Message(Protocol):
    """Content that can be read, from the start, as often as needed."""

    @property
    def size(self) -> int: ...
    def chunks(self) -> Iterator[bytes]: ...


class BytesMessage:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    @property
    def size(self) -> int:
        return len(self.data)

    def chunks(self) -> Iterator[bytes]:
        view = memoryview(self.data)
        for start in range(0, len(view), CHUNK):
            yield bytes(view[start:start + CHUNK])


class Body:
    """Content as it arrives; `write`, then read with `chunks`, `head`, `read_from`; `close`."""

    __slots__ = ("_directory", "_file", "_mem", "_spill", "error", "size")

    def __init__(self, directory: Path | None = None, spill: int = SPILL) -> None:
        self._directory, self._spill = directory, spill
        self._mem: bytearray | None = bytearray()
        self._file: IO[bytes] | None = None
        self.size = 0
        self.error: OSError | None = None  # the temporary file could not be written (disk full)

    @property
    def in_memory(self) -> bool:
        return self._file is None

    def write(self, data: bytes) -> None:
        """Never raises: a failure to store is kept in `error` (and the rest is dropped), so the
        SMTP side reads DATA to its end and answers 452 instead of losing step with the client."""
        if not data or self.error is not None:
            return
        self.size += len(data)
        try:
            if self._mem is not None:
                self._mem += data
                if len(self._mem) <= self._spill:
                    return
                data, self._mem = bytes(self._mem), None
                self._file = self._open()
            assert self._file is not None
            self._file.write(data)
        except OSError as exc:
            self.error = exc
            self.close()

    def _open(self) -> IO[bytes]:
        """The temporary file; in the system's temp dir when `directory` cannot hold one (read-
        only, no permission): a message sent straight on needs no spool, and a spooled one
        hears its 452 from the spool itself."""
        directory = self._directory
        if directory is not None:
            try:
                directory.mkdir(parents=True, exist_ok=True)
                return tempfile.TemporaryFile(dir=directory)
            except OSError:
                pass
        return tempfile.TemporaryFile()

    def read_from(self, offset: int) -> Iterator[bytes]:
        if self._mem is not None:
            view = memoryview(self._mem)
            for start in range(offset, len(view), CHUNK):
                yield bytes(view[start:start + CHUNK])
            return
        assert self._file is not None
        self._file.flush()
        fd = self._file.fileno()
        while offset < self.size:
            chunk = os.pread(fd, CHUNK, offset)
            if not chunk:
                return
            offset += len(chunk)
            yield chunk

    def chunks(self) -> Iterator[bytes]:
        return self.read_from(0)

    def head(self, limit: int) -> bytes:
        """The first `limit` bytes (or all of a shorter message)."""
        out = bytearray()
        for chunk in self.read_from(0):
            out += chunk
            if len(out) >= limit:
                break
        return bytes(out[:limit])

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # a full disk may refuse the buffered rest
                self._file.close()
            self._file = None
        self._mem = bytearray()
        self.size = 0


class WithHead:
    """`body` with its first `offset` bytes replaced by `head`."""

    __slots__ = ("body", "head", "offset")

    def __init__(self, body: Body, head: bytes, offset: int) -> None:
        self.body, self.head, self.offset = body, head, offset

    @property
    def size(self) -> int:
        return len(self.head) + self.body.size - self.offset

    def chunks(self) -> Iterator[bytes]:
        yield self.head
        yield from self.body.read_from(self.offset)


class FileMessage:
    """Content in a file (a spooled `message.eml`), read in chunks each time it is sent."""

    __slots__ = ("path", "size")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size

    def chunks(self) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk


def read_all(message: Message) -> bytes:
    """The whole content in memory: only for what needs it whole (a Graph MIME upload <= 3 MB)."""
    return b"".join(message.chunks())
