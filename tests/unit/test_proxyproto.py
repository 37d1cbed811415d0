"""PROXY protocol v1/v2: the header as aiosmtpd parses it (the parser both listeners use), and our policy
on top - which peers may send one, and which client address a header yields.

Each header is parsed whole and fed byte by byte, with the session's first bytes behind it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct

import pytest
from aiosmtpd.proxy_protocol import V2_SIGNATURE, get_proxy
from hypothesis import given, settings
from hypothesis import strategies as st

from relay365.config import parse_network
from relay365.proxyproto import is_trusted, real_client

TRAILING = b"EHLO printer\r\n"


@pytest.fixture(autouse=True)
def _quiet_aiosmtpd(caplog):
    caplog.set_level(logging.CRITICAL, logger="mail.debug")  # it warns on every invalid header


def parse(data: bytes, *, bytewise: bool = False):
    """(ProxyData, what is left for the session) - or the exception get_proxy raised."""

    async def main():
        reader = asyncio.StreamReader()

        async def feed():
            for i in range(len(data)) if bytewise else [None]:
                reader.feed_data(data[i:i + 1] if bytewise else data)
                await asyncio.sleep(0)
            reader.feed_eof()

        feeder = asyncio.ensure_future(feed())
        try:
            result = await get_proxy(reader)
        finally:
            await feeder
        return result, await reader.read()

    return asyncio.run(main())


def v2(command: int, family_proto: int, body: bytes, *, length: int | None = None) -> bytes:
    return (V2_SIGNATURE + bytes([0x20 | command, family_proto])
            + struct.pack("!H", len(body) if length is None else length) + body)


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
            + struct.pack("!HH", sport, dport))


VALID = [
    (b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 25\r\n", "192.0.2.7"),
    (b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 25\r\n", "2001:db8::7"),
    (b"PROXY TCP6 ::ffff:192.0.2.7 ::ffff:10.0.0.1 1 25\r\n", "192.0.2.7"),  # IPv4 by any other name
    (b"PROXY UNKNOWN\r\n", None),  # the proxy does not know: its own address stands
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None),
    (v2(1, 0x11, inet("192.0.2.7", "10.0.0.1", 51234, 25)), "192.0.2.7"),
    (v2(1, 0x21, inet("2001:db8::7", "2001:db8::1", 51234, 143)), "2001:db8::7"),
    (v2(1, 0x21, inet("::ffff:192.0.2.7", "::ffff:10.0.0.1", 1, 143)), "192.0.2.7"),
    (v2(1, 0x11, inet("192.0.2.7", "10.0.0.1", 1, 25) + b"\x04\x00\x02ab"), "192.0.2.7"),  # with a TLV
    (v2(1, 0x00, b""), None),  # PROXY with family UNSPEC
    (v2(0, 0x00, b""), None),  # LOCAL: the proxy's own health check
    # LOCAL with an address block: the spec says to ignore it, whatever aiosmtpd parsed
    (v2(0, 0x11, inet("192.0.2.7", "10.0.0.1", 1, 25)), None),
    (v2(0, 0x21, inet("2001:db8::7", "2001:db8::1", 1, 25)), None),
    # a unix socket behind the proxy: 108-byte paths, no client IP for networks and limits
    (v2(1, 0x31, b"/run/a.sock".ljust(108, b"\0") + b"/run/b.sock".ljust(108, b"\0")), None),
]


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("header, client", VALID)
def test_valid_headers(header, client, bytewise):
    data, rest = parse(header + TRAILING, bytewise=bytewise)
    assert data.valid and real_client(data) == client
    assert rest == TRAILING  # the session's own bytes are left for it


def test_v1_fields():
    data, _ = parse(b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 25\r\n")
    assert (data.version, data.src_addr, data.src_port, data.dst_addr, data.dst_port) == (
        1, ipaddress.ip_address("192.0.2.7"), 51234, ipaddress.ip_address("10.0.0.1"), 25)


INVALID = [
    b"PROXY TCP4 192.0.2.7 10.0.0.1 51234\r\n",  # a port missing
    b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 25 extra\r\n",
    b"PROXY TCP4 192.0.2.777 10.0.0.1 1 25\r\n",
    b"PROXY TCP4 2001:db8::7 10.0.0.1 1 25\r\n",  # family and address disagree
    b"PROXY TCP6 192.0.2.7 10.0.0.1 1 25\r\n",
    b"PROXY TCP4 192.0.2.7 10.0.0.1 1 99999\r\n",
    b"PROXY TCP4 192.0.2.7 10.0.0.1 01 25\r\n",  # leading zero
    b"PROXY TCP4  192.0.2.7 10.0.0.1 1 25\r\n",  # two spaces
    b"PROXY UDP4 192.0.2.7 10.0.0.1 1 25\r\n",
    b"PROXY TCP5 192.0.2.7 10.0.0.1 1 25\r\n",
    b"PROXYTCP4 192.0.2.7 10.0.0.1 1 25\r\n",
    b"PROXY TCP4 192.0.2.7 10.0.0.1 1 25\n",  # LF only
    b"PROXY TCP4 " + b"1" * 120 + b"\r\n",  # longer than v1's 107 bytes
    b"PROXY TCP4 192.0.2.7 10.0.0.1 1 25",  # truncated: no line end before EOF
    b"EHLO printer\r\n",  # no header at all
    b"\r\n\r\n\x00\r\nQUIX\n" + b"\x21\x11\x00\x0c" + bytes(12),  # wrong v2 signature
    v2(1, 0x11, inet("192.0.2.7", "10.0.0.1", 1, 25))[:20],  # truncated v2 address block
    v2(1, 0x11, b"", length=12),  # a length that promises more than arrives
    v2(1, 0x11, inet("192.0.2.7", "10.0.0.1", 1, 25)[:8]),  # address block shorter than INET needs
    v2(2, 0x11, inet("192.0.2.7", "10.0.0.1", 1, 25)),  # command 2 does not exist
    v2(1, 0x41, inet("192.0.2.7", "10.0.0.1", 1, 25)),  # family 4 does not exist
    v2(1, 0x13, inet("192.0.2.7", "10.0.0.1", 1, 25)),  # protocol 3 does not exist
    bytes([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x11, 0x11, 0, 12])
    + inet("192.0.2.7", "10.0.0.1", 1, 25),  # version 1 in a v2 header
]


@pytest.mark.parametrize("header", INVALID)
def test_invalid_headers_yield_no_client(header):
    data, _ = parse(header)
    assert not data.valid and data.error and real_client(data) is None


@pytest.mark.parametrize("header", [b"", b"PRO", V2_SIGNATURE[:4]])
def test_fewer_than_five_bytes_end_the_connection(header):
    """get_proxy's first read is readexactly(5): the IMAP listener catches this, aiosmtpd too."""
    with pytest.raises(asyncio.IncompleteReadError):
        parse(header)


