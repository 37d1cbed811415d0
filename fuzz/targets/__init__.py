"""The fuzz targets: `TARGETS[name](data)` returns, or raises on a bug (never on bad input).

Each target states its oracle in its docstring: what must hold for every input, beyond "no
exception escapes".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import cores, files, proxy, smtp_session

CORPUS = Path(__file__).resolve().parent.parent / "corpus"

TARGETS: dict[str, Callable[[bytes], None]] = {
    "smtp_session": smtp_session.smtp_session,
    "smtp_policy": cores.smtp_policy,
    "smtp_data": cores.smtp_data,
    "imap_preauth": cores.imap_preauth,
    "pop3_preauth": cores.pop3_preauth,
    "sasl": cores.sasl,
    "proxy_header": proxy.proxy_header,
    "config": files.config,
    "spool_record": files.spool_record,
}


def seeds(name: str) -> list[bytes]:
    """The seed corpus of a target, sorted by file name (the order the engine runs them)."""
    directory = CORPUS / name
    return [p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()] if directory.is_dir() else []
