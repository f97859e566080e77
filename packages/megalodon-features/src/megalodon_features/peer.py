"""Who is on the other end of a proxy connection: the owner uid of a local TCP peer, and source checks.

A task's taskcluster-proxy signs with the task's credentials, so only the task may use it.  generic-worker
gives its proxy ``--allowed-user``; megalodon answers the same question from the kernel's socket tables:
a connection from a local process to ``127.0.0.1:<proxy port>`` appears in ``/proc/net/tcp`` (or ``tcp6``)
as a socket whose *local* address is the connection's peer address and whose *remote* address is the
proxy's, and that line carries the uid of the process that created the socket.  Matching both ends makes
the lookup exact (a port alone could be reused by another namespace's socket).

A container's connection comes from its own address on the task's network, so the docker executor's check
is an address check (:func:`source_allowed`): the source must be in the task network and must not be the
gateway itself (the host, and every other process on it, reach that network from the gateway address).
"""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))


def _hex_address(ip: str, port: int) -> str:
    """An address as ``/proc/net/tcp*`` prints it: the raw address words in host byte order, then the port."""
    packed = ipaddress.ip_address(ip).packed
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"


def _candidates(ip: str, port: int) -> set[str]:
    """The forms a local address can take in the tables (an IPv4 peer of an IPv6 socket is v4-mapped)."""
    out = {_hex_address(ip, port)}
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv4Address):
        out.add(_hex_address(f"::ffff:{ip}", port))
    elif address.ipv4_mapped is not None:
        out.add(_hex_address(str(address.ipv4_mapped), port))
    return out


def peer_uid(peer: tuple[str, int], local: tuple[str, int], tables: tuple[Path, ...] = TABLES) -> int | None:
    """The uid owning the socket at ``peer`` connected to ``local``, or None when no table has it.

    The exact match (both ends) comes first.  When the host rewrites the source address of a connection to
    one of its own addresses (SNAT/masquerade rules on the path to a bridge address), the connecting
    socket's local address is not the one the proxy sees: then the socket with the same source port
    connected to exactly ``local`` is the peer, if there is one such socket; several with different owners
    answer -1 (nobody's uid), never a guess.  Blocking (reads procfs): call it in a thread.
    """
    peers = _candidates(*peer)
    locals_ = _candidates(*local)
    port_suffix = f":{peer[1]:04X}"
    by_port: set[int] = set()
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) <= 7 or fields[2] not in locals_:
                continue
            if fields[1] in peers:
                return int(fields[7])
            if fields[1].endswith(port_suffix):
                by_port.add(int(fields[7]))
    if not by_port:
        return None
    return by_port.pop() if len(by_port) == 1 else -1


def source_allowed(source: str, networks: tuple[str, ...], listen_host: str) -> bool:
    """Whether a connection from ``source`` may use a proxy restricted to ``networks`` listening on
    ``listen_host`` (the gateway: a connection from it is the host, not the task's container)."""
    try:
        address = ipaddress.ip_address(source)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if str(address) == listen_host:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in networks)
