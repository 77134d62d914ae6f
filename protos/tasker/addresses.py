"""Network addresses, as the daemon's config and the clients' options write them."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address, ``[v6]`` or ``localhost``) is on loopback only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_address(address: str) -> tuple[str | None, int]:
    """``host:port`` (``[v6]:port``; an empty host: every interface, as None) as (host, port).

    ValueError with a one-line reason if it is not one.
    """
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"expected host:port, not {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 host goes in brackets: {address!r}")
    return (host or None), int(port_text)
