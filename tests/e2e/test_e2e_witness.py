"""End-to-end: the witness (docs/witness.md). A host whose peers are all still powered off
when it boots decides ``correlated-failure`` from the witness alone; with the witness
unreachable it decides as without one.

A real etcd on loopback, reached by the guest through QEMU's guestfwd
(10.0.2.120:2379 → 127.0.0.1:PORT; the endpoint is in the host's measured
configuration). The peers are ``host-recover agent`` processes on their own swtpms,
heartbeating into etcd; the host heartbeats from its normal root (its agent, started by
the guest's init with ``witnessargs``). Then the host and every peer lose power (QEMU
and the agents killed by PID); the peers stay off. Judged by the decision record the
booted root prints.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from testing.etcd import Etcd
from testing.waiting import until

pytestmark = pytest.mark.e2e

WITNESS_IP, WITNESS_PORT = "10.0.2.120", 2379
PREFIX = "/host-recover"
INTERVAL = 2


def _witness_conf(endpoints: str) -> str:
    return (
        f"[witness]\nendpoints = {endpoints}\nprefix = {PREFIX}\n"
        f"interval = {INTERVAL}\nttl_intervals = 2\ndeadline = 15\n"
    )


@pytest.fixture(scope="module")
def etcd() -> Iterator[Etcd]:
    with Etcd(1) as e:
        yield e


@pytest.fixture(scope="module")
def lab(etcd: Etcd) -> Iterator[Any]:

    from testing.qemu import harness
    from testing.qemu.lab import Lab

    if why := harness.unavailable():
        pytest.skip(why)
    lab = Lab(
        harness.BUILD / "e2e-lab-witness",
        n_peers=3,
        host_conf_extra=_witness_conf(f"{WITNESS_IP}:{WITNESS_PORT}"),
        guestfwd=[(WITNESS_IP, WITNESS_PORT, etcd.members[0].client_port)],
    )
    for p in lab.peers:  # the peers' agents heartbeat too (host side, straight to etcd)
        state = p.dir / "state"
        state.mkdir(exist_ok=True)
        with p.conf.open("a") as f:
            f.write(_witness_conf(etcd.endpoints_setting) + f"[boot]\nstate_dir = {state}\n")
    try:
        lab.setup()
        yield lab
    finally:
        lab.close()


def _domain(etcd: Etcd) -> dict[str, tuple[bytes, int]]:
    from recover.peers.witness import EtcdClient

    kvs, _ = asyncio.run(EtcdClient(etcd.endpoints_setting).range_prefix(f"{PREFIX}/rack-1/"))
    return kvs


def _seq(etcd: Etcd, host: str) -> int:
    kv = _domain(etcd).get(f"{PREFIX}/rack-1/{host}")
    return int(json.loads(kv[0])["status"]["seq"]) if kv else 0


@pytest.fixture(scope="module")
def outage(lab: Any, etcd: Etcd) -> Any:
    """Everyone heartbeats; then the host and all its peers lose power; the peers stay
    off. Saved as host state "witness-cut"."""
    assert lab.host_entry is not None
    inventory = json.loads(lab.peers[0].inventory.read_text())  # lists the host too
    lab.control_attachment = json.dumps(inventory).encode()
    lab.control_extra["witnessargs"] = (
        f"--set witness.endpoints={WITNESS_IP}:{WITNESS_PORT} --set witness.prefix={PREFIX} "
        f"--set witness.interval={INTERVAL} --set witness.ttl_intervals=2"
    )
    lab.prepare("provisioned", peers_cut=0)
    res = lab.boot("hold")
    assert res.console.find(r"^HR-WITNESS-AGENT pid="), res.console.text()[-3000:]
    for name in ("host", *(p.id for p in lab.peers)):
        until(lambda n=name: _seq(etcd, n) >= 2, f"{name} heartbeated twice", timeout=300)
    lab.vm.power_cut()
    for p in lab.peers:
        p.stop_agent(signal.SIGKILL)  # their power is out, and stays out
    alive = {f"{PREFIX}/rack-1/{n}/alive" for n in ("host", *(p.id for p in lab.peers))}
    until(lambda: not alive & set(_domain(etcd)), "every lease expired", timeout=120)
    lab.save_host("witness-cut")
    lab.control_extra.pop("witnessargs")
    return res


def _record(res: Any) -> dict[str, Any]:
    assert res.record is not None, "no decision record on the console:\n" + res.console.text()
    return dict(res.record)


def test_peers_still_off_recover_from_the_witness_alone(lab: Any, outage: Any) -> None:
    lab.restore_host("witness-cut")
    res = lab.boot("hold")
    lab.vm.power_cut()
    rec = _record(res)
    assert rec["evidence"]["summary"] == "abnormal"
    assert rec["peers"]["counts"].get("verified", 0) == 0, rec["peers"]["counts"]
    w = rec["witness"]
    assert w is not None and w["error"] is None and w["anchor_problem"] is None, w
    assert {p["class"] for p in w["peers"].values()} == {"same"}, w
    assert rec["verdict"]["kind"] == "correlated-failure", rec["verdict"]
    assert rec["verdict"]["counts"]["witnessed"] == 3
    assert res.root == "recovery" and rec["action"] == "recover"
    assert res.proof_ok is True


def test_witness_unreachable_decides_as_today(lab: Any, outage: Any, etcd: Etcd) -> None:
    lab.restore_host("witness-cut")
    etcd.stop()
    res = lab.boot("hold")
    lab.vm.power_cut()
    rec = _record(res)
    assert rec["witness"] is not None and rec["witness"]["error"], rec["witness"]
    assert rec["verdict"]["kind"] == "undetermined", rec["verdict"]
    assert "witnessed" not in rec["verdict"]["counts"]
    assert res.root == "normal" and rec["action"] == "normal"  # on_undetermined = normal
