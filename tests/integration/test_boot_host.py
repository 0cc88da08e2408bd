"""The boot payload end to end on this machine, without QEMU.

A real swtpm, a real provisioned secure store, a real squashfs recovery root encrypted
in container v1, real loop/squashfs/overlay/tmpfs mounts: ``host-recover boot`` must
pivot-prepare after a power cut, leave everything untouched after a clean shutdown, and
leave nothing behind when it fails. Needs root (mounts), like the initramfs.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.swtpm import SwTpm

from recover.cli.main import main

pytestmark = [
    pytest.mark.tpm,
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root"),
    pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="needs squashfs-tools"),
]

SECRET_CRED = b"restore-token: 6f1d0c0ffee\n"


def _mounts_under(path: Path) -> list[str]:
    root = os.path.realpath(path)
    with open("/proc/self/mounts", encoding="utf-8") as f:
        points = [line.split()[1] for line in f]
    return [p for p in points if p == root or p.startswith(root + "/")]


def _umount_all(path: Path) -> None:
    for point in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


class Host:
    """A provisioned host: TPM, config, encrypted image and credential store on 'disk'."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.tpm = SwTpm(base / "tpmstate").start()
        self.disk = base / "disk"  # stands for the store partition (persistent storage)
        self.run = base / "run"  # stands for the initramfs /run (tmpfs)
        self.newroot = base / "sysroot"
        for d in (self.disk, self.run, self.newroot):
            d.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(self.run)], check=True
        )
        self.conf = base / "host-recover.conf"
        self.conf.write_text(
            "[tpm]\npcrs = sha256:0,2,4,7,9\n"
            f"[store]\nimage = {self.disk / 'recovery.hri'}\n"
            f"credentials = {self.disk / 'credentials.hrc'}\n"
            f"[peers]\ninventory = {base / 'no-peers.json'}\nhost_id = host-a\n"
            "[verdict]\non_isolated = recover\non_undetermined = recover\n"
            f"[boot]\nstate_dir = {self.run / 'host-recover'}\n"
            f"credentials_dir = {self.run / 'credentials' / 'host-recover'}\n"
        )
        self.cmdline = base / "cmdline"
        self.cmdline.write_text("root=/dev/vda rd.host_recover.debug\n")

    def cli(self, *argv: str) -> int:
        return main(["--config", str(self.conf), "--tcti", self.tpm.tcti, *argv])

    def provision_and_build(self, sign_with: Path | None = None) -> None:
        key = self.base / "image.key"
        assert (
            self.cli(
                "provision", "--no-owner-auth", "--allow-unbound", "--export-image-key", str(key)
            )
            == 0
        )
        if sign_with is not None:  # tpm.policy = signed: sign the current PCR values
            assert self.cli("policy", "sign", "--allow-unbound", "--key", str(sign_with)) == 0
        tree = self.base / "tree"
        (tree / "etc").mkdir(parents=True)
        (tree / "etc" / "os-release").write_text("ID=recovery\n")
        (tree / "RECOVERY-ROOT").write_text("this is the recovery root\n")
        plain = self.base / "root.squashfs"
        subprocess.run(
            ["mksquashfs", str(tree), str(plain), "-noappend", "-quiet", "-no-progress"],
            check=True,
            capture_output=True,
        )
        assert (
            self.cli(
                "image",
                "create",
                str(plain),
                str(self.disk / "recovery.hri"),
                "--key-file",
                str(key),
                # format 1: a host without device-mapper cannot map v2 (its kernel path is
                # booted in QEMU: tests/e2e/test_e2e_imagev2.py)
                "--format",
                "1",
            )
            == 0
        )
        key.unlink()
        cred = self.base / "cred.in"
        cred.write_bytes(SECRET_CRED)
        assert self.cli("credential", "add", "restore-token", str(cred)) == 0
        cred.unlink()

    def boot(self, extra_cmdline: str = "", *options: str) -> tuple[int, dict]:
        if extra_cmdline:
            self.cmdline.write_text(f"root=/dev/vda {extra_cmdline}\n")
        code = self.cli(
            *options, "boot", "--newroot", str(self.newroot), "--cmdline", str(self.cmdline)
        )
        record = json.loads((self.run / "host-recover" / "decision.json").read_text())
        return code, record

    def close(self) -> None:
        _umount_all(self.newroot)
        _umount_all(self.run)
        self.tpm.close()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    h = Host(tmp_path)
    try:
        h.provision_and_build()
        yield h
    finally:
        h.close()


