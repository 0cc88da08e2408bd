"""The boot payload with a signed inventory on the store partition, end to end on this
machine (no QEMU): a real swtpm, a real ext4 store on a loop device mounted inert by the
payload, the TPM decision record. The inventory the payload accepted is recorded in TPM
NV (written only before the lock); an older signed inventory put back on the store is
refused at the next boot, also after a clean boot that read no inventory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.peersim import new_key, pub_pem

from recover.core import endorse
from tests.integration.test_boot_host import Host, _umount_all, _unseal_check
from tests.unit.test_inventory_signed import FLEET_PRIV, FLEET_PUB

pytestmark = [
    pytest.mark.tpm,
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root"),
    pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="needs squashfs-tools"),
]

PCRS = {"sha256": {"0": "00" * 32}}


def signed_inventory(version: int) -> bytes:
    """Inventory ``version`` listing this host alone (a domain of one: no peer to ask)."""
    src = {
        "version": version,
        "hosts": [
            {
                "id": "host-a",
                "address": "127.0.0.1:9",
                "failure_domain": "rack-1",
                "class": "web",
                "ak_pub": pub_pem(new_key()),
            }
        ],
        "endorsements": [{"class": "web", "version": 1, "pcrs": PCRS}],
    }
    doc = endorse.parse_document(src, "src", fields=endorse.SOURCE_FIELDS)
    return endorse.sign(doc, FLEET_PRIV)


class StoreHost(Host):
    """A provisioned host whose image, credentials and signed inventory are on an ext4
    store partition (a loop device), with the fleet key in its baked configuration."""

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.loops: list[str] = []
        (base / "inventory-pub.pem").write_bytes(FLEET_PUB)

    def store(self, inventory: bytes) -> None:
        """A new store partition with ``inventory`` (what someone with the disks can do)."""
        n = len(self.loops)
        tree = self.base / f"storetree{n}"
        tree.mkdir()
        for name in ("recovery.hri", "credentials.hrc"):
            shutil.copy(self.disk / name, tree / name)
        (tree / "inventory.json").write_bytes(inventory)
        image = self.base / f"store{n}.ext4"
        subprocess.run(["mkfs.ext4", "-q", "-d", str(tree), str(image), "8M"], check=True)
        loop = subprocess.run(
            ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
        ).stdout.strip()
        self.loops.append(loop)
        text = self.conf.read_text()
        if n == 0:
            text = (
                text.replace(str(self.disk / "recovery.hri"), "recovery.hri")
                .replace(str(self.disk / "credentials.hrc"), "credentials.hrc")
                .replace("[store]\n", f"[store]\ndevice = {loop}\n")
                + f"[inventory]\nkey = {self.base / 'inventory-pub.pem'}\n"
                "file = /var/lib/host-recover/inventory.json\n"
            )
        else:
            text = text.replace(f"device = {self.loops[n - 1]}\n", f"device = {loop}\n")
        self.conf.write_text(text)

    def close(self) -> None:
        _umount_all(self.run)
        super().close()
        for loop in self.loops:
            subprocess.run(["losetup", "-d", loop], check=False)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[StoreHost]:
    h = StoreHost(tmp_path)
    try:
        h.provision_and_build()
        yield h
    finally:
        h.close()


def previous_inv(rec: dict) -> int | None:
    (prev,) = [s for s in rec["evidence"]["signals"] if s["name"] == "previous_decision"]
    return (prev["value"] or {}).get("inv")


def test_rollback_of_the_signed_inventory_is_refused_across_boots(host: StoreHost) -> None:
    host.store(signed_inventory(2))
    host.tpm.power_cut_and_restart()
    code, rec = host.boot()
    _umount_all(host.newroot)
    assert code == 10 and rec["inventory_version"] == 2, rec  # read from the store
    assert not any(loop in Path("/proc/self/mounts").read_text() for loop in host.loops)

    host.store(signed_inventory(1))  # correctly signed, above inventory.min_version (0)
    host.tpm.power_cut_and_restart()
    code, rec = host.boot()
    assert code == 5, rec
    assert "inventory version 1 is older than the accepted floor 2" in rec["error"]
    assert rec["lock_pcr_extended"] is True and _unseal_check(host) == 4
    assert previous_inv(rec) == 2

    host.tpm.reboot_orderly()  # a clean boot asks no peers and reads no inventory
    code, rec = host.boot()
    assert code == 0 and rec["inventory_version"] is None, rec
    assert previous_inv(rec) == 2  # the refused boot's record kept the floor

    host.tpm.power_cut_and_restart()
    code, rec = host.boot()
    assert code == 5 and "older than the accepted floor 2" in rec["error"], rec
    assert previous_inv(rec) == 2  # carried through the clean boot

    host.store(signed_inventory(3))
    host.tpm.power_cut_and_restart()
    code, rec = host.boot()
    _umount_all(host.newroot)
    assert code == 10 and rec["inventory_version"] == 3, rec
    assert previous_inv(rec) == 2


def test_a_tampered_inventory_on_the_store_fails_closed(host: StoreHost) -> None:
    doc = json.loads(signed_inventory(2))
    doc["hosts"][0]["failure_domain"] = "rack-9"
    host.store(json.dumps(doc).encode())
    host.tpm.power_cut_and_restart()
    code, rec = host.boot()
    assert code == 5 and "bad signature" in rec["error"], rec
    assert rec["lock_pcr_extended"] is True and _unseal_check(host) == 4
    assert not any(loop in Path("/proc/self/mounts").read_text() for loop in host.loops)
