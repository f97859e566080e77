"""The host's address on a docker bridge when the engine reports no IPAM gateway (Docker 20.10's default bridge).

Docker 20.10 (Debian's docker.io) leaves ``IPAM.Config[].Gateway`` of the default ``bridge`` network empty
although ``docker0`` has the address; the taskcluster proxy of ``taskclusterProxyInterface: docker-bridge``
then falls back to the interface's address, read from the kernel.  The kernel's answer is checked against
``ip -j addr`` (iproute2: netlink, a different path from the ioctl under test).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator

import docker
import pytest

from megalodon_core.netif import bridge_address, interface_ipv4
from megalodon_native.proxy_interface import docker_bridge_gateway

pytestmark = pytest.mark.docker


def _ip_addresses(name: str) -> list[str]:
    out = subprocess.run(["ip", "-j", "addr", "show", "dev", name], check=True, capture_output=True, text=True)
    return [a["local"] for link in json.loads(out.stdout) for a in link.get("addr_info", []) if a["family"] == "inet"]


@pytest.fixture
def own_bridge() -> Iterator[tuple[str, str]]:
    """A bridge interface of this test's own with one IPv4 address (root, as every docker test)."""
    name = f"h6t{uuid.uuid4().hex[:8]}"
    address = "10.254.253.1"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{address}/30", "dev", name], check=True)
        yield name, address
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)


def test_interface_address_comes_from_the_kernel(own_bridge: tuple[str, str]) -> None:
    name, address = own_bridge
    assert interface_ipv4(name) == address
    assert _ip_addresses(name) == [address]
    assert interface_ipv4("lo") == "127.0.0.1"


@pytest.mark.parametrize("name", ["", "no-such-if0", "a" * 16, "../etc", "x\0y"])
def test_unknown_or_invalid_interface_has_no_address(name: str) -> None:
    assert interface_ipv4(name) is None


def test_interface_without_ipv4_has_no_address() -> None:
    name = f"h6t{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    try:
        assert interface_ipv4(name) is None
        assert bridge_address([], name) is None
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)


def test_reported_gateway_wins_over_the_interface(own_bridge: tuple[str, str]) -> None:
    name, address = own_bridge
    assert bridge_address(["172.30.0.1"], name) == "172.30.0.1"
    assert bridge_address(["172.30.0.1/16"], name) == "172.30.0.1"
    # No IPv4 gateway reported (empty, IPv6 only, garbage): the interface's address.
    assert bridge_address([], name) == address
    assert bridge_address(["fd00::1", "not-an-ip"], name) == address


async def test_docker_bridge_address_without_ipam_gateway(docker_client: docker.DockerClient) -> None:
    """The proxy's docker-bridge address is docker0's, whether or not the engine reports the gateway."""
    bridge = docker_client.api.inspect_network("bridge")
    name = (bridge.get("Options") or {}).get("com.docker.network.bridge.name", "docker0")
    gateways = [c["Gateway"] for c in (bridge.get("IPAM") or {}).get("Config") or [] if c.get("Gateway")]
    kernel = _ip_addresses(name)
    assert kernel, f"{name} has no IPv4 address"
    address = await docker_bridge_gateway()
    if gateways:
        assert address == gateways[0].split("/")[0]
    else:  # Docker 20.10: the fallback is what gives the proxy an address at all
        assert address == kernel[0]
    assert address in kernel
