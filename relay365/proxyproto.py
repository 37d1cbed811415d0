"""PROXY protocol (v1 and v2) in front of a listener, for HAProxy or nginx stream.

Parsing is aiosmtpd's (`aiosmtpd.proxy_protocol.get_proxy`, used by its SMTP server already); this
module holds our policy: a PROXY header is only believed from `trusted_proxies`, any other peer is
refused before a byte is read, and the real client address then replaces the proxy's for networks,
limits and logs. A `LOCAL` header (a load balancer's health check) keeps the proxy's own address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiosmtpd.proxy_protocol import V2_CMD, ProxyData

PROXY_TIMEOUT = 10.0  # seconds for the header to arrive


def is_trusted(peer: str,
               networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(peer.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip.version == n.version and ip in n for n in networks)


def real_client(proxy_data: ProxyData | None) -> str | None:
    """The client address a valid header carries; None for LOCAL, UNKNOWN, a unix socket or an
    invalid header (the proxy's own address then stands)."""
    if proxy_data is None or not proxy_data.valid:
        return None
    # v2 LOCAL may still carry an address block; the spec says to ignore it (aiosmtpd parses it)
    if proxy_data.version == 2 and proxy_data.command == V2_CMD.LOCAL:
        return None
    ip = proxy_data.src_addr
    if not isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return None  # AF_UNIX gives 108 bytes of path, not an address for networks and limits
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped  # one IPv4 client is one key for limits and throttling, and readable in logs
    return str(ip)
