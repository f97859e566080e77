"""generic-worker's ``taskclusterProxyInterface: docker-bridge``: where containers a native task starts
reach the taskcluster proxy.

As generic-worker (v106+) does, each such run gets a Docker network of its own (``gw-task-<taskId[:12]>-<runId>``,
:func:`create_task_network`); the proxy listens on that network's gateway, the task learns the network and
the gateway from ``TASKCLUSTER_DOCKER_NETWORK`` and ``TASKCLUSTER_PROXY_GATEWAY`` (``docker run --network
"$TASKCLUSTER_DOCKER_NETWORK"``), and the multiuser engine admits container connections from that subnet
only (generic-worker's ``--allowed-network``).  A container on docker's shared default bridge, or on
another task's network, connects from another subnet and is refused, so no neighbour can use the proxy.

The native executor owns this (it is a field of its payload) and hands the address to the proxy feature as
``run.data.proxy``; the feature never asks which interface or executor it is.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass

from megalodon_core.errors import InternalError
from megalodon_core.netif import bridge_address
from megalodon_core.owner import marker_alive, owner_marker

log = logging.getLogger(__name__)


async def docker_bridge_gateway() -> str:
    """IPv4 gateway of docker's default ``bridge`` network (generic-worker's ``docker-bridge`` interface).

    Docker 20.10 may report no IPAM gateway for that network although its bridge (``docker0``) has the
    address: then the bridge interface's address, from the kernel.
    """
    fmt = (
        "{{range .IPAM.Config}}{{if .Gateway}}{{.Gateway}} {{end}}{{end}}"
        '|{{index .Options "com.docker.network.bridge.name"}}'
    )
    code, out, err = await _docker("network", "inspect", "bridge", "--format", fmt)
    if code != 0:  # the engine's message, or why docker could not be run
        raise InternalError(f"could not determine docker bridge IP address: {err}")
    listed, _, bridge = out.partition("|")
    gateways = listed.split()
    address = bridge_address(gateways, bridge.strip() or "docker0")
    if address is None:
        raise InternalError(
            f"could not determine docker bridge IP address: no ipv4 gateway found among {gateways} and "
            f"interface {bridge.strip() or 'docker0'} has no IPv4 address"
        )
    return address


@dataclass(frozen=True)
class TaskNetwork:
    """A run's own Docker network: containers the task starts on it reach its proxy at ``gateway``."""

    name: str
    gateway: str
    subnet: str


#: Label of a run's network: the owner marker of the worker process that made it.
OWNER_LABEL = "megalodon.owner"


def task_network_name(task_id: str, run_id: int) -> str:
    """generic-worker's name for the run's network."""
    return f"gw-task-{task_id[:12]}-{run_id}"


async def _docker(*argv: str) -> tuple[int, str, str]:
    """``docker <argv>``: exit code (127 when docker cannot be run), stdout, stripped stderr (or the reason)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "docker",
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
    except OSError as exc:
        return 127, "", str(exc)
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace").strip()


async def create_task_network(task_id: str, run_id: int) -> TaskNetwork:
    """Create the run's network (a leftover of that name, from a crashed run, is replaced) and read its
    IPv4 gateway and subnet; InternalError naming the network when the engine refuses."""
    name = task_network_name(task_id, run_id)
    create = ("network", "create", "--label", f"{OWNER_LABEL}={await asyncio.to_thread(owner_marker)}", name)
    code, _, err = await _docker(*create)
    if code != 0 and "already exists" in err:
        await remove_task_network(name)
        code, _, err = await _docker(*create)
    if code != 0:
        raise InternalError(f"could not create Docker network {name}: {err}")
    fmt = "{{range .IPAM.Config}}{{if and .Gateway .Subnet}}{{.Gateway}} {{.Subnet}}{{println}}{{end}}{{end}}"
    code, out, err = await _docker("network", "inspect", name, "--format", fmt)
    for line in out.splitlines() if code == 0 else []:
        fields = line.split()
        if len(fields) != 2:
            continue
        try:
            if ipaddress.ip_address(fields[0]).version == 4:
                return TaskNetwork(name, fields[0], fields[1])
        except ValueError:
            continue
    await remove_task_network(name)
    raise InternalError(f"no IPv4 gateway found for Docker network {name} in {(out or err).strip()!r}")


async def remove_task_network(name: str) -> None:
    """Remove the run's network; containers the task left attached to it are disconnected first (they are
    the task's, and the run is over)."""
    code, _, err = await _docker("network", "rm", name)
    if code == 0 or "not found" in err:
        return
    # Containers still attached block the removal: disconnect them (they are the task's), then retry.
    _, out, _ = await _docker("network", "inspect", name, "--format", "{{range $id, $c := .Containers}}{{$id}} {{end}}")
    for container in out.split():
        await _docker("network", "disconnect", "--force", name, container)
    code, _, err = await _docker("network", "rm", name)
    if code != 0 and "not found" not in err:
        log.warning("could not remove Docker network %s: %s", name, err)


async def sweep_orphan_networks() -> list[str]:
    """Remove the runs' networks whose owner is no live worker process (a worker killed mid-run); returns
    their names.  Only networks carrying megalodon's owner label and generic-worker's name are candidates."""
    code, out, _ = await _docker(
        "network",
        "ls",
        "--filter",
        f"label={OWNER_LABEL}",
        "--format",
        f'{{{{.Name}}}}\t{{{{.Label "{OWNER_LABEL}"}}}}',
    )
    removed: list[str] = []
    for line in out.splitlines() if code == 0 else []:
        name, _, marker = line.partition("\t")
        if name.startswith("gw-task-") and not await asyncio.to_thread(marker_alive, marker):
            await remove_task_network(name)
            removed.append(name)
    if removed:
        log.info("removed %d leftover task network(s) of no live worker: %s", len(removed), ", ".join(removed))
    return removed
