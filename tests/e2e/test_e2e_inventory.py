"""End-to-end: a host whose baked configuration selects the signed inventory (only the
fleet public key is in its initramfs) reads the inventory from its store partition at
boot. A peer updated yesterday (new PCR 9) is unverifiable with inventory v1; with v2 —
its new state endorsed, put on the store — the same initramfs recovers from the same
correlated power loss. Real QEMU + OVMF measured boot, real swtpms, peers as host-side
agents (testing/qemu/lab.py), judged by the decision record on the console.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recover.core import endorse

pytestmark = pytest.mark.e2e

# A fixed test-only fleet key: the baked configuration (and so the initramfs build) stays
# the same from run to run.
FLEET_SCALAR = 0x1D5E_A5ED_F1EE_7C0D_E000_0000_0000_0000_0000_0000_0000_0000_0000_0000_0000_0001


def fleet_keys() -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives.asymmetric import ec

    from testing.peersim import private_pem, pub_pem

    key = ec.derive_private_key(FLEET_SCALAR, ec.SECP256R1())
    return private_pem(key), pub_pem(key).encode()


def make_lab() -> Any:
    from testing.qemu import harness
    from testing.qemu.lab import Lab

    class InventoryLab(Lab):
        """The lab with ``inventory.key`` in the host's baked configuration instead of a
        baked peers.json; signed inventories go onto copies of the store disk."""

        def write_host_config(self, peer_entries: list[dict[str, object]]) -> None:
            super().write_host_config(peer_entries)
            conf = self.confdir / "host-recover.conf"
            conf.write_text(
                conf.read_text() + "[inventory]\nkey = /etc/host-recover/inventory-pub.pem\n"
            )
            (self.confdir / "peers.json").unlink()  # nothing of the fleet is baked
            (self.confdir / "inventory-pub.pem").write_bytes(fleet_keys()[1])
            self.peer_entries = peer_entries

        def store_with(self, version: int, endorsements: list[dict[str, Any]]) -> Path:
            """A copy of the provisioned store disk carrying signed inventory ``version``."""
            assert self.vm is not None and self.host_entry is not None
            hosts = [
                {**{k: v for k, v in e.items() if k != "pcrs"}, "class": cls}
                for e, cls in [(e, "peer") for e in self.peer_entries] + [(self.host_entry, "host")]
            ]
            src = {"version": version, "hosts": hosts, "endorsements": endorsements}
            doc = endorse.parse_document(src, "e2e", fields=endorse.SOURCE_FIELDS)
            signed = self.dir / f"inventory-v{version}.json"
            signed.write_bytes(endorse.sign(doc, fleet_keys()[0]))
            out = self.dir / f"store-inventory-v{version}.img"
            base = self.dir / "store.img"
            out.write_bytes(base.read_bytes())
            harness.sh("debugfs", "-w", "-R", f"write {signed} inventory.json", out)
            return out

    return Lab, InventoryLab, harness


@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:

    Lab, InventoryLab, harness = make_lab()
    if why := harness.unavailable():
        pytest.skip(why)
    lab = InventoryLab(harness.BUILD / "e2e-lab-inventory", n_peers=3, init="shell")
    try:
        lab.setup()
        yield lab
    finally:
        lab.close()


def _record(res: Any) -> dict[str, Any]:
    assert res.record is not None, "no decision record on the console:\n" + res.console.text()
    return dict(res.record)


def _peer(rec: dict[str, Any], peer_id: str) -> dict[str, Any]:
    return next(r for r in rec["peers"]["results"] if r["peer"] == peer_id)


def _update_kernel(peer: Any) -> dict[str, Any]:
    """The peer booted a new kernel: its PCR 9 moved. Returns its PCR values."""
    from recover.core.inventory import pcrs_to_json
    from recover.tpm import Tpm

    peer.stop_agent()
    with Tpm.open(peer.tpm.tcti) as t:
        t.pcr_extend(9, b"vmlinuz-6.1.0-29")
        values = t.pcr_read("sha256:0,2,4,7,9")
    peer.start_agent()  # still "back from the outage": answers as its boot payload
    return pcrs_to_json(values)


def test_peer_updated_yesterday_verifies_with_no_change_to_this_initramfs(lab: Any) -> None:
    states = {json.dumps(e["pcrs"], sort_keys=True) for e in lab.peer_entries}
    assert len(states) == 1  # the peers booted the same thing: one state for their class
    old = {"class": "peer", "version": 1, "pcrs": lab.peer_entries[0]["pcrs"], "note": "N"}
    host = {"class": "host", "version": 1, "pcrs": lab.host_entry["pcrs"]}
    v1 = lab.store_with(1, [old, host])
    initrd = hashlib.sha256(lab.vm.initrd.read_bytes()).hexdigest()

    # The host's first boot with the signed inventory is clean (no peers asked); then it
    # loses power on its own: saved as "cut".
    lab.prepare("provisioned", peers_cut=0)
    res = lab.boot("hold", store=v1)
    assert _record(res)["verdict"]["kind"] == "clean", _record(res)
    lab.power_cut(peers=0)
    lab.save_host("cut")

    # A correlated power loss; peer1 came back on the kernel it was updated to yesterday.
    lab.prepare("cut", peers_cut=2)
    new_pcrs = _update_kernel(lab.peers[0])
    res = lab.boot("hold", store=v1)
    rec = _record(res)
    assert rec["inventory_version"] == 1, rec
    p1 = _peer(rec, "peer1")
    assert p1["outcome"] == "unexpected-pcrs", p1
    assert "accepted state(s) of class 'peer' (v1)" in p1["reason"], p1
    assert rec["verdict"]["kind"] != "correlated-failure" and res.root == "normal", rec

    # The operator endorses the new state in inventory v2 on the store; nothing else.
    lab.prepare("cut", peers_cut=2)
    assert _update_kernel(lab.peers[0]) == new_pcrs
    new = {"class": "peer", "version": 2, "pcrs": new_pcrs, "note": "N+1"}
    res = lab.boot("hold", store=lab.store_with(2, [old, new, host]))
    rec = _record(res)
    assert hashlib.sha256(lab.vm.initrd.read_bytes()).hexdigest() == initrd
    assert rec["inventory_version"] == 2, rec
    assert _peer(rec, "peer1")["outcome"] == "verified", rec["peers"]
    assert rec["verdict"]["kind"] == "correlated-failure", rec["verdict"]
    assert res.root == "recovery" and rec["action"] == "recover" and res.proof_ok is True
    lab.vm.power_cut()
