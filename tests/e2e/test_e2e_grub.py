"""End-to-end through GRUB as Debian boots: OVMF starts Debian's GRUB
(grub-efi-amd64-bin, grub-mkstandalone) from a FAT disk, GRUB loads the kernel and the
initramfs with ``linuxefi`` (so Linux gets the event log) and measures its commands and
``kernel_cmdline:`` into PCR 8, the files it reads into PCR 9.

The command line is therefore bound only if PCR 8 is selected: provisioning with the
default set is refused ("add 8"); with PCR 8 it provisions, and a boot whose command
line was changed at GRUB (``rd.host_recover=0``, ``rd.host_recover.mode=never``,
``rd.break=pre-mount``) leaves nothing that can unseal — not the normal OS, not the
dracut shell before the payload. The extra arguments come from GRUB's environment block,
as an edit at GRUB's menu would: grub.cfg, kernel and initramfs (PCR 9) stay the same.

An initramfs rebuild under GRUB (``dracut -f``: /initrd.img on the ESP changes, PCR 9
with it): ``host-recover reseal`` in the normal OS before the reboot predicts PCR 9 from
this boot's log (GRUB's file events), so a power loss right after the reboot into the
rebuilt initramfs still recovers.

Six TCG boots (the provisioning boot and five more, ~20-35 s each to the normal root
under GRUB) plus the one-time build (GRUB image, FAT disk, lab).
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from testing.qemu import harness
from testing.qemu.lab import Lab

pytestmark = pytest.mark.e2e

PCRS = "sha256:0,2,4,7,8,9"
MASTER = secrets.token_bytes(32)
TIMEOUT = 900  # TCG, GRUB, 2 shared cores: generous


@pytest.fixture(scope="session")
def grub_lab() -> Iterator[Lab]:
    if why := harness.unavailable():
        pytest.skip(why)
    # The initramfs bakes in tpm.pcrs with PCR 8; the normal root's own configuration has
    # the default set, so its first `provision` is the one an operator would run.
    lab = Lab(
        harness.BUILD / "e2e-lab-grub",
        n_peers=2,  # a correlated failure needs 2 abnormal peers (quorum 50%)
        grub=True,
        tpm_pcrs=PCRS,
        control_extra={"hrargs": f"--set tpm.pcrs={PCRS}", "refuse": "yes"},
        master=MASTER,  # the re-seal needs the master the host sealed
    )
    try:
        lab.setup()
        yield lab
    finally:
        lab.close()


@pytest.fixture
def lab(grub_lab: Lab) -> Iterator[Lab]:
    yield grub_lab
    assert grub_lab.vm is not None
    grub_lab.vm.power_cut()
    grub_lab.vm.interactive = False


def _marker(console: Any, name: str) -> str:
    hit = console.find(rf"^{name} ")
    assert hit is not None, f"no {name} line on the console:\n" + console.text()[-3000:]
    return str(hit[1].split(" ", 1)[1])


def _status(console: Any) -> dict[str, Any]:
    return dict(json.loads(_marker(console, "HR-STATUS")))


def test_grub_default_set_refused_then_pcr_8_binds_the_command_line(grub_lab: Lab) -> None:
    res = grub_lab.provision_result
    assert res is not None
    refused = _marker(res.console, "HR-PROVISION-DEFAULT")
    assert refused.startswith("rc=2 "), refused
    assert "command line is measured into PCR 8 (grub)" in refused and "add 8" in refused
    assert res.console.find(r"^HR-PROVISIONED rc=0")
    assert grub_lab.host_entry is not None
    assert set(grub_lab.host_entry["pcrs"]["sha256"]) == {"0", "2", "4", "7", "8", "9"}  # type: ignore[index]
    status = _status(res.console)
    binding = status["binding"]
    assert binding["boot_path"] == "grub" and binding["bound"] is True, binding
    assert binding["selected"] == {"kernel": [9], "initrd": [9], "cmdline": [8], "loader": [4]}
    assert binding["problems"] == [] and set(binding["verified"]) == {0, 2, 4, 7, 8, 9}
    assert status["sealed"]["pcrs_match"] is True  # this very boot's PCRs are the sealed ones
    assert _marker(res.console, "HR-CMDLINE").startswith("BOOT_IMAGE=/vmlinuz ")


@pytest.mark.parametrize("extra", ["rd.host_recover=0", "rd.host_recover.mode=never"])
def test_changed_command_line_leaves_nothing_that_unseals(lab: Lab, extra: str) -> None:
    lab.prepare("provisioned")
    res = lab.boot("check", extra_cmdline=extra, timeout=TIMEOUT)
    assert res.root == "normal"
    assert _marker(res.console, "HR-CMDLINE").endswith(" " + extra)
    assert _marker(res.console, "HR-UNSEAL-CHECK") == "rc=4"
    sealed = _status(res.console)["sealed"]
    # Not only the lock: PCR 8 itself no longer gives the sealed policy.
    assert sealed["satisfied"] is False and sealed["pcrs_match"] is False, sealed


def test_rd_break_shell_before_the_payload_cannot_unseal(lab: Lab) -> None:
    assert lab.vm is not None
    lab.prepare("provisioned")
    lab.vm.interactive = True
    # dracut's shell at pre-mount, before the payload (pre-mount hook) and its lock.
    lab.boot("check", extra_cmdline="rd.break=pre-mount", until=r"Dropping to debug shell",
             timeout=TIMEOUT)  # fmt: skip
    command = "host-recover unseal --check; echo HR-SHELL-UNSEAL rc=$?\n"
    hit = None
    for _ in range(3):  # typed ahead: the tty keeps it until the shell reads
        lab.vm.send(command)
        try:
            hit = lab.vm.wait_for(r"^HR-SHELL-UNSEAL rc=\d+", timeout=120)
            break
        except TimeoutError:
            continue
    assert hit is not None, lab.vm.console.text()[-3000:]
    assert hit[1] == "HR-SHELL-UNSEAL rc=4", lab.vm.console.text()[-3000:]
    # The payload has not run: the lock PCR is at its reset value, PCR 8 alone refuses.
    errors = lab.vm.console.all(r"host-recover: error: unsealing")
    assert errors and all("lock PCR" not in line for _, line in errors), errors
    assert not lab.vm.console.find(r"^HR-(NORMAL|RECOVERY)-ROOT")
    lab.vm.send("echo o > /proc/sysrq-trigger\n")  # power off from the shell
    lab.vm.wait_exit(TIMEOUT)
    assert re.search(r"rd\.break=pre-mount", lab.vm.console.text())


def test_reseal_before_rebooting_into_a_rebuilt_initramfs_recovers(lab: Lab) -> None:
    """The operator's re-seal after ``dracut -f`` on a GRUB host, then the worst timing:
    the power goes right after the reboot into the rebuilt initramfs."""
    assert lab.vm is not None and lab.vm.esp is not None and lab.art is not None
    lab.prepare("provisioned")
    # "Rebuilt": the same archive with 4 zero bytes appended (the kernel skips zero
    # padding): it boots the same and GRUB measures different bytes into PCR 9. Its name
    # is GRUB's (/initrd.img), as `dracut -f` rewrites the file GRUB loads.
    work = lab.dir / "rebuilt"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    rebuilt = work / "initrd.img"
    rebuilt.write_bytes(lab.art.initramfs.read_bytes() + bytes(4))
    # The lab's /boot: the store carries the rebuilt initramfs and the master for this boot.
    store = work / "store.img"
    assert lab.vm.disks[1] is not None
    shutil.copyfile(lab.vm.disks[1], store)
    (work / "master.in").write_bytes(MASTER)
    for name in ("initrd.img", "master.in"):
        harness.sh("debugfs", "-w", "-R", f"write {work / name} {name}", store)
    res = lab.boot("reseal", store=store, until=r"^HR-GUEST-DONE", timeout=TIMEOUT)
    assert _marker(res.console, "HR-RESEAL") == "rc=0", res.console.text()[-3000:]
    report = json.loads(_marker(res.console, "HR-RESEAL-REPORT"))
    assert report["initramfs"] == "/mnt/store/initrd.img" and report["kernel"] is None
    # The peers check this host's PCRs against their inventory: they get the predicted
    # values too (a baked inventory; a signed one would endorse them: docs/inventory.md).
    assert lab.host_entry is not None
    assert report["pcrs"]["sha256"]["9"] != lab.host_entry["pcrs"]["sha256"]["9"]  # type: ignore[index]
    assert {k: v for k, v in report["pcrs"]["sha256"].items() if k != "9"} == {
        k: v
        for k, v in lab.host_entry["pcrs"]["sha256"].items()  # type: ignore[attr-defined]
        if k != "9"
    }
    host_entry = {**lab.host_entry, "pcrs": report["pcrs"]}
    before = {p: p.inventory.read_text() for p in lab.peers}
    for p, text in before.items():
        inv = json.loads(text)
        inv["peers"] = [e for e in inv["peers"] if e["id"] != "host"] + [host_entry]
        p.inventory.write_text(json.dumps(inv, indent=1) + "\n")

    lab.power_cut(peers=2)  # the host and its peers (back with the new inventory) ...
    old_esp = lab.vm.esp
    efi = harness.grub_efi(lab.vm.cmdline)  # the same GRUB image (cached by content)
    lab.vm.esp = harness.esp_disk(work / "esp.img", efi, lab.art.kernel.vmlinuz, rebuilt)
    try:  # ... the host comes back on the rebuilt initramfs
        res = lab.boot("hold", timeout=TIMEOUT)
    finally:
        lab.vm.esp = old_esp
        for p, text in before.items():  # read again at the peers' next restart
            p.inventory.write_text(text)
    assert res.root == "recovery" and res.proof_ok, res.console.text()[-3000:]
    assert res.record is not None
    assert res.record["verdict"]["kind"] == "correlated-failure", res.record["verdict"]  # type: ignore[index]
