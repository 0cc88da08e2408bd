"""End-to-end: boot the real initramfs (dracut + our module + the real payload) in QEMU
with OVMF measured boot, a real swtpm per host, and peers as host-side agents.

Judged only by serial-console marker lines and the decision record the booted root
prints. The tests run in file order on one lab (each leaves the state the next needs,
as a real host's history would): ~8 TCG boots of ~30 s plus a one-time build.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

ZERO = "0" * 64


def _missing() -> str | None:
    for tool in ("qemu-system-x86_64", "swtpm", "dracut", "mksquashfs", "debugfs"):
        if shutil.which(tool) is None:
            return tool
    return None


@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:
    missing = _missing()
    if missing or os.geteuid() != 0:
        pytest.skip(f"needs root and {missing or 'the QEMU toolchain'} (make deps)")
    from testing.qemu import harness
    from testing.qemu import lab as labmod

    lab = labmod.Lab(harness.BUILD / "e2e-lab", n_peers=3)
    try:
        lab.setup()
        yield lab
    finally:
        lab.close()


def _record(res: Any) -> dict[str, Any]:
    assert res.record is not None, "no decision record on the console:\n" + res.console.text()
    return dict(res.record)


def test_provisioned_in_guest(lab: Any) -> None:
    assert lab.host_entry["id"] == "host"
    assert set(lab.host_entry["pcrs"]["sha256"]) == {"0", "2", "4", "7", "9"}


def test_clean_reboot_boots_normal_root_and_unseals_nothing(lab: Any) -> None:
    res = lab.boot("hold")
    rec = _record(res)
    assert res.root == "normal"
    assert rec["verdict"]["kind"] == "clean"
    assert rec["action"] == "normal" and rec["exit_code"] == 0
    assert rec["credentials"] == [] and rec["image"] is None
    assert res.console.find(r"^HR-NORMAL-CREDENTIALS-PRESENT") is None
    # boot.lock = always: even the normal OS finds the lock PCR extended (cannot unseal)
    assert rec["lock_pcr_extended"] is True and res.lock_pcr not in (None, ZERO)
    lab.power_cut(peers=0)  # next: this host alone loses power


def test_host_alone_gets_the_configured_isolated_outcome(lab: Any) -> None:
    res = lab.boot("hold")
    rec = _record(res)
    assert rec["evidence"]["summary"] == "abnormal"
    assert rec["verdict"]["kind"] == "isolated-failure"
    assert rec["verdict"]["counts"]["unaffected"] >= 2, rec["verdict"]
    # verdict.on_isolated = normal in the lab's (measured) configuration
    assert res.root == "normal" and rec["action"] == "normal"
    assert rec["credentials"] == [] and rec["image"] is None
    lab.power_cut(peers=2)  # next: a correlated power loss (host + 2 of 3 peers)


def test_correlated_power_loss_recovers_with_credential(lab: Any) -> None:
    res = lab.boot("hold")
    rec = _record(res)
    assert rec["verdict"]["kind"] == "correlated-failure", rec["verdict"]
    assert res.root == "recovery" and rec["action"] == "recover" and rec["exit_code"] == 10
    assert rec["credentials"] == ["service-hmac"]
    assert res.proof_ok is True, res.console.find(r"HR-SERVICE")
    # The lock PCR was extended: the sealed policy (PCR 15 = 0) can no longer be met.
    assert rec["lock_pcr_extended"] is True
    assert res.lock_pcr not in (None, ZERO)
    lab.power_cut(peers=2)


def test_tampered_cmdline_does_not_unseal_and_falls_back(lab: Any) -> None:
    # An attacker forces recovery from the kernel command line: PCR 9 changes.
    res = lab.boot("hold", extra_cmdline="rd.host_recover.mode=force")
    rec = _record(res)
    assert rec["action"] == "error" and rec["exit_code"] == 4, rec
    assert "polic" in (rec["error"] or "").lower()
    assert rec["credentials"] == [] and rec["image"] is None
    assert res.root == "normal"  # on_error = boot-normal
    assert res.console.find(r"^HR-ACTION normal rc=4")
    lab.power_cut(peers=2)


def test_tampered_initramfs_does_not_unseal_and_falls_back(lab: Any) -> None:
    # After a correlated power loss, but the initramfs is not the measured one.
    res = lab.boot("hold", initrd=lab.tampered_initrd())
    rec = _record(res)
    assert res.root == "normal"
    assert rec["credentials"] == [] and rec["image"] is None
    # Either the peers refuse to vouch for an unknown boot chain (no recovery verdict)
    # or the TPM refuses to unseal (policy mismatch): never a recovery.
    assert rec["exit_code"] == 4 or rec["verdict"]["action"] != "recover", rec
    lab.power_cut(peers=2)


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_tampered_image_is_rejected_before_mount(lab: Any, how: str) -> None:
    res = lab.boot("hold", store=lab.tampered_store(how))
    rec = _record(res)
    assert rec["verdict"]["kind"] == "correlated-failure"
    assert rec["action"] == "error" and rec["exit_code"] == 5, rec
    assert rec["credentials"] == []
    assert res.root == "normal"
    assert res.console.find(r"^HR-RECOVERY-ROOT") is None
    lab.power_cut(peers=2)


def test_missing_normal_root_does_not_stall_the_recovery(lab: Any) -> None:
    # The normal root device never appears: dracut's initqueue would wait for it until
    # "Could not boot"; the initqueue/timeout hook runs the payload, which recovers.
    res = lab.boot("hold", normal_root=False)
    rec = _record(res)
    assert res.console.find(r"^HR-PHASE payload-from initqueue-timeout")
    assert res.root == "recovery" and rec["action"] == "recover"
    assert res.proof_ok is True
    lab.power_cut(peers=2)


def test_power_loss_mid_recovery_then_recovers_again(lab: Any) -> None:
    # Cut the power once the payload has decided to recover (unseal/decrypt follow).
    lab.boot("hold", until=r"verdict: correlated-failure")
    lab.power_cut(peers=2)
    res = lab.boot("poweroff")
    rec = _record(res)
    assert res.root == "recovery" and rec["action"] == "recover"
    assert res.proof_ok is True