def _assert_nothing_left(h: Host) -> None:
    assert _mounts_under(h.newroot) == []
    assert _mounts_under(h.run) == [os.path.realpath(h.run)], "only the /run tmpfs itself"
    creds = h.run / "credentials" / "host-recover"
    assert not creds.exists() or list(creds.iterdir()) == []
    # no plaintext image or key material anywhere on the 'disk' or in /run
    for d in (h.disk, h.run):
        for p in d.rglob("*"):
            if p.is_file():
                assert b"this is the recovery root" not in p.read_bytes()
                assert SECRET_CRED not in p.read_bytes()


def test_power_cut_recovers_into_the_image(host: Host) -> None:
    host.tpm.power_cut_and_restart()
    code, rec = host.boot()
    try:
        assert code == 10, rec
        assert rec["action"] == "recover"
        assert rec["verdict"]["kind"] == "undetermined"  # alone: no peers to correlate
        assert rec["lock_pcr_extended"] is True
        assert (host.newroot / "RECOVERY-ROOT").read_text() == "this is the recovery root\n"
        # read-only image under a writable tmpfs overlay
        (host.newroot / "written-by-recovery").write_text("ok")
        cred = host.run / "credentials" / "host-recover" / "restore-token"
        assert cred.read_bytes() == SECRET_CRED
        assert stat.S_IMODE(cred.stat().st_mode) == 0o400
        assert rec["credentials"] == ["restore-token"]
        for phase in (
            "decide",
            "decide.evidence",
            "unseal",
            "lock",
            "image",
            "mount",
            "credentials",
        ):
            assert phase in rec["timeline_ms"], phase
        # the lock PCR is extended: the key cannot be unsealed again in this boot
        assert host.cli("unseal", "--check") == 4
        # nothing on the 'disk' changed except what the operator wrote
        assert sorted(p.name for p in host.disk.iterdir()) == ["credentials.hrc", "recovery.hri"]
    finally:
        _umount_all(host.newroot)


def test_clean_shutdown_boots_normally_and_unseals_nothing(host: Host) -> None:
    host.tpm.reboot_orderly()
    code, rec = host.boot()
    assert code == 0, rec
    assert rec["action"] == "normal" and rec["verdict"]["kind"] == "clean"
    assert "unseal" not in rec["timeline_ms"]
    _assert_nothing_left(host)
    # boot.lock = always: the normal OS boots with the same measured PCRs, yet cannot
    # unseal the recovery key, because the payload extended the lock PCR.
    assert rec["lock_pcr_extended"] is True
    assert host.cli("unseal", "--check") == 4
    # the store is intact for a later recovery: the next boot unseals again
    host.tpm.power_cut_and_restart()
    code, rec = host.boot()
    try:
        assert code == 10, rec
    finally:
        _umount_all(host.newroot)