def test_no_header_is_no_client():
    assert real_client(None) is None


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=120),
    st.binary(max_size=80).map(lambda b: b"PROXY " + b),
    st.binary(max_size=80).map(lambda b: V2_SIGNATURE + b),
    st.tuples(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=240)).map(
        lambda t: V2_SIGNATURE + bytes(t[:2]) + struct.pack("!H", len(t[2])) + t[2]),
))
def test_arbitrary_bytes_give_a_result_or_a_clean_end(data):
    try:
        result, _ = parse(data)
    except asyncio.IncompleteReadError:
        assert len(data) < 5
        return
    client = real_client(result)
    if client is not None:
        assert result.valid and ipaddress.ip_address(client)


# -- who may send a header -----------------------------------------------------------------------

PROXIES = [parse_network("10.0.0.5"), parse_network("192.168.0.0/16"), parse_network("fd00::/8")]


@pytest.mark.parametrize("peer, trusted", [
    ("10.0.0.5", True), ("10.0.0.6", False), ("192.168.44.1", True), ("192.169.0.1", False),
    ("::ffff:10.0.0.5", True),  # a dual-stack listener sees IPv4 proxies like this
    ("::ffff:10.0.0.6", False), ("fd00::1", True), ("fd00::1%eth0", True), ("fe80::1", False),
    ("?", False), ("", False), ("10.0.0.5:25", False),
])
def test_is_trusted(peer, trusted):
    assert is_trusted(peer, PROXIES) is trusted


def test_nobody_is_trusted_without_proxies():
    assert not is_trusted("127.0.0.1", [])
