"""generic-worker's ``taskclusterProxyInterface: docker-bridge``: where containers a native task starts
reach the taskcluster proxy (the host's address on docker's default ``bridge`` network).

The native executor owns this (it is a field of its payload) and hands the address to the proxy feature as
``run.data.proxy``; the feature never asks which interface or executor it is.
"""

from __future__ import annotations

import asyncio

from megalodon_core.errors import InternalError
from megalodon_core.netif import bridge_address


async def docker_bridge_gateway() -> str:
    """IPv4 gateway of docker's default ``bridge`` network (generic-worker's ``docker-bridge`` interface).

    Docker 20.10 may report no IPAM gateway for that network although its bridge (``docker0``) has the
    address: then the bridge interface's address, from the kernel.
    """
    fmt = (
        "{{range .IPAM.Config}}{{if .Gateway}}{{.Gateway}} {{end}}{{end}}"
        '|{{index .Options "com.docker.network.bridge.name"}}'
    )
    try:
        proc = await asyncio.create_subprocess_exec(
            "docker",
            "network",
            "inspect",
            "bridge",
            "--format",
            fmt,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
    except OSError as exc:
        raise InternalError(f"could not determine docker bridge IP address: {exc}") from exc
    if proc.returncode != 0:
        raise InternalError(f"could not determine docker bridge IP address: {err.decode(errors='replace').strip()}")
    listed, _, bridge = out.decode().partition("|")
    gateways = listed.split()
    address = bridge_address(gateways, bridge.strip() or "docker0")
    if address is None:
        raise InternalError(
            f"could not determine docker bridge IP address: no ipv4 gateway found among {gateways} and "
            f"interface {bridge.strip() or 'docker0'} has no IPv4 address"
        )
    return address


async def docker_bridge_subnets() -> tuple[str, ...]:
    """The IPv4 subnets of docker's default ``bridge`` network (empty when the engine reports none).

    The multiuser engine admits connections from them to a ``docker-bridge`` proxy whose peer socket is not
    in the host's tables (a container's, in its own network namespace), as generic-worker passes
    ``--allowed-network``; a host process of another user is still refused by its uid.
    """
    fmt = "{{range .IPAM.Config}}{{if .Subnet}}{{.Subnet}} {{end}}{{end}}"
    try:
        proc = await asyncio.create_subprocess_exec(
            "docker",
            "network",
            "inspect",
            "bridge",
            "--format",
            fmt,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
    except OSError:
        return ()
    if proc.returncode != 0:
        return ()
    return tuple(s for s in out.decode().split() if "." in s)
