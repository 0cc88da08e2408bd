"""End-to-end: the peer query over IPv6 with dracut's static form
``ip=[ADDR]::[GATEWAY]:PREFIX::IFACE:none`` (network-legacy), in a network namespace
this test makes (testing.netns): the guest's NIC is a tap there, and the peers' agents
listen on their own IPv6 addresses in it (QEMU's user network forwards IPv4 only; the
peers' swtpms stay on the machine's loopback, relayed into the namespace). Nothing in
the namespace reaches any other network.

A clean boot asks no one and leaves no IPv6 address on the normal root's NIC; a
correlated power loss asks both peers over IPv6 and recovers. Three TCG boots (the
provisioning boot included) and the lab's own initramfs (its inventory names IPv6
peers). docs/boot.md#network.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_e2e import _record

from testing.netns import Netns
from testing.qemu import harness
from testing.qemu.lab import HOST_IP_V6, NETNS_PREFIX, BootResult, Lab

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def v6_lab() -> Iterator[Lab]:
    if why := harness.unavailable():
        pytest.skip(why)
    netns = Netns()
    # No router sends advertisements on this network: dracut's static IPv6 setup
    # waits rd.net.timeout.ipv6dad (50 s by default; ~3 minutes of TCG) for a default
    # route learned from one. The operator's setting for such a network (docs/boot.md).
    lab = Lab(harness.BUILD / "e2e-lab-ipv6", n_peers=2, ip=HOST_IP_V6, netns=netns,
              cmdline_extra="rd.net.timeout.ipv6dad=3")  # fmt: skip
    try:
        lab.setup()
        yield lab
    finally:
        lab.close()
        netns.close()


@pytest.fixture(scope="module")
def v6_clean_boot(v6_lab: Lab) -> BootResult:
    """The first boot after provisioning (peers up, the guest held), then the host alone
    loses power: saved as host state "cut"."""
    v6_lab.prepare("provisioned")
    res = v6_lab.boot("hold")
    v6_lab.power_cut(peers=0)
    v6_lab.save_host("cut")
    return res


def test_peers_listen_on_ipv6_in_the_namespace(v6_lab: Lab) -> None:
    assert v6_lab.host_entry is not None
    assert [p.guest_ip for p in v6_lab.peers] == [f"{NETNS_PREFIX}101", f"{NETNS_PREFIX}102"]
    assert v6_lab.vm is not None and f" ip={HOST_IP_V6}" in v6_lab.vm.cmdline


def test_clean_boot_asks_no_one_and_leaves_no_ipv6_address(v6_clean_boot: BootResult) -> None:
    res = v6_clean_boot
    rec = _record(res)
    assert res.root == "normal" and rec["verdict"]["kind"] == "clean", rec["verdict"]
    assert res.console.find(r"^HR-PHASE network-down eth0"), res.console.text()[-3000:]
    net = res.console.find(r"^HR-NORMAL-NET")
    assert net is not None and "eth0=down" in net[1] and " v6=0 " in net[1], net


def test_correlated_power_loss_asks_peers_over_ipv6_and_recovers(
    v6_lab: Lab, v6_clean_boot: BootResult
) -> None:
    v6_lab.prepare("cut", peers_cut=2)
    try:
        res = v6_lab.boot("hold")
    finally:
        assert v6_lab.vm is not None
        v6_lab.vm.power_cut()
    rec = _record(res)
    assert rec["verdict"]["kind"] == "correlated-failure", rec["verdict"]
    assert rec["verdict"]["counts"]["same_event"] == 2, rec["verdict"]
    assert res.root == "recovery" and res.proof_ok is True, res.console.text()[-3000:]
