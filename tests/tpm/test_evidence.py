"""Local evidence against a real swtpm: power cut vs orderly reboot. The pure rules
(pstore, lockout, previous record, summary): tests/unit/test_evidence_rules.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from recover import config
from recover.boot.gather import gather, rearm_orderly_counter
from recover.core import policy as pol
from recover.core.evidence import Evidence, Reading

COUNTER = 0x01500011
RECORD = 0x01500012


def cfg() -> Any:
    return config.load(None, {"tpm.orderly_nv": hex(COUNTER), "tpm.record_nv": hex(RECORD)}, {})


def read(swtpm: Any, pstore_dir: Path, **kw: Any) -> Evidence:
    from recover.tpm import Tpm

    with Tpm.open(swtpm.tcti) as tpm:
        return gather(tpm, cfg(), pstore_dir=str(pstore_dir), **kw)


def rearm(swtpm: Any) -> bool:
    from recover.tpm import Tpm

    with Tpm.open(swtpm.tcti) as tpm:
        return rearm_orderly_counter(tpm, cfg())


def lock() -> pol.WriteLock:
    c = cfg()
    return pol.WriteLock.of(c.tpm_pcrs, c.tpm_lock_pcr)


def define_counter(tpm: Any) -> None:
    """As provision defines it: write policy, not initialised."""
    tpm.ensure_counter(
        COUNTER,
        orderly=True,
        attrs=pol.HYBRID_COUNTER_ATTRS,
        auth_policy=lock().digest(pol.CC_NV_INCREMENT),
    )


@pytest.fixture
def provisioned(swtpm: Any) -> Any:
    """The counter as provision defines it (write policy, not initialised), then the
    first boot's payload initialising it before its lock."""
    from recover.tpm import Tpm

    with Tpm.open(swtpm.tcti) as tpm:
        define_counter(tpm)
        assert not tpm.nv_written(COUNTER)
    assert rearm(swtpm) is True
    return swtpm


@pytest.mark.tpm
def test_a_never_written_hybrid_counter_is_no_crash_signal_until_the_payload_writes_it(
    swtpm: Any, tmp_path: Path
) -> None:
    """A policy-written hybrid counter is defined unwritten by provision: only once the
    payload wrote it does a non-orderly startup turn its low byte to 0xff."""
    from recover.tpm import Tpm

    with Tpm.open(swtpm.tcti) as tpm:
        define_counter(tpm)
    swtpm.power_cut_and_restart()
    ctr = read(swtpm, tmp_path).signal("orderly_counter")
    assert ctr is not None and ctr.reading is Reading.UNKNOWN
    assert rearm(swtpm) is True  # the payload: first write
    assert rearm(swtpm) is False  # once per boot: nothing to re-arm now
    swtpm.power_cut_and_restart()
    ctr = read(swtpm, tmp_path).signal("orderly_counter")
    assert ctr is not None and ctr.reading is Reading.ABNORMAL and ctr.value & 0xFF == 0xFF


@pytest.mark.tpm
def test_orderly_reboot_reads_clean(provisioned: Any, tmp_path: Path) -> None:
    provisioned.reboot_orderly()
    ev = read(provisioned, tmp_path)
    assert ev.summary is Reading.CLEAN, ev.to_json()
    assert ev.signal("orderly_bit").reading is Reading.CLEAN  # type: ignore[union-attr]
    assert ev.signal("orderly_counter").reading is Reading.CLEAN  # type: ignore[union-attr]
    assert ev.orderly is True
    assert ev.clock is not None and ev.clock["reset_count"] >= 1
    assert ev.since_reset_s is not None and 0 <= ev.since_reset_s < 60


