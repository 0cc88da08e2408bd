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
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testing.etcd import Etcd
from testing.waiting import until

from recover.core import witness as core
from recover.peers.witness import EtcdClient
from tests.integration import test_peers_tpm
from tests.integration.test_peers_tpm import NAMES, Host, boot, run_self, write_inventory

pytestmark = [pytest.mark.tpm, pytest.mark.integration]

fleet = test_peers_tpm.fleet  # the hosts, each on its own swtpm (a fixture)
PREFIX = "/hr-test"
INTERVAL = 0.5


def witness_section(endpoints: str, state_dir: Path) -> str:
    return (
        f"[witness]\nendpoints = {endpoints}\nprefix = {PREFIX}\ninterval = {INTERVAL}\n"
        f"ttl_intervals = 2\ndeadline = 3\n[boot]\nstate_dir = {state_dir}\n"
    )


def state_dir(h: Host) -> Path:
    d = h.root / f"state-{h.name}"
    d.mkdir(exist_ok=True)
    return d


def start_heartbeating(h: Host, endpoints: str) -> None:
    cfg = h.write_config()
    orig = h.write_config
    text = cfg.read_text() + witness_section(endpoints, state_dir(h))

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
        h.agent = None
    boot(fleet, cut=set(fleet))
    # The leases expire on etcd's clock: wait for the event, not for a duration.
    gone = {core.alive_key(PREFIX, "rack-1", n) for n in fleet}
    until(lambda: not gone & set(domain(etcd)), "the alive keys expired", timeout=60)


@pytest.fixture(params=[1, 3], ids=["etcd-1", "etcd-3"])
def etcd(request: Any) -> Iterator[Etcd]:
    with Etcd(request.param) as e:
        yield e


def heartbeat_all(fleet: dict[str, Host], etcd: Etcd) -> None:
    write_inventory(fleet)
    for h in fleet.values():
        start_heartbeating(h, etcd.endpoints_setting)
    for n in NAMES:
        try:
            until(lambda n=n: seq(etcd, n) >= 2, f"{n} heartbeated twice", timeout=60)
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n{fleet[n].log_tail()}\n{etcd.log_tail()}") from None


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
    # Every peer stays dark: the rounds would go on for verdict.wait (240 s); 2 s will do.
    d = run_self(
        fleet, witness_endpoints=etcd.endpoints_setting, witness_prefix=PREFIX, verdict_wait=2.0
    )
    assert d.witness is not None and d.witness["error"], d.witness
    assert str(d.verdict.kind) == "undetermined", d.verdict.reasons
    assert "witnessed" not in d.verdict.counts
    without = run_self(fleet, witness_endpoints="", verdict_wait=2.0)
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


