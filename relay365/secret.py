"""Typed secrets: a value that never prints itself.

Passwords, client secrets, refresh and access tokens travel through the code as `Secret`. Its `repr`
and `str` are redacted, so a stray `log.info("x", password=pw)` or an exception message prints `***`;
the clear value is only available through an explicit `reveal()` at the place it goes on the wire.
"""

from __future__ import annotations

import hmac
from typing import NoReturn


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> NoReturn:  # pickling would be a way around the redaction
        raise TypeError("Secret is not picklable")
