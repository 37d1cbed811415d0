"""The value types of the config file: sizes, durations, listen addresses, networks.

Pure parsers: each takes the (environment-expanded) string from the YAML file and returns the value
or raises `ValueError` with a message that the loader reports with the key and line.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from .loader import field_parser

_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024**2, "MB": 1024**2,
          "MIB": 1024**2, "G": 1024**3, "GB": 1024**3, "GIB": 1024**3}


def parse_size(text: str) -> int:
    """`35MB` -> bytes. Units are binary (Exchange's 35 MB limit is 36,700,160 bytes)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 35MB, 512KB, 1048576)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


@dataclass(frozen=True)
class ListenAddr:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(text: str) -> ListenAddr:
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]*):(\d+)", text.strip())
    if not m:
        raise ValueError(f"not a listen address: {text!r} (examples: 0.0.0.0:2525, [::1]:1143)")
    host = m.group(1) or m.group(3) or "0.0.0.0"
    port = int(m.group(2) or m.group(4))
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    return ListenAddr(host, port)


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"not an IP network: {text!r} (examples: 192.168.10.0/24, 10.0.0.5)") from None


_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """`30s`, `15m`, `1h`, `5d` or plain seconds -> seconds.

    A negative plain number is returned as it is, for the section's range check to name the key
    ("must be more than 0"); a negative with a unit is no duration at all."""
    m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*([a-z]*)\s*", str(text).lower())
    if not m or m.group(2) not in _DURATION_UNITS or (m.group(1).startswith("-") and m.group(2)):
        raise ValueError(f"not a duration: {text!r} (examples: 30s, 15m, 1h, 5d, 120)")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def duration(default: float | None) -> Any:
    """A dataclass field for seconds that also takes `30s`, `15m`, `1h`, `5d`."""
    return field(default=default, metadata=field_parser(parse_duration, expects="number"))


def size(default: int) -> Any:
    """A dataclass field for bytes that also takes `35MB`, `512KB`."""
    return field(default=default, metadata=field_parser(parse_size))


def check_ranges(obj: object, positive: tuple[str, ...] = (), at_least_one: tuple[str, ...] = (),
                  not_negative: tuple[str, ...] = ()) -> None:
    """A dataclass's own range check; the loader reports the ValueError with the section's line."""
    for name in positive:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            raise ValueError(f"{name}: must be more than 0 (got {value})")
    for name in at_least_one:
        if getattr(obj, name) < 1:
            raise ValueError(f"{name}: must be at least 1 (got {getattr(obj, name)})")
    for name in not_negative:
        if getattr(obj, name) < 0:
            raise ValueError(f"{name}: must not be negative (got {getattr(obj, name)})")
