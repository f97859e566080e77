"""The IPv4 address of a network interface, read from the kernel.

Docker 20.10 (Debian's ``docker.io``) reports no ``IPAM.Config[].Gateway`` for its default ``bridge``
network although ``docker0`` carries the address; anything that needs "the host's address on that bridge"
(the taskcluster proxy of ``taskclusterProxyInterface: docker-bridge``, a docker task network's gateway)
asks the kernel for the interface's address when the engine does not say.  ``SIOCGIFADDR`` answers at once
from the kernel's tables (no subprocess, no file system), so it is safe to call on the event loop.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

__all__ = ["bridge_address", "interface_ipv4"]

_SIOCGIFADDR = 0x8915
_IFNAMSIZ = 16


def interface_ipv4(name: str) -> str | None:
    """The primary IPv4 address of interface ``name``, or None when it has none or does not exist."""
    raw = name.encode()
    if not raw or len(raw) >= _IFNAMSIZ or b"\0" in raw or b"/" in raw:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            answer = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", raw))
        except OSError:  # ENODEV: no such interface; EADDRNOTAVAIL: no IPv4 address on it
            return None
    # struct ifreq: 16 bytes of name, then a sockaddr_in (family, port, address).
    return socket.inet_ntoa(answer[20:24])


def bridge_address(gateways: list[str], bridge: str) -> str | None:
    """The host's IPv4 address on a bridge: the first IPv4 IPAM gateway the engine reported, else the
    kernel's address of the ``bridge`` interface; None when neither is known."""
    for gateway in gateways:
        candidate = gateway.split("/")[0].strip()
        try:
            if isinstance(ipaddress.ip_address(candidate), ipaddress.IPv4Address):
                return candidate
        except ValueError:
            continue
    return interface_ipv4(bridge) if bridge else None