def fleet_status(h: Host, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recover", "--config", str(h.write_config()), "fleet", "status",
         *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_fleet_status_shows_last_seen_and_published_decisions(
    fleet: dict[str, Host], etcd: Etcd
) -> None:
    """The decision record the payload left (decision.json in the state directory)
    leaves the host with the next agent's heartbeats; ``fleet status`` shows it."""
    (state_dir(fleet["p1"]) / "decision.json").write_text(
        json.dumps(
            {
                "version": 1,
                "boot_id": "boot-p1",
                "time": 1.7e9,
                "action": "recover",
                "exit_code": 10,
                "verdict": {
                    "kind": "correlated-failure",
                    "reasons": ["local evidence: abnormal", "3 of 3 peers went down"],
                },
            }
        )
    )
    heartbeat_all(fleet, etcd)
    p2 = fleet["p2"]
    assert p2.agent is not None
    p2.agent.send_signal(signal.SIGKILL)  # p2 loses power; the others run on
    p2.agent.wait(timeout=10)
    p2.agent = None
    until(
        lambda: core.alive_key(PREFIX, "rack-1", "p2") not in domain(etcd),
        "p2's lease expired",
        timeout=60,
    )
    out = fleet_status(fleet["self"], "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["host"]: r for r in json.loads(out.stdout)["hosts"]}
    assert set(rows) == set(NAMES)
    assert all(r["verified"] for r in rows.values()), rows
    assert [n for n, r in rows.items() if not r["alive"]] == ["p2"]
    d = rows["p1"]["decision"]
    assert d["kind"] == "correlated-failure" and d["action"] == "recover"
    assert d["reasons"][1] == "3 of 3 peers went down"
    assert rows["self"]["decision"] is None
    text = fleet_status(fleet["self"], "--domain", "rack-1")
    assert text.returncode == 0, text.stderr
    assert "p2" in text.stdout and "stopped" in text.stdout
    assert "decision correlated-failure → recover" in text.stdout
    etcd.stop()
    down = fleet_status(fleet["self"])
    assert down.returncode == 6, down.stderr
    assert "witness unreachable" in down.stderr


def test_host_not_in_its_own_inventory_anchors_with_its_own_ak(
    fleet: dict[str, Host], etcd: Etcd
) -> None:
    """A host's baked inventory usually lacks the host itself (its entry's PCRs would
    include the initramfs holding it): its own last heartbeat is then verified with its
    own AK and the PCRs of this boot."""
    heartbeat_all(fleet, etcd)
    power_loss(fleet, etcd)
    peers_only = {n: h for n, h in fleet.items() if n != "self"}
    entries = [h.entry() for h in peers_only.values()]
    (fleet["self"].root / "peers.json").write_text(json.dumps({"version": 1, "peers": entries}))
    d = run_self(fleet, witness_endpoints=etcd.endpoints_setting, witness_prefix=PREFIX)
    assert d.witness is not None and d.witness["anchor_problem"] is None, d.witness
    assert str(d.verdict.kind) == "correlated-failure", d.verdict.reasons
    # Another boot chain (PCR 9 changed since the heartbeat): the anchor is not believed.
    fleet["self"].extend_pcr9()
    d = run_self(  # no anchor: the dark peers would be asked for verdict.wait (240 s)
        fleet, witness_endpoints=etcd.endpoints_setting, witness_prefix=PREFIX, verdict_wait=2.0
    )
    assert d.witness is not None and "unexpected-pcrs" in d.witness["anchor_problem"], d.witness
    assert {p["class"] for p in d.witness["peers"].values()} == {"no-anchor"}
    assert str(d.verdict.kind) == "undetermined", d.verdict.reasons


def test_a_member_down_the_client_uses_the_next_endpoint() -> None:
    """A 3-member cluster with its first listed member stopped: writes and the range read
    go to the next endpoint; with every member down the client says so, bounded."""
    from recover.peers.witness import WitnessUnavailable, read_prefix

    with Etcd(3) as e:
        client = EtcdClient(e.endpoints_setting)
        asyncio.run(client.put(f"{PREFIX}/rack-1/a", b"1"))
        e.members[0].stop()
        asyncio.run(client.put(f"{PREFIX}/rack-1/b", b"2"))
        kvs, rev = read_prefix(e.endpoints_setting, f"{PREFIX}/rack-1/", 10)
        assert {k: v[0] for k, v in kvs.items()} == {
            f"{PREFIX}/rack-1/a": b"1",
            f"{PREFIX}/rack-1/b": b"2",
        }
        assert rev >= 3
        e.stop()
        with pytest.raises(WitnessUnavailable) as err:
            read_prefix(e.endpoints_setting, f"{PREFIX}/rack-1/", 10)
        assert str(err.value).count("127.0.0.1:") == 3  # every endpoint tried once


def test_the_fixture_survives_a_port_taken_before_etcd_binds_it() -> None:
    """CI saw a 3-member cluster fail to start: a port picked for one member was taken
    (by another member's port) before etcd bound it. The fixture picks distinct ports
    and, when etcd still finds one in use, starts again on fresh ones."""
    import socket

    etcd = Etcd(3)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", etcd.members[1].peer_port))  # taken meanwhile
        squatter.listen()
        taken = etcd.members[1].peer_port
        with etcd:
            assert taken not in {m.peer_port for m in etcd.members}
            assert all(m.healthy() for m in etcd.members)
            ports = [p for m in etcd.members for p in (m.client_port, m.peer_port, m.metrics_port)]
            assert len(set(ports)) == len(ports)
