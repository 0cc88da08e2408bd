"""The signed inventory with real swtpm quotes and real HTTP between processes: a peer
updated yesterday (new PCR values, endorsed in a new inventory version on the store)
verifies today with no change to this host's baked configuration; a version floor
revokes an old state; a rolled-back inventory is refused by the TPM record's floor."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recover import config
from recover.boot import gather
from recover.core.inventory import pcrs_to_json
from recover.core.protocol import Outcome
from recover.errors import RollbackError
from tests.integration.test_peers_tpm import NAMES, SELECTION, Host, boot, outcomes
from tests.unit.test_image_cli import run as hr  # offline: no host configuration

pytestmark = [pytest.mark.tpm, pytest.mark.integration]


class SignedHost(Host):
    """A host whose baked configuration selects the signed inventory: the fleet public
    key and the path of the signed file on its own store."""

    def __init__(self, name: str, root: Path) -> None:
        super().__init__(name, root)
        self.store = root / f"store-{name}"
        self.store.mkdir()

    def write_config(self, host_id: str | None = None) -> Path:
        path = super().write_config(host_id)
        with open(path, "a", encoding="utf-8") as f:
            f.write(
                f"[inventory]\nkey = {self.root}/baked/inventory-pub.pem\n"
                f"file = {self.store}/inventory.json\n"
            )
        return path


class Operator:
    """Signs inventories with the offline fleet key and installs them on every store."""

    def __init__(self, root: Path, hosts: dict[str, SignedHost]) -> None:
        self.root, self.hosts = root, hosts
        (root / "offline").mkdir()
        (root / "baked").mkdir()
        self.key = root / "offline" / "fleet.key"
        r = hr("policy", "keygen", "--private", self.key, "--public",
               root / "baked" / "inventory-pub.pem")  # fmt: skip
        assert r.returncode == 0, r.stderr
        self.endorsements: list[dict[str, Any]] = []
        self.floors: dict[str, int] = {}
        self.version = 0

    def endorse(self, pcrs: Any, note: str) -> None:
        version = len(self.endorsements) + 1
        self.endorsements.append(
            {"class": "web", "version": version, "pcrs": pcrs_to_json(pcrs), "note": note}
        )

    def publish(self) -> Path:
        self.version += 1
        hosts = []
        for h in self.hosts.values():
            entry = {k: v for k, v in h.entry().items() if k != "pcrs"}
            hosts.append({**entry, "class": "web"})
        src = self.root / "offline" / f"source-{self.version}.json"
        src.write_text(
            json.dumps(
                {
                    "version": self.version,
                    "hosts": hosts,
                    "endorsements": self.endorsements,
                    "floors": self.floors,
                }
            )
        )
        out = self.root / "offline" / f"inventory-{self.version}.json"
        r = hr("inventory", "sign", src, "--key", self.key, "--output", out)
        assert r.returncode == 0, r.stderr
        for h in self.hosts.values():
            self.install(h, out)
        return out

    @staticmethod
    def install(h: SignedHost, signed: Path) -> None:
        (h.store / "inventory.json").write_bytes(signed.read_bytes())


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[dict[str, SignedHost], Operator]]:
    hosts: dict[str, SignedHost] = {}
    try:
        for n in NAMES:
            hosts[n] = SignedHost(n, tmp_path)
        op = Operator(tmp_path, hosts)
        # Every host booted the same kernel: one endorsed state for the class.
        states = {json.dumps(pcrs_to_json(h.pcrs)) for h in hosts.values()}
        assert len(states) == 1
        op.endorse(hosts["self"].pcrs, "kernel N")
        yield hosts, op
    finally:
        for h in hosts.values():
            h.stop_agent()
            h.tpm.kill()


def baked(h: SignedHost) -> str:
    """What this host's initramfs would carry: its configuration and the fleet key."""
    files = (h.write_config(), h.root / "baked" / "inventory-pub.pem")
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


def run_self(hosts: dict[str, SignedHost], **changes: Any) -> gather.Decision:
    from recover.tpm import Tpm

    me = hosts["self"]
    cfg = config.load(me.write_config(), env={})
    # quorum 3 of 3: no answer settles the verdict early, every peer is asked
    cfg = cfg.replace(**{"peers_listen": "127.0.0.1:0", "verdict_quorum": "3", **changes})
    with Tpm.open(me.tpm.tcti) as t:
        return gather.run(cfg, t, serve=True, pstore_dir=str(me.root / "pstore"))


