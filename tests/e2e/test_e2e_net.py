"""End-to-end: the peer query over dracut's own network (its network module, ``ip=``).

The labs' guests (tests/e2e/conftest.py, shared with the other e2e tests) boot with
``ip=dhcp`` (testing.qemu.lab.HOST_IP): QEMU's user network (restrict=on) serves DHCP
(10.0.2.15), the module bakes ``rd.neednet=1`` in because the configuration names peers,
and the payload waits for a route to its peers only when it asks them. One boot uses a
static ``ip=`` form instead: the peers answer it over the static address (refusing, as
the changed command line moved the host's PCR 9 away from what they know). A systemd
initrd recovers over DHCP too. Judged by the decision record, the hook's phase lines and
what the normal root finds on its NIC (``HR-NORMAL-NET``). docs/boot.md#network.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_e2e import _record

from testing.qemu.lab import HOST_IP_STATIC, BootResult, Lab

pytestmark = pytest.mark.e2e


@pytest.fixture
def lab(shell_lab: Lab) -> Iterator[Lab]:
    yield shell_lab
    assert shell_lab.vm is not None
    shell_lab.vm.power_cut()  # a held guest does not outlive its test


def _normal_net(res: BootResult) -> str:
    hit = res.console.find(r"^HR-NORMAL-NET")
    assert hit is not None, res.console.text()[-3000:]
    return str(hit[1])


def test_clean_boot_asks_no_one_and_leaves_no_address(shell_clean_boot: BootResult) -> None:
    res = shell_clean_boot
    rec = _record(res)
    assert res.root == "normal" and rec["verdict"]["kind"] == "clean"
    assert "decide.network-wait" not in rec["timeline_ms"], rec["timeline_ms"]
    # dracut brought eth0 up from ip=dhcp; the normal boot continues without it
    assert res.console.find(r"^HR-PHASE network-down eth0"), res.console.text()[-3000:]
    assert _normal_net(res).endswith(" routes=0"), _normal_net(res)
    assert "eth0=down" in _normal_net(res)


def test_dhcp_correlated_power_loss_asks_peers_and_recovers(
    lab: Lab, shell_clean_boot: BootResult
) -> None:
    lab.prepare("cut", peers_cut=2)
    res = lab.boot("hold")
    rec = _record(res)
    assert rec["verdict"]["kind"] == "correlated-failure", rec["verdict"]
    assert rec["verdict"]["counts"]["same_event"] >= 2, rec["verdict"]
    assert "decide.network-wait" in rec["timeline_ms"], rec["timeline_ms"]
    assert res.root == "recovery" and rec["exit_code"] == 10
    assert res.proof_ok is True
    # the recovery root keeps the network (its services restore the host over it)
    assert res.console.find(r"^HR-PHASE network-down") is None


def test_static_ip_reaches_the_peers(lab: Lab, shell_clean_boot: BootResult) -> None:
    lab.prepare("cut", peers_cut=2)
    res = lab.boot("hold", ip=HOST_IP_STATIC)
    rec = _record(res)
    assert "decide.network-wait" in rec["timeline_ms"], rec["timeline_ms"]
    # The peers got the request over the static address and answered it: with a refusal,
    # since the changed command line moved this host's PCR 9 away from what their
    # inventories know (a static lab of its own would be sealed to it: not worth a
    # second provisioning boot here).
    answered = [r for r in rec["peers"]["results"] if r["outcome"] == "refused"]
    assert len(answered) >= 2, rec["peers"]
    assert all("HTTP 403" in r["reason"] and "sha256:9" in r["reason"] for r in answered)
    assert rec["verdict"]["kind"] == "undetermined" and res.root == "normal"
    assert rec["credentials"] == [] and rec["image"] is None
    assert res.console.find(r"^HR-PHASE network-down eth0")
    assert _normal_net(res).endswith(" routes=0"), _normal_net(res)


def test_systemd_initrd_dhcp_correlated_power_loss_recovers(
    systemd_lab: Lab, systemd_clean_boot: BootResult
) -> None:
    """network-legacy under dracut-initqueue.service while host-recover.service runs: the
    payload waits for the route itself, only when it asks peers."""
    rec = _record(systemd_clean_boot)
    assert systemd_clean_boot.root == "normal" and rec["verdict"]["kind"] == "clean"
    assert "decide.network-wait" not in rec["timeline_ms"], rec["timeline_ms"]
    # DHCP may finish after the payload here: the pre-pivot hook flushes it all the same
    assert systemd_clean_boot.console.find(r"^HR-PHASE network-down ")
    net = _normal_net(systemd_clean_boot)
    assert net.endswith(" routes=0") and "=up" not in net, net
    assert systemd_lab.vm is not None
    try:
        systemd_lab.prepare("cut", peers_cut=2)
        res = systemd_lab.boot("hold")
        rec = _record(res)
        assert "decide.network-wait" in rec["timeline_ms"], rec["timeline_ms"]
        assert rec["verdict"]["kind"] == "correlated-failure", rec["verdict"]
        assert res.root == "recovery" and rec["exit_code"] == 10
        assert res.proof_ok is True
    finally:
        systemd_lab.vm.power_cut()
