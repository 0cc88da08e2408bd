"""The witness on a real etcd (1 member and a 3-member cluster) with real swtpms and
real ``host-recover agent`` processes heartbeating into it (docs/witness.md).

The hosts' agents heartbeat; then every host loses power (its agent is SIGKILLed by
PID, its TPM power-cut); its peers stay off. This host's payload-side decision
(gather.run) then finds no peer answering, and decides from the witness alone:
``correlated-failure``. With the witness unreachable it decides as without one.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testing.etcd import Etcd
from testing.waiting import until

from recover.core import witness as core
from recover.peers.witness import EtcdClient
from tests.integration.test_peers_tpm import NAMES, Host, boot, run_self, write_inventory

pytestmark = [pytest.mark.tpm, pytest.mark.integration]

PREFIX = "/hr-test"
INTERVAL = 0.5


def witness_section(endpoints: str) -> str:
    return (
        f"[witness]\nendpoints = {endpoints}\nprefix = {PREFIX}\ninterval = {INTERVAL}\n"
        "ttl_intervals = 2\ndeadline = 3\n"
    )


def start_heartbeating(h: Host, endpoints: str) -> None:
    cfg = h.write_config()
    orig = h.write_config
    text = cfg.read_text() + witness_section(endpoints)

    def write_config(host_id: str | None = None) -> Path:
        path = orig(host_id)
        path.write_text(text)
        return path

    h.write_config = write_config  # type: ignore[method-assign]
    h.start_agent()


def domain(etcd: Etcd) -> dict[str, tuple[bytes, int]]:
    client = EtcdClient(etcd.endpoints_setting)
    kvs, _ = asyncio.run(client.range_prefix(f"{PREFIX}/rack-1/"))
    return kvs


def seq(etcd: Etcd, host: str) -> int:
    kv = domain(etcd).get(f"{PREFIX}/rack-1/{host}")
    return int(json.loads(kv[0])["status"]["seq"]) if kv else 0


def power_loss(fleet: dict[str, Host], etcd: Etcd) -> None:
    """Every host loses power: agents die mid-interval (SIGKILL), TPMs are cut."""
    for h in fleet.values():
        assert h.agent is not None
        h.agent.send_signal(signal.SIGKILL)
        h.agent.wait(timeout=10)
        if h.agent.stderr:
            h.agent.stderr.close()
        h.agent = None
    boot(fleet, cut=set(fleet))
    # The leases expire on etcd's clock: wait for the event, not for a duration.
    gone = {core.alive_key(PREFIX, "rack-1", n) for n in fleet}
    until(lambda: not gone & set(domain(etcd)), "the alive keys expired", timeout=60)


@pytest.fixture(params=[1, 3], ids=["etcd-1", "etcd-3"])
def etcd(request: Any) -> Iterator[Etcd]:
    with Etcd(request.param) as e:
        yield e


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[dict[str, Host]]:
    hosts: dict[str, Host] = {}
    try:
        for n in NAMES:
            hosts[n] = Host(n, tmp_path)
        write_inventory(hosts)
        yield hosts
    finally:
        for h in hosts.values():
            h.stop_agent()
            h.tpm.kill()


def heartbeat_all(fleet: dict[str, Host], etcd: Etcd) -> None:
    for h in fleet.values():
        start_heartbeating(h, etcd.endpoints_setting)
    for n in NAMES:
        until(lambda n=n: seq(etcd, n) >= 2, f"{n} heartbeated twice", timeout=60)


def test_peers_still_off_correlated_from_the_witness_alone(
    fleet: dict[str, Host], etcd: Etcd
) -> None:
    heartbeat_all(fleet, etcd)
    power_loss(fleet, etcd)
    d = run_self(fleet, witness_endpoints=etcd.endpoints_setting, witness_prefix=PREFIX)
    assert d.peers is not None and d.peers.verified == 0  # nobody answers: all still off
    assert d.witness is not None and d.witness["error"] is None, d.witness
    assert {p["class"] for p in d.witness["peers"].values()} == {"same"}, d.witness
    assert str(d.verdict.kind) == "correlated-failure", d.verdict.reasons
    assert d.verdict.counts["witnessed"] == 3
    assert any("same event (witnessed)" in r for r in d.verdict.reasons), d.verdict.reasons


def test_witness_unreachable_decides_as_today(fleet: dict[str, Host], etcd: Etcd) -> None:
    heartbeat_all(fleet, etcd)
    power_loss(fleet, etcd)
    etcd.stop()  # the witness is down too
    d = run_self(fleet, witness_endpoints=etcd.endpoints_setting, witness_prefix=PREFIX)
    assert d.witness is not None and d.witness["error"], d.witness
    assert str(d.verdict.kind) == "undetermined", d.verdict.reasons
    assert "witnessed" not in d.verdict.counts
    without = run_self(fleet, witness_endpoints="")
    assert without.verdict.kind == d.verdict.kind
    assert without.verdict.counts == d.verdict.counts


def test_a_peer_still_heartbeating_is_not_witnessed(fleet: dict[str, Host], etcd: Etcd) -> None:
    """p3's host stayed up (its agent answers and heartbeats on): the witness sees it
    alive, not part of the event; p1 and p2 stopped with this host."""
    heartbeat_all(fleet, etcd)
    p3 = fleet.pop("p3")
    try:
        power_loss(fleet, etcd)
    finally:
        fleet["p3"] = p3
    # p3 heartbeats on past this host's last heartbeat + the window (in revisions).
    kvs = domain(etcd)
    anchor = json.loads(kvs[f"{PREFIX}/rack-1/self"][0])["status"]
    d = run_self(
        fleet,
        witness_endpoints=etcd.endpoints_setting,
        witness_prefix=PREFIX,
        verdict_window=1.0,
        peers_listen="127.0.0.1:0",
    )
    assert d.witness is not None
    cls = {k: v["class"] for k, v in d.witness["peers"].items()}
    assert cls["p1"] == cls["p2"] == "same", (cls, anchor)
    # p3 is alive; whether its last heartbeat is already past the window depends on
    # how far the store moved, so wait for the event if it is still "pending".
    if cls["p3"] == "pending":
        until(
            lambda: (
                run_self(
                    fleet,
                    witness_endpoints=etcd.endpoints_setting,
                    witness_prefix=PREFIX,
                    verdict_window=1.0,
                ).witness["peers"]["p3"]["class"]  # type: ignore[index]
                == "alive"
            ),
            "p3's heartbeats moved past the window",
            timeout=60,
        )
    else:
        assert cls["p3"] == "alive", cls
    assert str(d.verdict.kind) == "correlated-failure", d.verdict.reasons
    assert d.verdict.counts["witnessed"] == 2 and d.verdict.counts["unaffected"] == 1
