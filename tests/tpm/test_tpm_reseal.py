"""``host-recover reseal`` against a real swtpm: after an initramfs rebuild, the same
master is sealed to the values predicted from this boot's event log, so the next boot
with the new initramfs unseals and a boot with the old one does not. The "boots" are
orderly TPM restarts that replay a test event log (the EFI stub's initrd event in PCR
9) into the TPM."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest

from testing.swtpm import SwTpm

from recover import config
from recover.cli import main
from recover.core import eventlog as el
from recover.errors import PolicyMismatch
from recover.store import unseal
from recover.store.keyfile import KeyKind, read_key_file
from recover.tpm import Tpm

pytestmark = pytest.mark.tpm

OLD, NEW = b"070701 the initramfs booted now", b"070701 the rebuilt initramfs"
SHA256 = 0x000B


def _event_log(initrd: bytes) -> bytes:
    """A crypto-agile log (sha256) holding the EFI stub's initrd event (EV_EVENT_TAG,
    PCR 9, digest of the initrd's bytes)."""
    spec = b"Spec ID Event03\0" + struct.pack("<IBBBBIHHB", 0, 0, 2, 0, 2, 1, SHA256, 32, 0)
    header = struct.pack("<II", 0, 3) + bytes(20) + struct.pack("<I", len(spec)) + spec
    tag = struct.pack("<II", el.LINUX_EFI_INITRD_EVENT_TAG_ID, 13) + b"Linux initrd\0"
    digest = hashlib.sha256(initrd).digest()
    return (
        header + struct.pack("<IIIH", 9, 6, 1, SHA256) + digest + struct.pack("<I", len(tag)) + tag
    )


def _config(tpm: SwTpm, tmp_path: Path, pcrs: str) -> Path:
    conf = tmp_path / "host-recover.conf"
    conf.write_text(
        f"[tpm]\ntcti = {tpm.tcti}\npcrs = {pcrs}\nlock_pcr = 14\n"
        f"event_log = {tmp_path / 'eventlog.bin'}\n[peers]\nhost_id = h\n"
    )
    return conf


def _boot(tpm: SwTpm, conf: Path, initrd: bytes) -> None:
    """An orderly restart (fresh PCRs), the EFI stub measuring ``initrd`` into PCR 9,
    and this boot's event log written where tpm.event_log points."""
    old = tpm.tcti
    tpm.reboot_orderly()
    conf.write_text(conf.read_text().replace(old, tpm.tcti))
    (conf.parent / "eventlog.bin").write_bytes(_event_log(initrd))
    with Tpm.open(tpm.tcti) as t:
        t.pcr_extend(9, initrd)


