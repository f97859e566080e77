"""The proxy's peer checks: the owner uid of a loopback connection from the kernel's socket tables, and
the container source-address rule."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from megalodon_features.peer import peer_uid, source_allowed


def test_peer_uid_of_own_connection_is_our_uid() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        with socket.create_connection(listener.getsockname()):
            accepted, peer = listener.accept()
            with accepted:
                assert peer_uid(peer, accepted.getsockname()) == os.getuid()
                # the accepted side is not mistaken for the client: swapped ends match nothing of another uid
                assert peer_uid(("127.0.0.1", 1), accepted.getsockname()) is None


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"), reason="connecting as another uid needs root"
)
def test_peer_uid_of_another_users_connection() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        script = f"import socket,sys; s=socket.create_connection(('127.0.0.1',{port})); sys.stdin.read()"
        # the system interpreter: the test venv may live below a directory other users cannot enter
        child = subprocess.Popen(
            ["/usr/bin/python3", "-I", "-c", script], stdin=subprocess.PIPE, user=65534, group=65534
        )
        try:
            listener.settimeout(30)
            accepted, peer = listener.accept()
            with accepted:
                assert peer_uid(peer, accepted.getsockname()) == 65534
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(30)


def test_source_allowed_only_from_the_task_network_and_never_the_gateway() -> None:
    networks = ("172.30.5.0/24",)
    assert source_allowed("172.30.5.2", networks, "172.30.5.1")
    assert source_allowed("::ffff:172.30.5.2", networks, "172.30.5.1")
    assert not source_allowed("172.30.5.1", networks, "172.30.5.1")  # the host itself
    assert not source_allowed("172.30.6.2", networks, "172.30.5.1")  # another task's network
    assert not source_allowed("127.0.0.1", networks, "172.30.5.1")
    assert not source_allowed("not-an-ip", networks, "172.30.5.1")


def test_peer_uid_when_the_host_rewrote_the_source_address(tmp_path: Path) -> None:
    """A connection to a bridge address whose source the host's NAT rules rewrote (seen on the CI VM): the
    proxy sees 192.0.2.2:51554, the client socket is 172.17.0.1:51554 -> 172.17.0.1:34399."""
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    listen = "   9: 010011AC:865F 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n"
    accepted = "  35: 010011AC:865F 020200C0:C962 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n"
    client = "  36: 010011AC:C962 010011AC:865F 01 00000000:00000000 00:00000000 00000000  1234        0 3 2\n"
    table = tmp_path / "tcp"
    table.write_text(header + listen + accepted + client)
    assert peer_uid(("192.0.2.2", 51554), ("172.17.0.1", 34399), (table,)) == 1234
    # two sockets of different owners on that port: nobody's uid, never a guess
    other = "  37: 0200A8C0:C962 010011AC:865F 01 00000000:00000000 00:00000000 00000000  4321        0 4 2\n"
    table.write_text(header + listen + accepted + client + other)
    assert peer_uid(("192.0.2.2", 51554), ("172.17.0.1", 34399), (table,)) == -1
    assert peer_uid(("192.0.2.2", 1), ("172.17.0.1", 34399), (table,)) is None
