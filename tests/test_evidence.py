"""Local evidence against a real swtpm: power cut vs orderly reboot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from recover import config
from recover.boot.gather import gather, lockout_change, pstore, rearm_orderly_counter
from recover.core.evidence import (
    Evidence,
    Reading,
    Signal,
    Strength,
    previous_record,
    summarize,
)

COUNTER = 0x01500011
RECORD = 0x01500012


def cfg() -> Any:
    return config.load(None, {"tpm.orderly_nv": hex(COUNTER), "tpm.record_nv": hex(RECORD)}, {})


def read(swtpm: Any, pstore_dir: Path, **kw: Any) -> Evidence:
    from recover.tpm import Tpm

    with Tpm.open(swtpm.tcti) as tpm:
        return gather(tpm, cfg(), pstore_dir=str(pstore_dir), **kw)


def rearm(swtpm: Any) -> None:
    from recover.tpm import Tpm

    with Tpm.open(swtpm.tcti) as tpm:
        rearm_orderly_counter(tpm, COUNTER)


@pytest.fixture
def provisioned(swtpm: Any) -> Any:
    from recover.tpm import Tpm

    with Tpm.open(swtpm.tcti) as tpm:
        tpm.ensure_counter(COUNTER, orderly=True)
    return swtpm


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
    from recover.tpm import Tpm

    with Tpm.open(provisioned.tcti) as tpm:
        tpm.nv_blob_write(RECORD, b'{"v":1,"action":"recovering","kind":"correlated-failure"}')
    provisioned.reboot_orderly()
    ev = read(provisioned, tmp_path)
    prev = ev.signal("previous_decision")
    assert prev is not None and prev.reading is Reading.ABNORMAL
    assert "recovery was in progress" in prev.reason
    assert ev.summary is Reading.CLEAN  # context never changes the summary
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


def test_pstore_crash_records_name_the_files(tmp_path: Path) -> None:
    (tmp_path / "dmesg-ramoops-0").write_text("Kernel panic")
    (tmp_path / "console-ramoops-0").write_text("x")
    s = pstore(str(tmp_path))
    assert s.reading is Reading.ABNORMAL and s.strength is Strength.STRONG
    assert "dmesg-ramoops-0" in s.reason and s.value == ["dmesg-ramoops-0"]
    (tmp_path / "dmesg-ramoops-0").unlink()
    assert pstore(str(tmp_path)).reading is Reading.UNKNOWN  # no crash record ≠ clean


class _Lockout:
    """Pure logic of the lockout comparison (the TPM read is covered above)."""

    def __init__(self, counter: int) -> None:
        self.counter = counter

    def lockout(self) -> dict[str, int]:
        return {"counter": self.counter}


@pytest.mark.parametrize(
    "now,prev,reading",
    [(2, {"lockout": 1}, Reading.ABNORMAL), (1, {"lockout": 1}, Reading.CLEAN),
     (0, None, Reading.UNKNOWN), (3, {"v": 1}, Reading.UNKNOWN)],
)  # fmt: skip
def test_lockout_change(now: int, prev: Any, reading: Reading) -> None:
    s = lockout_change(_Lockout(now), prev)
    assert s.reading is reading and s.strength is Strength.WEAK


@pytest.mark.parametrize(
    "blob,reading",
    [(None, Reading.UNKNOWN), (b"\x00\x01garbage", Reading.UNKNOWN),
     (b'{"action":"normal"}', Reading.CLEAN), (b'{"action":"recovering"}', Reading.ABNORMAL)],
)  # fmt: skip
def test_previous_record(blob: bytes | None, reading: Reading) -> None:
    s = previous_record(blob)
    assert s.reading is reading and s.strength is Strength.CONTEXT


def sig(reading: Reading, strength: Strength) -> Signal:
    return Signal("s", None, reading, strength, "")


A, C, U = Reading.ABNORMAL, Reading.CLEAN, Reading.UNKNOWN
S, W, X = Strength.STRONG, Strength.WEAK, Strength.CONTEXT


@pytest.mark.parametrize(
    "signals,summary",
    [
        ([(C, S), (A, S)], A),
        ([(C, S), (U, S)], C),
        ([(C, S), (A, W)], C),
        ([(U, S), (A, W)], A),
        ([(U, S), (C, W)], U),
        ([(U, S), (A, X)], U),
        ([], U),
    ],
)
def test_summary_rules(signals: list, summary: Reading) -> None:
    ev = Evidence(tuple(sig(r, s) for r, s in signals))
    assert summarize(ev.signals) is summary
    assert Evidence.from_json(ev.to_json()).summary is summary


def test_record_fields_carry_the_lockout_baseline() -> None:
    from recover.core.evidence import record_fields

    ev = Evidence((Signal("lockout_counter", 2, Reading.UNKNOWN, Strength.WEAK, ""),))
    assert record_fields(ev.to_json()) == {"lockout": 2}
    assert record_fields(None) == {}
    # The next boot compares against it.
    prev = json.loads(json.dumps({"action": "normal", **record_fields(ev.to_json())}))
    assert lockout_change(_Lockout(3), prev).reading is Reading.ABNORMAL
