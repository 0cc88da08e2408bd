"""Evidence rules without a TPM: pstore crash records, the lockout comparison, the
previous boot's record and how signals of each strength sum up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from recover.boot.gather import lockout_change, pstore
from recover.core.evidence import (
    Evidence,
    Reading,
    Signal,
    Strength,
    previous_record,
    summarize,
)


def test_pstore_crash_records_name_the_files(tmp_path: Path) -> None:
    (tmp_path / "dmesg-ramoops-0").write_text("Kernel panic")
    (tmp_path / "console-ramoops-0").write_text("x")
    s = pstore(str(tmp_path))
    assert s.reading is Reading.ABNORMAL and s.strength is Strength.STRONG
    assert "dmesg-ramoops-0" in s.reason and s.value == ["dmesg-ramoops-0"]
    (tmp_path / "dmesg-ramoops-0").unlink()
    assert pstore(str(tmp_path)).reading is Reading.UNKNOWN  # no crash record ≠ clean


class _Lockout:
    """Pure logic of the lockout comparison (the TPM read: tests/tpm/test_evidence.py)."""

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


REC = b'{"action":"recovering"}'  # a recovery's record: not rewritable after its lock


@pytest.mark.parametrize(
    "blob,orderly,reading",
    [(None, None, Reading.UNKNOWN), (b"\x00\x01garbage", None, Reading.UNKNOWN),
     (b'{"action":"normal"}', None, Reading.CLEAN), (b'{"action":"normal"}', False, Reading.CLEAN),
     (REC, None, Reading.ABNORMAL), (REC, False, Reading.ABNORMAL),
     (REC, True, Reading.CLEAN)],  # TPM shutdown since: the recovered system ran, shut down
)  # fmt: skip
def test_previous_record(blob: bytes | None, orderly: bool | None, reading: Reading) -> None:
    s = previous_record(blob, orderly)
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
