"""Power cycles against a real swtpm: the orderly bit, the hybrid NV counter and the
dictionary-attack lockout after power cuts (docs/tpm.md, "TPM signals").
"""

from __future__ import annotations

import pytest

from recover.tpm import Tpm

pytestmark = pytest.mark.tpm

SRK, SEAL = 0x81000001, 0x81000002
HYBRID, PLAIN = 0x01500011, 0x01500010
SEL, LOCK = "sha256:0,2,4,7,9", 15


def _state(swtpm) -> tuple[bool, int, int, int]:
    with Tpm.open(swtpm.tcti) as t:
        return t.orderly(), t.counter_read(HYBRID), t.counter_read(PLAIN), t.lockout()["counter"]


def test_orderly_bit_and_hybrid_counter(swtpm) -> None:
    with Tpm.open(swtpm.tcti) as t:
        t.ensure_counter(HYBRID, orderly=True)
        t.ensure_counter(PLAIN, orderly=False)
        t.counter_increment(HYBRID)
        t.counter_increment(PLAIN)
    _, h0, p0, _ = _state(swtpm)
    assert h0 & 0xFF != 0xFF

    swtpm.reboot_orderly()  # TPM2_Shutdown, then power off/on
    orderly, h, p, _ = _state(swtpm)
    assert orderly is True
    assert (h, p) == (h0, p0)  # the RAM copy of the hybrid counter reached NV

    swtpm.power_cut_and_restart()  # SIGKILL: no TPM2_Shutdown
    orderly, h, p, _ = _state(swtpm)
    assert orderly is False
    assert h & 0xFF == 0xFF and h > h0  # advanced so the low byte is 0xFF
    assert p == p0  # a plain counter is written through to NV and just kept

    # An increment after the crash leaves 0xFF; the next orderly cycle keeps the value.
    with Tpm.open(swtpm.tcti) as t:
        h1 = t.counter_increment(HYBRID)
    assert h1 & 0xFF == 0x00
    swtpm.reboot_orderly()
    orderly, h, _, _ = _state(swtpm)
    assert orderly is True and h == h1


def test_power_cuts_never_lock_the_host_out(swtpm) -> None:
    """NODA SRK and sealed object: unseal after more power cuts than swtpm's 3 tries."""
    secret = b"k" * 32
    with Tpm.open(swtpm.tcti) as t:
        t.ensure_srk(SRK)
        t.seal_master(
            secret, srk_handle=SRK, seal_handle=SEAL, selection=SEL, lock_pcr=LOCK,
            policy="pcr", policy_pubkey_pem=None, force=False,
        )  # fmt: skip
        max_tries = t.lockout()["max_tries"]
    for _ in range(max_tries + 1):
        with Tpm.open(swtpm.tcti) as t:
            got = t.unseal_master(
                srk_handle=SRK, seal_handle=SEAL, selection=SEL, lock_pcr=LOCK, policy="pcr"
            )
            assert got == secret
            t.pcr_extend(LOCK, b"locked")
        swtpm.power_cut_and_restart()
    with Tpm.open(swtpm.tcti) as t:
        assert t.lockout()["counter"] == 0
        assert t.orderly() is False
        got = t.unseal_master(
            srk_handle=SRK, seal_handle=SEAL, selection=SEL, lock_pcr=LOCK, policy="pcr"
        )
    assert got == secret
