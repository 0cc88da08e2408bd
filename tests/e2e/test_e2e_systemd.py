"""End-to-end under a systemd initrd: host-recover.service (Before=sysroot.mount) with
the same exit contract as the dracut shell hook. A clean boot, then a correlated power
loss → recovery root with its credential. Its own lab (PCR 9 differs from shell init)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from test_e2e import _missing, _record

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:
    missing = _missing()
    if missing or os.geteuid() != 0:
        pytest.skip(f"needs root and {missing or 'the QEMU toolchain'} (make deps)")
    from testing.qemu import harness
    from testing.qemu import lab as labmod

    lab = labmod.Lab(harness.BUILD / "e2e-lab-systemd", n_peers=3, init="systemd")
    try:
        lab.setup()
        yield lab
    finally:
        lab.close()


def test_systemd_clean_boot(lab: Any) -> None:
    res = lab.boot("hold")
    rec = _record(res)
    assert res.root == "normal" and rec["verdict"]["kind"] == "clean"
    assert res.console.find(r"^HR-ACTION normal rc=0")
    lab.power_cut(peers=2)


def test_systemd_correlated_power_loss_recovers(lab: Any) -> None:
    res = lab.boot("poweroff")
    rec = _record(res)
    assert rec["verdict"]["kind"] == "correlated-failure"
    assert res.root == "recovery" and rec["exit_code"] == 10
    assert res.proof_ok is True
