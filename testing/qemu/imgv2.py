"""Recovery images of container v2 in the QEMU lab (tests/e2e/test_e2e_imagev2.py).

``probe_root`` is the lab's recovery root plus a probe: a file of known bytes stored
uncompressed (so its place in the image, and in the ciphertext, is known), dmsetup, and
an init that reads the probe, prints the device-mapper tables as the recovery OS sees
them, then runs the lab's recovery init. ``store_with`` copies the lab's store with its
recovery image changed (one flipped ciphertext byte in the probe, a flipped header byte,
a cut tail).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

from testing.qemu import harness

PROBE = (b"host-recover v2 probe block\n" * 10_000)[: 256 * 1024]  # two squashfs blocks
PROBE_SHA256 = hashlib.sha256(PROBE).hexdigest()

PROBE_INIT = """#!/bin/sh
# /sbin/init of the imgv2 probe root: read the probe, show the mappings, then run the
# lab's recovery init (/sbin/init.lab).
export PATH=/bin:/sbin
if sum=$(busybox sha256sum /hr-probe 2>&1); then
    echo "HR-PROBE ok ${sum%% *}"
else
    echo "HR-PROBE error $sum"
fi
dmsetup table --showkeys 2>&1 | while read -r line; do echo "HR-DM-TABLE $line"; done
grep -q ' /run/host-recover/image ' /proc/mounts && echo "HR-PLAINTEXT-TMPFS"
exec /sbin/init.lab
"""


def probe_root(out: Path | None = None) -> Path:
    """The probe recovery root as squashfs (uncompressed data), rebuilt when its inputs
    change."""
    from recover.bundle import elf_closure

    out = out or harness.BUILD / "imgv2-recovery.squashfs"
    lab_init = harness.QEMU_ENV / "guest-recovery-init.sh"
    dmsetup = Path(shutil.which("dmsetup") or "/usr/sbin/dmsetup").resolve()
    digest = harness._digest(lab_init, PROBE_INIT, PROBE_SHA256, dmsetup, harness.GUEST_TOOLS)
    if harness._fresh(out, digest):
        return out
    tree = out.with_suffix(".d")
    harness._rootfs_tree(tree, lab_init)
    (tree / "sbin/init").rename(tree / "sbin/init.lab")
    (tree / "sbin/init").write_text(PROBE_INIT)
    (tree / "sbin/init").chmod(0o755)
    (tree / "hr-probe").write_bytes(PROBE)
    shutil.copy2(dmsetup, tree / "sbin/dmsetup")
    libs, missing = elf_closure([dmsetup])
    if missing:
        raise RuntimeError(f"missing libraries for dmsetup: {missing}")
    for lib in libs:
        text = str(lib)
        dest = tree / (text[1:] if text.startswith(("/usr/", "/lib64/")) else "usr" + text)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(lib.resolve(), dest)
    # uncompressed data, no fragments: the probe's bytes are in the image as they are,
    # and no other file's tail shares its blocks
    harness.sh("mksquashfs", tree, out, "-noappend", "-all-root", "-noD", "-no-fragments", "-quiet",
               "-no-progress", "-mkfs-time", harness.SOURCE_DATE_EPOCH, "-all-time",
               harness.SOURCE_DATE_EPOCH)  # fmt: skip
    shutil.rmtree(tree)
    harness._stamp(out, digest)
    return out


def probe_offset(plain: Path) -> int:
    """Where the probe's bytes start in the plain image (= in the v2 data area)."""
    at = plain.read_bytes().find(PROBE[:4096])
    if at < 0:
        raise RuntimeError(f"no probe in {plain}")
    return at


def store_with(store: Path, out: Path, change: Callable[[bytearray], None]) -> Path:
    """A copy of ``store`` whose /recovery.hri went through ``change``."""
    shutil.copyfile(store, out)
    img = out.with_suffix(".hri")
    harness.sh("debugfs", "-R", f"dump /recovery.hri {img}", out)
    data = bytearray(img.read_bytes())
    change(data)
    img.write_bytes(bytes(data))
    harness.sh("debugfs", "-w", "-R", "rm /recovery.hri", out)
    harness.sh("debugfs", "-w", "-R", f"write {img} recovery.hri", out)
    img.unlink()
    return out