@pytest.mark.tpm
def test_power_cut_reads_abnormal_twice_over(provisioned: Any, tmp_path: Path) -> None:
    provisioned.power_cut_and_restart()
    ev = read(provisioned, tmp_path)
    assert ev.summary is Reading.ABNORMAL
    bit, ctr = ev.signal("orderly_bit"), ev.signal("orderly_counter")
    assert bit is not None and bit.reading is Reading.ABNORMAL and bit.value is False
    assert ctr is not None and ctr.reading is Reading.ABNORMAL and ctr.value & 0xFF == 0xFF
    assert ev.orderly is False
    # The evidence is stable within a boot: reading again says the same.
    assert read(provisioned, tmp_path).summary is Reading.ABNORMAL
    # Re-armed, an orderly reboot then reads clean on both signals; a cut abnormal again.
    rearm(provisioned)
    provisioned.reboot_orderly()
    assert read(provisioned, tmp_path).signal("orderly_counter").reading is Reading.CLEAN  # type: ignore[union-attr]
    provisioned.power_cut_and_restart()
    assert read(provisioned, tmp_path).signal("orderly_counter").reading is Reading.ABNORMAL  # type: ignore[union-attr]


@pytest.mark.tpm
def test_missing_counter_is_unknown_never_clean(swtpm: Any, tmp_path: Path) -> None:
    swtpm.power_cut_and_restart()
    ev = read(swtpm, tmp_path / "no-pstore")
    ctr, ps = ev.signal("orderly_counter"), ev.signal("pstore")
    assert ctr is not None and ctr.reading is Reading.UNKNOWN and "could not be read" in ctr.reason
    assert ps is not None and ps.reading is Reading.UNKNOWN
    assert ev.summary is Reading.ABNORMAL  # the orderly bit alone still tells


@pytest.mark.tpm
def test_previous_record_from_nv(provisioned: Any, tmp_path: Path) -> None:
    """A recovery's record says "recovering" for good (written before the unseal, the
    index is not writable after the lock): this boot's orderly bit tells whether the
    recovered system shut down in order since, or the host went down."""
    from recover.tpm import Tpm

    with Tpm.open(provisioned.tcti) as tpm:
        tpm.nv_blob_write(
            RECORD, b'{"v":1,"action":"recovering","kind":"correlated-failure"}', lock=lock()
        )
    provisioned.reboot_orderly()
    ev = read(provisioned, tmp_path)
    prev = ev.signal("previous_decision")
    assert prev is not None and prev.reading is Reading.CLEAN
    assert "the previous boot started a recovery" in prev.reason
    provisioned.power_cut_and_restart()
    ev = read(provisioned, tmp_path)
    prev = ev.signal("previous_decision")
    assert prev is not None and prev.reading is Reading.ABNORMAL
    assert "recovery was in progress" in prev.reason
    assert ev.summary is Reading.ABNORMAL  # from the crash signals; context changes nothing
    rearm(provisioned)
    provisioned.reboot_orderly()
    assert read(provisioned, tmp_path).summary is Reading.CLEAN  # context never changes it
    given = read(provisioned, tmp_path, previous=None).signal("previous_decision")
    assert given is not None and given.reading is Reading.UNKNOWN


@pytest.mark.tpm
def test_evidence_cli_json(provisioned: Any, tmp_path: Path) -> None:
    provisioned.power_cut_and_restart()
    out = subprocess.run(
        [sys.executable, "-m", "recover", "--set", f"tpm.orderly_nv={COUNTER:#x}",
         "evidence", "--json"],
        env=provisioned.env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["summary"] == "abnormal"
    assert Evidence.from_json(data).summary is Reading.ABNORMAL


@pytest.mark.tpm
def test_prepare_runs_only_when_a_recovery_is_possible(provisioned: Any, tmp_path: Path) -> None:
    """gather.run's ``prepare`` (the payload: load the image's kernel modules in the
    background) runs once the evidence is not clean, never on a clean boot."""
    from recover.boot import gather as gather_mod
    from recover.tpm import Tpm

    calls: list[str] = []
    c = cfg().replace(peers_inventory=str(tmp_path / "none.json"))  # alone: no peers
    for event, expected in (("orderly", []), ("cut", ["prepare"])):
        calls.clear()
        if event == "orderly":
            provisioned.reboot_orderly()
        else:
            provisioned.power_cut_and_restart()
        with Tpm.open(provisioned.tcti) as tpm:
            d = gather_mod.run(
                c,
                tpm,
                serve=False,
                pstore_dir=str(tmp_path),
                prepare=lambda: calls.append("prepare"),
            )
        assert calls == expected, (event, d.evidence.summary)
