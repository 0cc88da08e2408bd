"""End-to-end on a stock Debian 12 guest: the package, installed with the README's
``apt-get install ./host-recover_*.deb``, and the README's operator story run verbatim
inside the guest (testing/qemu/debian.py, qemu-env/debian-guest-stage.sh), booted with
Debian's own kernel and dracut under OVMF + swtpm (QEMU TCG).

The stages run in order and each needs the one before (one guest, one TPM):

1. configure   README steps 2-3: configuration, ``dracut -f`` (the module joins through
               the package's dracut.conf.d), the kernel hook, reboot
2. provision   README steps 4-7 in the boot of the new initramfs; then a power cut
3. recover     the next boot recovers: the recovery image's service proves it got its
               credential (HMAC over a fresh challenge)
4. update      a kernel update inside the guest (apt-get install of a newer
               linux-image): dracut's and host-recover's kernel hooks; reboot into it
5. reseal      the README's re-seal block on the new kernel; then a power cut
6. recover     the next boot, on the new kernel, recovers again

Judged only by the serial console and the initramfs files read back from the disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testing.qemu import debian, harness
from testing.qemu import vm as vmmod

pytestmark = pytest.mark.e2e

#: TCG: a Debian boot with systemd takes minutes under contention; dracut and the
#: kernel package's installation inside the guest take longer.
BOOT_TIMEOUT = 1200
BUILD_TIMEOUT = 2400


@dataclasses.dataclass
class Guest:
    dir: Path
    vm: vmmod.Vm
    root: Path
    control: Path
    credential: str
    stages: list[str]
    challenge: str = ""
    kernel_version: str = ""

    def boot(self, action: str, until: str, timeout: float = BOOT_TIMEOUT) -> vmmod.Console:
        """Boot the guest's newest kernel and initramfs; return once ``until`` shows."""
        self.vm.power_cut()
        self.challenge = secrets.token_hex(16)
        harness.control_disk(self.control, action, self.challenge)
        kernel, initrd, self.kernel_version = debian.boot_files(self.root, self.dir / "boot")
        self.vm.kernel, self.vm.initrd = kernel, initrd
        self.vm.start()
        try:
            self.vm.wait_for(until, timeout)
        except BaseException:
            self.vm.power_cut()
            raise
        return self.vm.console

    def record(self) -> dict[str, Any]:
        hit = self.vm.console.find(r"^HR-(NORMAL|RECOVERY)-RECORD ")
        assert hit, "no decision record on the console:\n" + self.vm.console.text()[-4000:]
        return dict(json.loads(hit[1].split(" ", 1)[1]))

    def proof_ok(self) -> bool:
        hit = self.vm.console.find(r"^HR-SERVICE-PROOF ")
        if hit is None:
            return False
        fields = dict(kv.split("=", 1) for kv in hit[1].split()[1:])
        want = hmac.new(bytes.fromhex(self.credential), self.challenge.encode(), hashlib.sha256)
        return fields.get("challenge") == self.challenge and hmac.compare_digest(
            fields.get("mac", ""), want.hexdigest()
        )

    def boot_and_recover(self) -> None:
        """After a power cut: the boot recovers, and the recovery image's service proves
        it got its credential; the recovery root then powers off."""
        con = self.boot("poweroff", r"^HR-GUEST-DONE|Kernel panic|HR-NORMAL-ROOT")
        rec = self.record()
        assert con.find(r"^HR-RECOVERY-ROOT up"), con.text()[-4000:]
        assert rec["action"] == "recover" and rec["credentials"] == ["service-hmac"], rec
        assert self.proof_ok(), con.find(r"HR-SERVICE")
        self.vm.wait_exit(BOOT_TIMEOUT)

    def need(self, stage: str) -> None:
        if stage not in self.stages:
            pytest.fail(f"stage {stage!r} did not pass; reached: {self.stages}")


def _credential() -> str:
    """The service credential baked into the cached disk (kept with it)."""
    path = debian.BUILD / "service-hmac"
    if not path.exists():
        debian.BUILD.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
    return path.read_text().strip()


@pytest.fixture(scope="module")
def guest() -> Iterator[Guest]:
    tools = (*harness.TOOLS_NEEDED, "mmdebstrap", "dpkg-buildpackage", "lintian", "lsinitrd")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing or os.geteuid() != 0:
        pytest.skip(f"needs root and {', '.join(missing) or 'the QEMU toolchain'}")
    work = harness.BUILD / "e2e-debian"
    work.mkdir(parents=True, exist_ok=True)
    credential = _credential()
    recovery = harness.root_images()[1]  # the lab's recovery root: proves its credential
    base = debian.disk(
        {"recovery.squashfs": recovery, "service-hmac": credential.encode()},
        debian.build_deb(),
        debian.update_kernel_deb(),
    )
    root = debian.copy_disk(base, work / "root.img")
    store = harness.store_disk(work / "store.img", {})
    control = harness.control_disk(work / "control.ctl", "hold", "-")
    vm = vmmod.Vm(work / "host", root, root, [root, store, control])  # kernel set per boot
    vm.cmdline = debian.CMDLINE
    vm.manufacture()
    g = Guest(work, vm, root, control, credential, [])
    try:
        yield g
    finally:
        vm.close()