def test_lock_after_unseal_is_refused(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    """boot.lock = after-unseal left the normal OS able to unseal (issue 9): refused now,
    and the payload still locks with the built-in configuration."""
    host.tpm.reboot_orderly()
    state = f"boot.state_dir={host.run / 'host-recover'}"
    code, rec = host.boot("", "--set", "boot.lock=after-unseal", "--set", state)
    assert code == 2 and rec["lock_pcr_extended"] is True and rec["next"] == "normal"
    assert "after-unseal" in capsys.readouterr().err
    assert host.cli("unseal", "--check") == 4


@pytest.mark.parametrize("cmdline", ["rd.host_recover=0", "rd.host_recover.mode=never"])
def test_mode_never_and_disabled_decide_nothing_but_lock(host: Host, cmdline: str) -> None:
    host.tpm.power_cut_and_restart()
    code, rec = host.boot(cmdline)
    action = "disabled" if "=0" in cmdline else "never"
    assert (code, rec["action"], rec["next"]) == (0, action, "normal")
    assert rec["verdict"] is None and rec["lock_pcr_extended"] is True
    assert host.cli("unseal", "--check") == 4  # the normal OS cannot unseal
    _assert_nothing_left(host)


def test_tampered_image_is_rejected_before_mount(host: Host) -> None:
    img = host.disk / "recovery.hri"
    data = bytearray(img.read_bytes())
    data[len(data) // 2] ^= 0x01
    img.write_bytes(bytes(data))
    host.tpm.power_cut_and_restart()
    code, rec = host.boot()
    assert code == 5, rec
    assert rec["action"] == "error" and "on_error" in rec
    assert rec["error"]
    _assert_nothing_left(host)


def test_truncated_image_is_rejected(host: Host) -> None:
    img = host.disk / "recovery.hri"
    with open(img, "r+b") as f:
        f.truncate(img.stat().st_size - 100)
    host.tpm.power_cut_and_restart()
    code, rec = host.boot()
    assert code == 5, rec
    _assert_nothing_left(host)


def test_changed_pcrs_mean_no_unseal(host: Host) -> None:
    """A different measured boot (PCR 9: initramfs/cmdline) → policy mismatch, exit 4."""
    host.tpm.power_cut_and_restart()
    subprocess.run(
        ["tpm2_pcrextend", "9:sha256=" + "11" * 32],
        env=host.tpm.env,
        check=True,
        capture_output=True,
    )
    code, rec = host.boot("rd.host_recover.on_error=halt")
    assert code == 4, rec
    assert rec["on_error"] == "halt"
    assert (host.run / "host-recover" / "on-error").read_text().strip() == "halt"
    assert "policy" in rec["error"].lower()
    _assert_nothing_left(host)


def test_a_command_line_other_than_the_measured_one_does_not_unseal(host: Host) -> None:
    """The event log measured a command line (GRUB, PCR 8) and /proc/cmdline is another:
    exit 4 at the binding step, before unseal; the plan still locks. The measured one
    recovers."""
    data = Path(__file__).parents[1] / "unit" / "data" / "eventlog"
    conf = host.conf.read_text()
    host.conf.write_text(conf.replace("[tpm]\n", f"[tpm]\nevent_log = {data / 'grub.bin'}\n"))
    host.tpm.power_cut_and_restart()
    code, rec = host.boot("rd.break=pre-mount")
    assert code == 4 and "not the one measured into PCR 8 (grub)" in rec["error"], rec
    assert "binding" in rec["timeline_ms"] and "unseal" not in rec["timeline_ms"]
    assert rec["lock_pcr_extended"] is True and rec["credentials"] == []
    _assert_nothing_left(host)
    host.tpm.power_cut_and_restart()
    host.cmdline.write_text((data / "grub.cmdline").read_text())
    code, rec = host.boot()
    try:
        assert code == 10, rec
    finally:
        _umount_all(host.newroot)


def _previous(rec: dict) -> dict:
    (prev,) = [s for s in rec["evidence"]["signals"] if s["name"] == "previous_decision"]
    return prev


def test_power_loss_during_recovery_recovers_again(host: Host) -> None:
    """A recovery writes "recovering" to TPM NV before it unseals and cannot rewrite it
    after its lock (the record's write policy). Power lost during or after it, before
    any TPM shutdown: the next boot reads that a recovery was in progress and recovers
    again. A recovered system that shut down in order: "the previous boot started a
    recovery, and the host shut down in order since",
    and the next boot is normal."""
    host.tpm.power_cut_and_restart()
    code, rec = host.boot()
    _umount_all(host.newroot)
    assert code == 10, rec
    host.tpm.power_cut_and_restart()  # power lost before (or after) the pivot
    code, rec = host.boot()
    _umount_all(host.newroot)
    assert code == 10, rec
    prev = _previous(rec)
    assert prev["value"]["action"] == "recovering", prev
    assert "recovery was in progress" in prev["reason"], prev
    host.tpm.reboot_orderly()  # the recovered system ran and shut down in order
    code, rec = host.boot()
    assert code == 0 and rec["verdict"]["kind"] == "clean", rec
    prev = _previous(rec)
    assert prev["reading"] == "clean" and "the previous boot started a recovery" in prev["reason"]


def test_the_normal_os_cannot_forge_the_evidence(host: Host, tmp_path: Path) -> None:
    """Finding 5: after the payload (the normal OS: lock PCR extended) root with
    tpm2-tools cannot move the hybrid counter off 0xff nor rewrite the decision record;
    a power cut in the normal OS is still seen by the next boot, which reads the
    payload's own record."""
    from recover.config import load
    from recover.tpm import Tpm

    host.tpm.reboot_orderly()
    code, rec = host.boot()
    assert code == 0 and rec["action"] == "normal", rec
    host.tpm.power_cut_and_restart()  # a crash ...
    cfg = load(host.conf)
    orderly, record = f"{cfg.tpm_orderly_nv:#x}", f"{cfg.tpm_record_nv:#x}"
    forged = tmp_path / "forged"
    forged.write_bytes(b'\x00\x13{"action":"normal"}')
    subprocess.run(  # ... whose next boot's payload locks, then the normal OS runs
        ["tpm2_pcrextend", f"{cfg.tpm_lock_pcr}:sha256=" + "11" * 32],
        env=host.tpm.env,
        check=True,
        capture_output=True,
    )
    with Tpm.open(host.tpm.tcti) as t:
        counter, blob = t.counter_read(cfg.tpm_orderly_nv), t.nv_blob_read(cfg.tpm_record_nv)
    assert counter & 0xFF == 0xFF
    for argv in (
        ["tpm2_nvincrement", orderly],
        ["tpm2_nvincrement", "-C", "o", orderly],
        ["tpm2_nvwrite", record, "-i", str(forged)],
        ["tpm2_nvwrite", "-C", "o", record, "-i", str(forged)],
    ):
        r = subprocess.run(argv, env=host.tpm.env, capture_output=True)
        assert r.returncode != 0, argv
    with Tpm.open(host.tpm.tcti) as t:
        assert t.counter_read(cfg.tpm_orderly_nv) == counter
        assert t.nv_blob_read(cfg.tpm_record_nv) == blob
    host.tpm.power_cut_and_restart()
    code, rec = host.boot()
    _umount_all(host.newroot)
    signals = {s["name"]: s for s in rec["evidence"]["signals"]}
    assert signals["orderly_counter"]["reading"] == "abnormal"
    assert signals["previous_decision"]["value"]["action"] == "normal"


def test_a_rolled_back_credential_store_is_refused(host: Host, tmp_path: Path) -> None:
    """Finding 10: an attacker with the disks puts back an older, authentic credential
    store (older credentials). `credential add` raised the TPM floor to the generation it
    wrote, so the recovery boot refuses the old copy (exit 5), still locked."""
    store = host.disk / "credentials.hrc"
    old = store.read_bytes()
    cred = tmp_path / "rotated"
    cred.write_bytes(b"restore-token: rotated\n")
    assert host.cli("credential", "add", "restore-token", str(cred)) == 0
    store.write_bytes(old)  # the attacker's copy
    host.tpm.power_cut_and_restart()
    code, rec = host.boot()
    assert code == 5 and "rolled back" in rec["error"], rec
    assert rec["lock_pcr_extended"] is True and rec["credentials"] == []
    assert host.cli("unseal", "--check") == 4
    _assert_nothing_left(host)


def test_tpm_unavailable_is_an_outcome(host: Host) -> None:
    host.tpm.kill()
    code = main(
        [
            "--config",
            str(host.conf),
            "--tcti",
            "swtpm:host=127.0.0.1,port=1",
            "--set",
            "tpm.timeout=1",
            "boot",
            "--newroot",
            str(host.newroot),
            "--cmdline",
            str(host.cmdline),
        ]
    )
    assert code == 3
    rec = json.loads((host.run / "host-recover" / "decision.json").read_text())
    assert rec["action"] == "error" and rec["exit_code"] == 3
    assert rec["lock_pcr_extended"] is False and rec["next"] == "halt"  # fail closed
    host.tpm.start()  # for the fixture's cleanup symmetry


def _pcr(host: Host, index: int) -> str:
    out = subprocess.run(
        ["tpm2_pcrread", f"sha256:{index}"],
        env=host.tpm.env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.strip().splitlines()[-1].split(":")[-1].strip().lower()


def test_broken_config_still_locks_and_records(host: Host) -> None:
    """A typo in the baked-in config must not leave the secret unsealable by the normal OS."""
    host.tpm.power_cut_and_restart()
    state = host.run / "host-recover"
    host.conf.write_text(host.conf.read_text().replace("[verdict]\n", "[verdict]\nquorom = 2\n"))
    assert _pcr(host, 15) == "0x" + "0" * 64
    code = host.cli(
        "--set",
        f"boot.state_dir={state}",
        "boot",
        "--newroot",
        str(host.newroot),
        "--cmdline",
        str(host.cmdline),
    )
    assert code == 2
    rec = json.loads((state / "decision.json").read_text())
    assert rec["action"] == "error" and "quorom" in rec["error"]
    assert rec["lock_pcr_extended"] is True
    assert _pcr(host, 15) != "0x" + "0" * 64
    _assert_nothing_left(host)


def test_a_hung_tpm_cannot_hang_the_boot(host: Host) -> None:
    """A TPM that stops answering (swtpm stopped with SIGSTOP): the watchdog ends the
    payload after boot.timeout with exit 3 and an error record, and since nothing could
    lock the TPM, the hook halts instead of booting the normal root."""
    import signal
    import sys

    host.tpm.power_cut_and_restart()
    assert host.tpm.proc is not None
    os.kill(host.tpm.proc.pid, signal.SIGSTOP)
    try:  # the watchdog, not this timeout, must end it: the record below says so
        proc = subprocess.run(
            [sys.executable, "-m", "recover", "--config", str(host.conf), "--tcti", host.tpm.tcti,
             "--set", "boot.timeout=2", "boot", "--newroot", str(host.newroot), "--cmdline", str(host.cmdline)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        os.kill(host.tpm.proc.pid, signal.SIGCONT)
    assert proc.returncode == 3, proc.stderr
    rec = json.loads((host.run / "host-recover" / "decision.json").read_text())
    assert rec["action"] == "error" and "did not finish within 2 s" in rec["error"]
    # Nothing could lock the stopped TPM: the boot must not go on to the normal root.
    assert rec["lock_pcr_extended"] is False and rec["next"] == "halt"
    assert (host.run / "host-recover" / "action").read_text().strip() == "halt"
    _assert_nothing_left(host)


def test_signed_policy_recovery_survives_a_kernel_update(tmp_path: Path) -> None:
    """tpm.policy = signed: after a (simulated) kernel update the old signature no longer
    unseals (exit 4); signing the new PCR values makes the next recovery work, without
    re-sealing."""
    h = Host(tmp_path)
    try:
        priv, pub = tmp_path / "policy.key", tmp_path / "policy-pub.pem"
        policy_file = h.disk / "policy.json"
        h.conf.write_text(
            h.conf.read_text().replace(
                "[tpm]\n",
                f"[tpm]\npolicy = signed\npolicy_pubkey = {pub}\npolicy_file = {policy_file}\n",
            )
        )
        assert h.cli("policy", "keygen", "--private", str(priv), "--public", str(pub)) == 0
        h.provision_and_build(sign_with=priv)
        h.tpm.power_cut_and_restart()
        code, rec = h.boot()
        assert code == 10, rec
        _umount_all(h.newroot)
        _umount_all(h.run)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(h.run)], check=True)
        # "kernel update": PCR 4 now differs at every boot
        h.tpm.power_cut_and_restart()
        extend = ["tpm2_pcrextend", "4:sha256=" + "44" * 32]
        subprocess.run(extend, env=h.tpm.env, check=True, capture_output=True)
        code, rec = h.boot()
        assert code == 4, rec
        assert "policy" in rec["error"].lower()
        _assert_nothing_left(h)
        # the operator signs the new values (here: read from this very boot)
        h.tpm.power_cut_and_restart()
        subprocess.run(extend, env=h.tpm.env, check=True, capture_output=True)
        assert h.cli("policy", "sign", "--allow-unbound", "--key", str(priv)) == 0
        code, rec = h.boot()
        assert code == 10, rec
    finally:
        h.close()


def test_in_process_boot_leaves_no_watchdog_running(host: Host) -> None:
    """The watchdog is cancelled once the record is written (it would end the process)."""
    import threading

    host.tpm.reboot_orderly()
    assert host.boot()[0] == 0
    alive = [t for t in threading.enumerate() if t.name == "host-recover-watchdog" and t.is_alive()]
    assert alive == []


# --- attacks (issue 9): each of these failed open on the first version ------------------


def _unseal_check(host: Host) -> int:
    """What root in the normal OS can do after the payload: try to unseal."""
    return host.cli("unseal", "--check")


@pytest.mark.parametrize(
    "cmdline",
    [
        "rd.host_recover=0",
        "rd.host_recover.mode=never",
        "rd.host_recover.timeout=0.001",  # floored: the payload still finishes and locks
        "rd.host_recover.on_error=shell",  # no shell unless the baked-in config allows it
    ],
)
def test_kernel_options_cannot_leave_the_store_unlocked(host: Host, cmdline: str) -> None:
    host.tpm.reboot_orderly()
    code, rec = host.boot(cmdline)
    assert code == 0 and rec["next"] == "normal", rec
    assert rec["lock_pcr_extended"] is True and rec["on_error"] == "boot-normal"
    assert _unseal_check(host) == 4


def test_boot_ignores_the_environment(host: Host) -> None:
    """dracut's shell init hands kernel parameters to init's environment: HOST_RECOVER_*,
    TSS2_LOG and PYTHON* set there must change nothing in the payload."""
    import sys

    host.tpm.reboot_orderly()
    conf = host.base / "baked.conf"  # the TCTI comes from the baked-in file here
    conf.write_text(host.conf.read_text().replace("[tpm]\n", f"[tpm]\ntcti = {host.tpm.tcti}\n"))
    evil = host.base / "evil.conf"
    evil.write_text("[boot]\nlock = after-unseal\nmode = never\n")
    env = {
        **os.environ,
        "HOST_RECOVER_TCTI": "swtpm:host=127.0.0.1,port=1",
        "HOST_RECOVER_CONFIG": str(evil),
        "TSS2_LOG": "all+trace",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "recover", "--config", str(conf), "boot",
         "--newroot", str(host.newroot), "--cmdline", str(host.cmdline)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "esys" not in proc.stderr.lower()  # libtss2's trace (session keys) stayed off
    rec = json.loads((host.run / "host-recover" / "decision.json").read_text())
    assert rec["lock_pcr_extended"] is True and rec["mode"] == "auto"
    assert _unseal_check(host) == 4


def test_boot_without_config_reads_only_the_default_path(tmp_path: Path) -> None:
    """Without --config the boot verb reads the built-in path, never HOST_RECOVER_CONFIG."""
    from recover.cli.main import build_parser, load_config

    evil = tmp_path / "evil.conf"
    evil.write_text("[tpm]\nlock_pcr = 14\n")
    args = build_parser().parse_args(["boot"])
    old = os.environ.get("HOST_RECOVER_CONFIG")
    os.environ["HOST_RECOVER_CONFIG"] = str(evil)
    try:
        cfg = load_config(args)
    finally:
        if old is None:
            os.environ.pop("HOST_RECOVER_CONFIG")
        else:
            os.environ["HOST_RECOVER_CONFIG"] = old
    assert str(evil) not in cfg.sources and cfg.tpm_lock_pcr == 15


@pytest.mark.parametrize("bank", ["sha1", "sha256", "sha384"])
@pytest.mark.parametrize(
    ("how", "cmdline", "expect"),
    [
        ("clean", "", (0, "normal")),
        ("cut", "rd.host_recover.mode=never", (0, "normal")),
        ("cut", "rd.host_recover=0", (0, "normal")),
        ("cut", "", (10, "recover")),  # alone: on_undetermined = recover → unseal, lock, pivot
        ("cut", "hold", (11, "halt")),
        ("cut", "tamper", (5, "normal")),  # on_error = boot-normal after a verified lock
    ],
)
def test_every_path_locks_every_bank(
    tmp_path: Path, bank: str, how: str, cmdline: str, expect: tuple[int, str]
) -> None:
    """The lock PCR goes to every allocated bank and is read back, whichever bank the
    policy is in: on no path can the normal OS unseal afterwards."""
    h = Host(tmp_path)
    try:
        h.conf.write_text(h.conf.read_text().replace("sha256:0,2,4,7,9", f"{bank}:0,2,4,7,9"))
        if cmdline == "hold":
            h.conf.write_text(
                h.conf.read_text().replace("on_undetermined = recover", "on_undetermined = hold")
            )
            cmdline = ""
        h.provision_and_build()
        if cmdline == "tamper":
            img = h.disk / "recovery.hri"
            data = bytearray(img.read_bytes())
            data[-40] ^= 1
            img.write_bytes(bytes(data))
            cmdline = ""
        if how == "clean":
            h.tpm.reboot_orderly()
        else:
            h.tpm.power_cut_and_restart()
        code, rec = h.boot(cmdline)
        assert (code, rec["next"]) == expect, rec
        assert rec["lock_pcr_extended"] is True
        assert set(rec["lock"]) >= {"sha1", "sha256", "sha384"}, rec["lock"]
        _umount_all(h.newroot)
        assert _unseal_check(h) == 4
    finally:
        h.close()


@pytest.mark.parametrize("target", ["recovery.hri", "credentials.hrc"])
def test_a_fifo_on_the_store_cannot_hang_the_boot_before_the_lock(host: Host, target: str) -> None:
    """A FIFO in place of a store file used to block the payload until the watchdog,
    with the lock PCR at zero. Now: the store is read only after the lock, without
    blocking; the boot ends in an error, locked."""
    path = host.disk / target
    path.unlink()
    os.mkfifo(path)
    host.tpm.power_cut_and_restart()
    code, rec = host.boot()
    assert code == 2 and "not a regular file" in rec["error"], rec
    assert rec["lock_pcr_extended"] is True and rec["next"] == "normal"
    assert _unseal_check(host) == 4
    _assert_nothing_left(host)


def test_the_store_partition_is_mounted_inert_and_not_left_mounted(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store (anyone with the disks can write it) is mounted ro,nodev,nosuid,noexec
    (+noload for ext4: no journal replay writes) and unmounted before the switch, so a
    device node planted on it gives the recovery root nothing."""
    from recover.boot import rootfs

    image = host.base / "store.ext4"
    tree = host.base / "storetree"
    tree.mkdir()
    for name in ("recovery.hri", "credentials.hrc"):
        shutil.copy(host.disk / name, tree / name)
    os.mknod(tree / "sda-planted", 0o666 | stat.S_IFBLK, os.makedev(8, 0))
    subprocess.run(["mkfs.ext4", "-q", "-d", str(tree), str(image), "8M"], check=True)
    loop = subprocess.run(
        ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        host.conf.write_text(
            host.conf.read_text()
            .replace("[store]\n", f"[store]\ndevice = {loop}\n")
            .replace(str(host.disk / "recovery.hri"), "recovery.hri")
            .replace(str(host.disk / "credentials.hrc"), "credentials.hrc")
        )
        seen: list[tuple[str, ...]] = []
        real = rootfs.sysmount.mount

        def spy(source: str, target: str, fstype: str, options: str = "") -> None:
            seen.append((source, target, fstype, options))
            if source == loop:  # the kernel's own view of the store mount, while it is up
                real(source, target, fstype, options)
                mounted = [
                    ln.split() for ln in Path("/proc/self/mountinfo").read_text().splitlines()
                ]
                seen.append(tuple(next(m[5] for m in mounted if m[4] == target).split(",")))
            else:
                real(source, target, fstype, options)

        monkeypatch.setattr(rootfs.sysmount, "mount", spy)
        processes: list[list[str]] = []
        run_cmd, blkid = rootfs.run_cmd, rootfs.fstype
        monkeypatch.setattr(rootfs, "run_cmd", lambda a: (processes.append(a), run_cmd(a))[1])
        monkeypatch.setattr(rootfs, "fstype", lambda d: (processes.append([d]), blkid(d))[1])
        host.tpm.power_cut_and_restart()
        code, rec = host.boot()
        assert code == 10, rec
        at = next(i for i, a in enumerate(seen) if a[0] == loop)
        assert seen[at][2] == "ext4"
        assert {"ro", "nodev", "nosuid", "noexec", "noload"} <= set(seen[at][3].split(","))
        assert {"ro", "nodev", "nosuid", "noexec"} <= set(seen[at + 1])  # the kernel's flags
        # the store: no mount(8), umount(8) or blkid, system calls only (the v1 image
        # this host has is still mounted by mount(8) -o loop)
        assert [a for a in processes if loop in a] == []
        assert not any(loop in line for line in Path("/proc/self/mounts").read_text().splitlines())
        assert (host.newroot / "RECOVERY-ROOT").exists()
    finally:
        _umount_all(host.newroot)
        subprocess.run(["losetup", "-d", loop], check=False)


def test_at_boot_the_host_id_comes_from_the_configuration(host: Host) -> None:
    """The host name can be set from the kernel command line: with peers configured, the
    payload needs peers.host_id from the measured configuration (and still locks)."""
    inventory = host.base / "no-peers.json"
    inventory.write_text('{"version": 1, "peers": []}\n')
    host.conf.write_text(host.conf.read_text().replace("host_id = host-a\n", ""))
    host.tpm.power_cut_and_restart()
    code, rec = host.boot()
    assert code == 2 and "peers.host_id" in rec["error"], rec
    assert rec["lock_pcr_extended"] is True
    assert _unseal_check(host) == 4
