"""The QEMU labs of the e2e tests, built once per session, and the states tests start from.

Every test sets its own preconditions with ``lab.prepare(host_state, peers_cut)`` from
host states saved here, so any test runs alone or in any order:

provisioned  the host right after the provisioning boot (an orderly poweroff; Lab.setup)
cut          the host after its first boot from "provisioned" (held), cut off by a
             power loss of its own: made once, by the ``*_clean_boot`` fixtures, whose
             value is that boot's result
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testing.qemu import harness
from testing.qemu.lab import BootResult, Lab


def _lab(name: str, init: str) -> Iterator[Lab]:
    if why := harness.unavailable():
        pytest.skip(why)
    lab = Lab(harness.BUILD / name, n_peers=3, init=init)
    try:
        lab.setup()
        yield lab
    finally:
        lab.close()


def _clean_boot_then_cut(lab: Lab) -> BootResult:
    """The first boot after provisioning, the peers up (the guest held), then the host
    alone loses power: saved as host state "cut"."""
    lab.prepare("provisioned", peers_cut=0)
    res = lab.boot("hold")
    lab.power_cut(peers=0)
    lab.save_host("cut")
    return res


@pytest.fixture(scope="session")
def shell_lab() -> Iterator[Lab]:
    """Dracut's shell init (hooks): ~30 s per TCG boot plus a one-time build."""
    yield from _lab("e2e-lab", "shell")


@pytest.fixture(scope="session")
def systemd_lab() -> Iterator[Lab]:
    """A systemd initrd (host-recover.service); its own lab: PCR 9 differs."""
    yield from _lab("e2e-lab-systemd", "systemd")


@pytest.fixture(scope="session")
def shell_clean_boot(shell_lab: Lab) -> BootResult:
    return _clean_boot_then_cut(shell_lab)


@pytest.fixture(scope="session")
def systemd_clean_boot(systemd_lab: Lab) -> BootResult:
    return _clean_boot_then_cut(systemd_lab)