def test_1_configure_builds_the_initramfs_with_the_module(guest: Guest) -> None:
    con = guest.boot("configure", r"^HR-STORY configure|Kernel panic", BUILD_TIMEOUT)
    assert con.find(r"^HR-STORY configure rc=0"), con.text()[-4000:]
    assert con.find(r"host-recover: /boot/initrd.img-\S+ carries the host-recover module")
    guest.vm.wait_exit(BOOT_TIMEOUT)  # the story's `reboot` (QEMU runs with -no-reboot)
    _, initrd, _ = debian.boot_files(guest.root, guest.dir / "boot")
    files = harness.sh("lsinitrd", initrd)
    assert "etc/host-recover/host-recover.conf" in files
    assert "etc/host-recover/host-recover.conf.d/10-e2e.conf" in files
    assert "host-recover.service" in files  # dracut's systemd initrd: the module's unit
    guest.stages.append("configure")


def test_2_provision_in_the_boot_of_the_new_initramfs(guest: Guest) -> None:
    guest.need("configure")
    con = guest.boot("provision", r"^HR-GUEST-DONE|Kernel panic")
    rec = guest.record()
    assert rec["action"] == "normal" and rec["image"] is None, rec
    assert con.find(r"^HR-STORY provision rc=0"), con.text()[-4000:]
    assert con.find(r"provisioned: secret sealed")
    guest.vm.power_cut()  # a power loss right after provisioning
    guest.stages.append("provision")


def test_3_power_cut_then_the_host_recovers_with_its_credential(guest: Guest) -> None:
    guest.need("provision")
    guest.boot_and_recover()
    guest.stages.append("recover")


def test_4_kernel_update_runs_the_hooks_and_warns_to_reseal(guest: Guest) -> None:
    guest.need("recover")
    old = guest.kernel_version
    con = guest.boot("update", r"^HR-UPDATE|Kernel panic", BUILD_TIMEOUT)
    assert con.find(r"^HR-UPDATE rc=0"), con.text()[-4000:]
    assert con.find(r"carries the host-recover module")
    assert con.find(r"WARNING: tpm.policy = pcr")
    guest.vm.wait_exit(BOOT_TIMEOUT)
    _, initrd, new = debian.boot_files(guest.root, guest.dir / "boot")
    assert new != old, (old, new)
    assert "etc/host-recover/host-recover.conf" in harness.sh("lsinitrd", initrd)
    guest.stages.append("update")


def test_5_reseal_on_the_new_kernel(guest: Guest) -> None:
    guest.need("update")
    con = guest.boot("reseal", r"^HR-GUEST-DONE|Kernel panic")
    assert con.find(r"^HR-NORMAL-ROOT up kernel=" + guest.kernel_version)
    assert con.find(r"^HR-STORY reseal rc=0"), con.text()[-4000:]
    guest.vm.power_cut()
    guest.stages.append("reseal")


def test_6_power_cut_after_the_update_still_recovers(guest: Guest) -> None:
    guest.need("reseal")
    guest.boot_and_recover()
    guest.stages.append("recover-after-update")


def test_purge_removes_what_the_package_installed(tmp_path: Path) -> None:
    """In a chroot of the same stock root: install (the agent unit verifies: its
    ExecStart exists), use (byte code, pins, store), purge: nothing of the package is
    left but the operator's own configuration file."""
    if os.geteuid() != 0 or shutil.which("mmdebstrap") is None:
        pytest.skip("needs root and mmdebstrap")
    tree = tmp_path / "root"
    tree.mkdir()
    harness.sh("tar", "-xpf", debian.root_tar(), "--numeric-owner", "-C", tree)
    deb = debian.build_deb()
    shutil.copy2(deb, tree / "root" / deb.name)
    try:
        debian._chroot(
            tree,
            f"apt-get install -y ./{deb.name} > /dev/null; "
            "dpkg -L host-recover > /root/installed; "
            "host-recover --version; "
            "systemd-analyze verify --man=no /usr/lib/systemd/system/host-recover-agent.service; "
            "man -w host-recover 2> /dev/null || test -f /usr/share/man/man8/host-recover.8.gz; "
            "cp /usr/share/doc/host-recover/examples/host-recover.conf.example "
            "/etc/host-recover/host-recover.conf; "
            "echo '[tpm]' > /etc/host-recover/host-recover.conf.d/50-provisioned.conf; "
            "touch /var/lib/host-recover/recovery.hri; "
            "apt-get purge -y host-recover > /dev/null",
        )
        left = [
            p
            for p in (tree / "root/installed").read_text().split()
            if p != "/." and (tree / p.lstrip("/")).exists() and not (tree / p.lstrip("/")).is_dir()
        ]
        assert left == [], left
        for gone in ("usr/lib/host-recover", "var/lib/host-recover", "usr/sbin/host-recover"):
            assert not (tree / gone).exists(), gone
        assert not (tree / "etc/host-recover/host-recover.conf.d").exists()
        # the operator's own file stays (and nothing else in /etc/host-recover)
        assert sorted(p.name for p in (tree / "etc/host-recover").iterdir()) == [
            "host-recover.conf"
        ]
    finally:
        harness.sh("rm", "-rf", "--one-file-system", tree)