def pcrs_now(h: SignedHost) -> Any:
    from recover.tpm import Tpm

    with Tpm.open(h.tpm.tcti) as t:
        return t.pcr_read(SELECTION)


def test_peer_updated_yesterday_verifies_with_no_change_here(
    fleet: tuple[dict[str, SignedHost], Operator],
) -> None:
    hosts, op = fleet
    boot(hosts, cut=set(NAMES))  # a power outage takes the whole rack down
    hosts["p1"].extend_pcr9()  # p1 took a kernel update yesterday: its PCR 9 moved
    op.publish()  # v1: only kernel N endorsed
    for n in ("p1", "p2", "p3"):
        hosts[n].start_agent(role="boot")
    before = baked(hosts["self"])

    d = run_self(hosts)
    assert d.inventory_version == 1
    got = outcomes(d)
    assert got == {"p1": Outcome.UNEXPECTED_PCRS, "p2": Outcome.VERIFIED, "p3": Outcome.VERIFIED}
    p1 = next(r for r in d.peers.results if r.peer_id == "p1")  # type: ignore[union-attr]
    assert "none of the 1 accepted state(s) of class 'web' (v1)" in p1.reason

    # The operator endorses p1's new state (kernel N+1) in inventory v2 on the stores.
    op.endorse(pcrs_now(hosts["p1"]), "kernel N+1")
    op.publish()
    d = run_self(hosts)
    assert baked(hosts["self"]) == before  # nothing of this host's initramfs changed
    assert d.inventory_version == 2
    assert outcomes(d) == {n: Outcome.VERIFIED for n in ("p1", "p2", "p3")}, d.peers
    assert str(d.verdict.kind) == "correlated-failure", d.verdict.reasons

    # Kernel N is revoked (floor 2): the hosts still on it no longer verify.
    op.floors["web"] = 2
    op.publish()
    d = run_self(hosts)
    assert baked(hosts["self"]) == before
    assert outcomes(d) == {
        "p1": Outcome.VERIFIED,
        "p2": Outcome.UNEXPECTED_PCRS,
        "p3": Outcome.UNEXPECTED_PCRS,
    }, d.peers


def test_rolled_back_inventory_refused_by_the_tpm_record(
    fleet: tuple[dict[str, SignedHost], Operator],
) -> None:
    """The payload keeps the newest accepted version in its TPM decision record (written
    only before the lock): an older signed inventory put back on the store is refused
    at the next boot, although it is correctly signed and above inventory.min_version."""
    from recover.boot.record import Outcome as Record
    from recover.boot.record import record_nv
    from recover.core.policy import WriteLock
    from recover.tpm import Tpm

    hosts, op = fleet
    me = hosts["self"]
    cfg = config.load(me.write_config(), env={})
    lock = WriteLock.of(cfg.tpm_pcrs, cfg.tpm_lock_pcr)
    with Tpm.open(me.tpm.tcti) as t:
        t.ensure_blob(cfg.tpm_record_nv, lock)
    boot(hosts, cut=set(NAMES))
    v1 = op.publish()
    op.endorse(pcrs_now(hosts["self"]), "same state, re-endorsed")
    v2 = op.publish()
    for n in ("p1", "p2", "p3"):
        hosts[n].start_agent(role="boot")

    d = run_self(hosts)
    assert d.inventory_version == 2 and d.peers is not None and d.peers.verified == 3
    with Tpm.open(me.tpm.tcti) as t:  # what the payload writes before its lock
        rec = Record(evidence=d.evidence.to_json(), inventory_version=d.inventory_version)
        assert record_nv(t, cfg, rec)

    Operator.install(me, v1)  # someone with the disks puts v1 back on the store
    with pytest.raises(RollbackError, match="version 1 is older than the accepted floor 2") as e:
        run_self(hosts)
    # the refusal keeps the evidence: the payload's record carries the floor on
    assert getattr(e.value, "evidence", None) is not None
    Operator.install(me, v2)
    assert run_self(hosts).inventory_version == 2
    assert cfg.inventory_min_version == 0  # the measured floor alone would accept v1
