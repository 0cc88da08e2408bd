"""The test-made network namespace (testing/netns.py) of the IPv6 lab: a connection made
in it never holds a loopback port that ``forward`` may later be asked to bind there.

``forward`` binds, inside the namespace, ports picked free *outside* it
(testing/ports.py): a peer's swtpm restarted after a power cut comes back on a new port
pair, forwarded in. CI failed once with EADDRINUSE: an agent's connection in the
namespace had been given that very port as its source port, because both sides drew
from the same default ephemeral range."""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Iterator

import pytest

from testing.netns import EPHEMERAL, Netns

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and ip(8)"
)


def _outside_range() -> tuple[int, int]:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        lo, hi = f.read().split()
    return int(lo), int(hi)


@pytest.fixture
def netns() -> Iterator[Netns]:
    ns = Netns()
    try:
        yield ns
    finally:
        ns.close()


def test_the_namespace_draws_source_ports_outside_the_machines_range(netns: Netns) -> None:
    inside = tuple(
        int(p) for p in netns.run("cat", "/proc/sys/net/ipv4/ip_local_port_range").split()
    )
    assert inside == tuple(int(p) for p in EPHEMERAL.split())
    lo, hi = _outside_range()
    assert inside[1] < lo or inside[0] > hi, (inside, (lo, hi))


def test_connections_in_the_namespace_hold_no_port_the_machine_hands_out(netns: Netns) -> None:
    """Connect in the namespace through a forward, many times, holding the connections
    open: none of their source ports is one the machine could hand out as free (so
    none can be a port ``forward`` is asked to bind later)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepted: list[socket.socket] = []

    def accept() -> None:
        for _ in range(20):
            conn, _ = server.accept()
            accepted.append(conn)

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    netns.forward(port)
    held = []
    lo, hi = _outside_range()
    try:
        for _ in range(20):
            s = netns.tcp_socket(socket.AF_INET)
            s.settimeout(10)
            s.connect(("127.0.0.1", port))
            held.append(s)
            source = s.getsockname()[1]
            assert not lo <= source <= hi, f"source port {source} is in {lo}-{hi}"
        t.join(timeout=30)
        assert len(accepted) == 20  # each went through the forward
    finally:
        for s in held + accepted:
            s.close()
        server.close()
