"""The everyday mail address, recognised without the email package's parsers. No I/O.

Theory of operation. The stdlib's address parsers (`email._header_value_parser`, `email.utils`)
are general and slow: a few tens of microseconds per address, several times per relayed message
(aiosmtpd's MAIL/RCPT parsing, aiosmtplib's quoting, the From rewrite). Nearly every address a
relay sees is a dot-atom local part at an LDH domain name (RFC 5322 s.3.2.3 atext, RFC 1035
labels); for exactly those, every one of those parsers returns the text unchanged, so a regular
expression can answer for them. Anything else - quoted local parts, domain literals, comments,
non-ASCII, display names - still goes to the parser that would have read it. Each user of this
pattern has a property test comparing its fast path with the parser it stands in for.
"""

from __future__ import annotations

import re

ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
LABEL = r"[A-Za-z0-9-]+"
LOCAL = rf"{ATEXT}(?:\.{ATEXT})*"
DOMAIN = rf"{LABEL}(?:\.{LABEL})*"
PLAIN = re.compile(rf"{LOCAL}@{DOMAIN}")  # fullmatch: the address is an everyday one


def is_plain(address: str) -> bool:
    return PLAIN.fullmatch(address) is not None
