"""PROXY protocol (v1 and v2) in front of a listener, for HAProxy or nginx stream.

Parsing is aiosmtpd's (`aiosmtpd.proxy_protocol.get_proxy`, used by its SMTP server already); this
module holds our policy: a PROXY header is only believed from `trusted_proxies`, any other peer is
refused before a byte is read, and the real client address then replaces the proxy's for networks,
limits and logs. A `LOCAL` header (a load balancer's health check) keeps the proxy's own address.
"""

from __future__ import annotations

import ipaddress

PROXY_TIMEOUT = 10.0  # seconds for the header to arrive


def is_trusted(peer: str, networks) -> bool:
    try:
        ip = ipaddress.ip_address(peer.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip.version == n.version and ip in n for n in networks)


def real_client(proxy_data) -> str | None:
    """The client address a valid header carries; None for LOCAL or an invalid header."""
    if proxy_data is None or not proxy_data.valid or proxy_data.src_addr is None:
        return None
    return str(proxy_data.src_addr)