def test_reseal_before_the_reboot_unseals_in_the_new_boot(
    swtpm: SwTpm, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    conf = _config(swtpm, tmp_path, "sha256:7,9")
    run = lambda *argv: main.main(["--config", str(conf), *argv])  # noqa: E731
    _boot(swtpm, conf, OLD)
    master = tmp_path / "master.key"
    assert (
        run("provision", "--no-owner-auth", "--allow-unbound", "--export-master", str(master)) == 0
    )
    (tmp_path / "initrd.img").write_bytes(NEW)

    # predict: the values to sign (policy = signed) or to seal to
    capsys.readouterr()
    assert run("predict", "--initramfs", str(tmp_path / "initrd.img")) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert set(predicted) == {"sha256"} and set(predicted["sha256"]) == {"7", "9"}

    # A master that is not this host's is refused before anything changes.
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(bytes(32))
    assert (
        run("reseal", "--initramfs", str(tmp_path / "initrd.img"), "--master-from", str(wrong)) == 2
    )
    assert unseal.unseal_master(config.load(conf)) == read_key_file(master, KeyKind.MASTER_SECRET)

    assert (
        run("reseal", "--initramfs", str(tmp_path / "initrd.img"), "--master-from", str(master))
        == 0
    )
    with pytest.raises(PolicyMismatch):  # sealed for the next boot, not this one
        unseal.unseal_master(config.load(conf))

    _boot(swtpm, conf, NEW)  # the reboot into the rebuilt initramfs
    assert unseal.unseal_master(config.load(conf)) == read_key_file(master, KeyKind.MASTER_SECRET)
    capsys.readouterr()
    assert run("attest") == 0
    assert json.loads(capsys.readouterr().out)["pcrs"]["sha256"]["9"] == predicted["sha256"]["9"]

    _boot(swtpm, conf, OLD)  # the old initramfs no longer unseals
    with pytest.raises(PolicyMismatch):
        unseal.unseal_master(config.load(conf))


def test_a_log_that_does_not_replay_to_the_tpm_predicts_nothing(
    swtpm: SwTpm, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    conf = _config(swtpm, tmp_path, "sha256:9")
    _boot(swtpm, conf, OLD)
    with Tpm.open(swtpm.tcti) as t:
        t.pcr_extend(9, b"something the log does not say")
    (tmp_path / "initrd.img").write_bytes(NEW)
    capsys.readouterr()
    rc = main.main(["--config", str(conf), "predict", "--initramfs", str(tmp_path / "initrd.img")])
    assert rc == 2 and "does not replay to the TPM's PCR sha256:9" in capsys.readouterr().err


# --- GRUB: a kernel update at the same path, and the initramfs with it -------------------


def _grub_events(kernel: bytes, initrd: bytes) -> list[tuple[int, bytes, bytes]]:
    """(PCR, event data, measured bytes) of GRUB loading /vmlinuz and /initrd.img:
    commands into PCR 8 (digest of the text), files into PCR 9 (digest of the bytes)."""
    out = []
    for cmd, path, data in (
        ("linux /vmlinuz root=/dev/vda", b"/vmlinuz", kernel),
        ("initrd /initrd.img", b"/initrd.img", initrd),
    ):
        out.append((8, f"grub_cmd: {cmd}\0".encode(), cmd.encode()))
        out.append((9, path + b"\0", data))
    return out


def _grub_boot(tpm: SwTpm, conf: Path, kernel: bytes, initrd: bytes) -> None:
    old = tpm.tcti
    tpm.reboot_orderly()
    conf.write_text(conf.read_text().replace(old, tpm.tcti))
    spec = b"Spec ID Event03\0" + struct.pack("<IBBBBIHHB", 0, 0, 2, 0, 2, 1, SHA256, 32, 0)
    log = struct.pack("<II", 0, 3) + bytes(20) + struct.pack("<I", len(spec)) + spec
    with Tpm.open(tpm.tcti) as t:
        for pcr, data, measured in _grub_events(kernel, initrd):
            digest = hashlib.sha256(measured).digest()
            log += struct.pack("<IIIH", pcr, 0xD, 1, SHA256) + digest
            log += struct.pack("<I", len(data)) + data
            t.pcr_extend(pcr, measured)
    (conf.parent / "eventlog.bin").write_bytes(log)


def test_reseal_for_a_new_kernel_and_initramfs_under_grub(
    swtpm: SwTpm, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    conf = _config(swtpm, tmp_path, "sha256:7,8,9")
    run = lambda *argv: main.main(["--config", str(conf), *argv])  # noqa: E731
    old_k, new_k = b"MZ the kernel booted now", b"MZ the new kernel"
    _grub_boot(swtpm, conf, old_k, OLD)
    master = tmp_path / "master.key"
    assert (
        run("provision", "--no-owner-auth", "--allow-unbound", "--export-master", str(master)) == 0
    )
    new = tmp_path / "new"
    new.mkdir()
    (new / "vmlinuz").write_bytes(new_k)
    (new / "initrd.img").write_bytes(NEW)
    (new / "vmlinuz-6.1.0-58-amd64").write_bytes(new_k)
    files = ["--kernel", str(new / "vmlinuz"), "--initramfs", str(new / "initrd.img")]

    capsys.readouterr()  # a new file name is a new grub.cfg: refused, nothing changed
    renamed = ["--kernel", str(new / "vmlinuz-6.1.0-58-amd64"), *files[2:]]
    assert run("reseal", *renamed, "--master-from", str(master)) == 2
    assert "the new one is named vmlinuz-6.1.0-58-amd64" in capsys.readouterr().err
    assert unseal.unseal_master(config.load(conf)) == read_key_file(master, KeyKind.MASTER_SECRET)

    assert run("reseal", *files, "--master-from", str(master), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kernel"] == str(new / "vmlinuz")

    _grub_boot(swtpm, conf, old_k, NEW)  # the new initramfs with the old kernel: refused
    with pytest.raises(PolicyMismatch):
        unseal.unseal_master(config.load(conf))
    _grub_boot(swtpm, conf, new_k, NEW)  # the reboot into the new kernel and initramfs
    assert unseal.unseal_master(config.load(conf)) == read_key_file(master, KeyKind.MASTER_SECRET)
    capsys.readouterr()
    assert run("attest") == 0
    pcr9 = json.loads(capsys.readouterr().out)["pcrs"]["sha256"]["9"]
    assert pcr9 == report["pcrs"]["sha256"]["9"]
