"""End-to-end: recovery from a container v2 image, decrypted on demand by the kernel.

The lab's guest provisions itself and encrypts the probe recovery root as format 2
(testing/qemu/imgv2.py); a correlated power loss then makes the payload map the image
through dm-verity + dm-crypt and pivot onto it. Judged by console lines: the recovery
root reads the probe (its SHA-256) and prints the device-mapper tables it can see. A
flipped ciphertext byte in the probe must be an I/O error in the recovery OS (never
other bytes); a flipped header byte or a cut tail must stop the recovery before any
mapping (exit 5, the normal root boots).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from testing.qemu import harness, imgv2
from testing.qemu.lab import BootResult, Lab

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def v2lab() -> Iterator[Lab]:
    if why := harness.unavailable():
        pytest.skip(why)
    lab = Lab(
        harness.BUILD / "e2e-lab-imgv2",
        n_peers=3,
        recovery_root=imgv2.probe_root(),
        control_extra={"imageformat": "2"},
    )
    try:
        lab.setup()
        lab.prepare("provisioned", peers_cut=0)
        lab.boot("hold")  # the first boot after provisioning, then the host alone is cut
        lab.power_cut(peers=0)
        lab.save_host("cut")
        yield lab
    finally:
        lab.close()


@pytest.fixture
def lab(v2lab: Lab) -> Iterator[Lab]:
    yield v2lab
    assert v2lab.vm is not None
    v2lab.vm.power_cut()


def _record(res: BootResult) -> dict[str, Any]:
    assert res.record is not None, "no decision record:\n" + res.console.text()[-3000:]
    return dict(res.record)


def _store(lab: Lab) -> Any:
    assert lab.vm is not None and lab.vm.disks[1] is not None
    return lab.vm.disks[1]


def test_recovery_boot_maps_the_v2_image(lab: Lab) -> None:
    lab.prepare("cut", peers_cut=2)
    res = lab.boot("hold")
    rec = _record(res)
    assert res.root == "recovery" and rec["action"] == "recover", rec
    assert res.proof_ok is True
    assert rec["image"]["format"] == 2 and rec["image"]["key_passing"] == "keyring"
    # loop device and both targets set up by ioctl: no losetup or dmsetup process
    assert rec["image"]["tools"] == [], rec["image"]
    # the kernel modules were loaded ahead, by the payload's own modprobe (dmimage.preload)
    assert "modules" in rec["image"]["steps_ms"], rec["image"]
    # and the guest kernel built xts(aes) ahead of dm-crypt, through AF_ALG
    assert rec["image"]["warmed"] == ["xts(aes)"], rec["image"]
    assert res.console.find(rf"^HR-PROBE ok {imgv2.PROBE_SHA256}"), res.console.text()[-3000:]
    # no plaintext copy: nothing mounted on the v1 path's tmpfs
    assert res.console.find(r"^HR-PLAINTEXT-TMPFS") is None
    tables = [line for _, line in res.console.all(r"^HR-DM-TABLE ")]
    crypt = [t for t in tables if " crypt " in t]
    verity = [t for t in tables if " verity " in t]
    assert len(crypt) == 1 and len(verity) == 1, tables
    # the table names a kernel keyring key; even --showkeys prints no key bytes
    assert ":64:logon:host-recover:image-xts" in crypt[0], crypt
    assert not re.search(r"[0-9a-f]{128}", crypt[0]), crypt
    assert "restart_on_corruption" not in verity[0] and "ignore_corruption" not in verity[0]


def test_flipped_ciphertext_byte_is_an_io_error_never_other_data(lab: Lab) -> None:
    plain = imgv2.probe_root()
    at = 4096 + imgv2.probe_offset(plain) + 5000  # data area offset + the probe's place

    def flip(data: bytearray) -> None:
        data[at] ^= 0x40

    store = imgv2.store_with(_store(lab), lab.dir / "store-v2-data.img", flip)
    lab.prepare("cut", peers_cut=2)
    res = lab.boot("hold", store=store)
    rec = _record(res)
    # the header and the blocks read at mount are intact: the recovery boots...
    assert res.root == "recovery" and rec["action"] == "recover", rec
    # ...and reading the tampered block is an I/O error, not other bytes
    assert res.console.find(r"^HR-PROBE error .*Input/output error"), res.console.text()[-3000:]
    assert res.console.find(r"^HR-PROBE ok") is None
    assert res.console.find(r"device-mapper: verity: .*is corrupted"), res.console.text()[-3000:]


@pytest.mark.parametrize("how", ["header", "truncate", "superblock"])
def test_tampered_v2_header_size_or_mount_block_is_refused(lab: Lab, how: str) -> None:
    """header/truncate: refused by the payload's checks before any mapping; superblock:
    the mount's first read fails dm-verity, which the payload reports as integrity."""

    def change(data: bytearray) -> None:
        if how == "header":
            data[104] ^= 0x01  # a byte of the root hash: the MAC fails
        elif how == "superblock":
            data[4096 + 8] ^= 0x01  # the squashfs superblock's ciphertext
        else:
            del data[-100:]

    store = imgv2.store_with(_store(lab), lab.dir / f"store-v2-{how}.img", change)
    lab.prepare("cut", peers_cut=2)
    res = lab.boot("hold", store=store)
    rec = _record(res)
    assert rec["verdict"]["kind"] == "correlated-failure"
    assert rec["action"] == "error" and rec["exit_code"] == 5, rec
    assert rec["credentials"] == []
    assert res.root == "normal"
    assert res.console.find(r"^HR-RECOVERY-ROOT") is None
    assert res.console.find(r"^HR-PROBE") is None
