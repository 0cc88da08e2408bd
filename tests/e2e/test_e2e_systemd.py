"""End-to-end under a systemd initrd: host-recover.service (Before=sysroot.mount) with
the same exit contract as the dracut shell hook. A clean boot, then a correlated power
loss → recovery root with its credential. Its own lab (PCR 9 differs from shell init);
each test sets its own preconditions (tests/e2e/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from test_e2e import _record

pytestmark = pytest.mark.e2e


@pytest.fixture
def lab(systemd_lab: Any) -> Iterator[Any]:
    yield systemd_lab
    systemd_lab.vm.power_cut()  # a held guest does not outlive its test


def test_systemd_clean_boot(systemd_clean_boot: Any) -> None:
    res = systemd_clean_boot  # the first boot after provisioning, peers up
    rec = _record(res)
    assert res.root == "normal" and rec["verdict"]["kind"] == "clean"
    assert res.console.find(r"^HR-ACTION normal rc=0")


def test_systemd_correlated_power_loss_recovers(lab: Any, systemd_clean_boot: Any) -> None:
    lab.prepare("cut", peers_cut=2)  # the host and 2 of 3 peers lose power together
    res = lab.boot("poweroff")
    rec = _record(res)
    assert rec["verdict"]["kind"] == "correlated-failure"
    assert res.root == "recovery" and rec["exit_code"] == 10
    assert res.proof_ok is True
