"""Local evidence about the previous shutdown, read at the first TPM access (docs/verdict.md).

Each signal reads clean, abnormal or unknown; a signal that cannot be read is unknown,
never clean. Strong signals decide the summary; weak ones only when no strong signal
could be read (and then only towards abnormal); context signals never change it.
The data records are pure; :func:`gather` talks to a ``recover.tpm.Tpm``.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import logging
import time
from pathlib import Path
from typing import Any

from recover.errors import HostRecoverError

log = logging.getLogger("recover.evidence")

PSTORE_DIR = "/sys/fs/pstore"
READ_FROM_TPM = object()  # gather(previous=...) default: read the record from TPM NV


class Reading(enum.StrEnum):
    CLEAN = "clean"
    ABNORMAL = "abnormal"
    UNKNOWN = "unknown"


class Strength(enum.StrEnum):
    STRONG = "strong"
    WEAK = "weak"
    CONTEXT = "context"


@dataclasses.dataclass(frozen=True)
class Signal:
    name: str
    value: Any  # JSON-compatible raw value (None when it could not be read)
    reading: Reading
    strength: Strength
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "reading": str(self.reading),
            "strength": str(self.strength),
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Signal:
        return cls(
            str(d["name"]),
            d.get("value"),
            Reading(d["reading"]),
            Strength(d["strength"]),
            str(d.get("reason", "")),
        )


def summarize(signals: tuple[Signal, ...]) -> Reading:
    strong = [s.reading for s in signals if s.strength is Strength.STRONG]
    weak = [s.reading for s in signals if s.strength is Strength.WEAK]
    if Reading.ABNORMAL in strong:
        return Reading.ABNORMAL
    if Reading.CLEAN in strong:
        return Reading.CLEAN
    if Reading.ABNORMAL in weak:
        return Reading.ABNORMAL
    return Reading.UNKNOWN


@dataclasses.dataclass(frozen=True)
class Evidence:
    signals: tuple[Signal, ...]
    clock: dict[str, int] | None = None  # signed-clock fields: clock, reset_count, ...
    since_reset_s: float | None = None  # seconds since this host's TPM reset (this boot)
    read_at: float = 0.0  # wall-clock time of reading (for the record only)

    @property
    def summary(self) -> Reading:
        return summarize(self.signals)

    def signal(self, name: str) -> Signal | None:
        return next((s for s in self.signals if s.name == name), None)

    @property
    def orderly(self) -> bool | None:
        s = self.signal("orderly_bit")
        return None if s is None or s.reading is Reading.UNKNOWN else s.reading is Reading.CLEAN

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": str(self.summary),
            "signals": [s.to_json() for s in self.signals],
            "clock": self.clock,
            "since_reset_s": self.since_reset_s,
            "read_at": self.read_at,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Evidence:
        return cls(
            tuple(Signal.from_json(s) for s in d["signals"]),
            d.get("clock"),
            d.get("since_reset_s"),
            float(d.get("read_at", 0.0)),
        )


# --- the signals ------------------------------------------------------------------------


def _unknown(name: str, strength: Strength, e: Exception) -> Signal:
    return Signal(name, None, Reading.UNKNOWN, strength, f"could not be read: {e}")


def orderly_bit(tpm: Any) -> Signal:
    name = "orderly_bit"
    try:
        orderly = bool(tpm.orderly())
    except HostRecoverError as e:
        return _unknown(name, Strength.STRONG, e)
    if orderly:
        return Signal(name, True, Reading.CLEAN, Strength.STRONG, "TPM2_Shutdown preceded boot")
    return Signal(
        name,
        False,
        Reading.ABNORMAL,
        Strength.STRONG,
        "TPMA_STARTUP_CLEAR.orderly is 0: no TPM2_Shutdown before this boot",
    )


def orderly_counter(tpm: Any, index: int) -> Signal:
    name = "orderly_counter"
    try:
        value = int(tpm.counter_read(index))
    except HostRecoverError as e:
        return _unknown(name, Strength.STRONG, e)
    low = value & 0xFF
    if value == 0:
        return Signal(
            name, value, Reading.UNKNOWN, Strength.STRONG, f"counter {index:#x} never incremented"
        )
    if low == 0xFF:
        return Signal(
            name,
            value,
            Reading.ABNORMAL,
            Strength.STRONG,
            f"hybrid counter {index:#x} low byte is 0xff: non-orderly startup",
        )
    return Signal(
        name, value, Reading.CLEAN, Strength.STRONG, f"hybrid counter low byte {low:#04x}"
    )


def lockout_change(tpm: Any, previous: dict[str, Any] | None) -> Signal:
    name = "lockout_counter"
    try:
        counter = int(tpm.lockout()["counter"])
    except (HostRecoverError, KeyError, TypeError, ValueError) as e:
        return _unknown(name, Strength.WEAK, e)
    before = (previous or {}).get("lockout")
    if not isinstance(before, int):
        return Signal(name, counter, Reading.UNKNOWN, Strength.WEAK, "no previous value to compare")
    if counter > before:
        return Signal(
            name,
            counter,
            Reading.ABNORMAL,
            Strength.WEAK,
            f"lockout counter rose {before} → {counter} (non-orderly shutdown after DA auth)",
        )
    return Signal(name, counter, Reading.CLEAN, Strength.WEAK, f"lockout counter {counter}")


def pstore(pstore_dir: str) -> Signal:
    name = "pstore"
    try:
        entries = sorted(p.name for p in Path(pstore_dir).iterdir() if p.is_file())
    except OSError as e:
        return Signal(
            name,
            None,
            Reading.UNKNOWN,
            Strength.STRONG,
            f"{pstore_dir} unreadable: {e.strerror or e}",
        )
    crashes = [n for n in entries if n.startswith("dmesg-")]
    if crashes:
        return Signal(
            name,
            crashes,
            Reading.ABNORMAL,
            Strength.STRONG,
            f"kernel crash records in {pstore_dir}: {', '.join(crashes[:5])}",
        )
    # No crash record does not prove a clean shutdown (power loss leaves none).
    return Signal(name, entries, Reading.UNKNOWN, Strength.WEAK, "no crash records")


def record_fields(evidence_json: dict[str, Any] | None) -> dict[str, int]:
    """What the boot's TPM NV decision record must carry for the next boot's evidence:
    the lockout counter, the baseline of the ``lockout_counter`` signal."""
    for s in (evidence_json or {}).get("signals", []):
        if s.get("name") == "lockout_counter" and isinstance(s.get("value"), int):
            return {"lockout": s["value"]}
    return {}


def parse_previous(blob: bytes | None) -> dict[str, Any] | None:
    if not blob:
        return None
    try:
        data = json.loads(blob.rstrip(b"\x00").decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def previous_record(blob: bytes | None) -> Signal:
    name = "previous_decision"
    data = parse_previous(blob)
    if data is None:
        why = "no record" if not blob else "unreadable record"
        return Signal(name, None, Reading.UNKNOWN, Strength.CONTEXT, why)
    action = data.get("action")
    if action == "recovering":
        return Signal(
            name,
            data,
            Reading.ABNORMAL,
            Strength.CONTEXT,
            "recovery was in progress when the host went down",
        )
    return Signal(
        name, data, Reading.CLEAN, Strength.CONTEXT, f"previous boot ended with action {action}"
    )


_CLOCK_KEYS = {"resetCount": "reset_count", "restartCount": "restart_count"}


def clock_fields(raw: dict[str, Any]) -> dict[str, int]:
    """The TPM clock as ``{time, clock, reset_count, restart_count, safe}`` (ints)."""
    return {_CLOCK_KEYS.get(k, k): int(v) for k, v in raw.items()}


def rearm_orderly_counter(tpm: Any, index: int) -> bool:
    """After a non-orderly startup, advance the hybrid counter off 0x..ff so that the
    next boot reads the signal afresh. Call once per boot, after :func:`gather`."""
    try:
        if tpm.counter_read(index) & 0xFF == 0xFF:
            tpm.counter_increment(index)
            return True
    except HostRecoverError as e:
        log.warning("could not re-arm the orderly counter %#x: %s", index, e.message)
    return False


def since_reset(clock: dict[str, Any] | None) -> tuple[float | None, str]:
    """Seconds since this TPM's reset: TPM ``time`` when offered, else the host's boot time.

    The TPM's *clock* is not usable here: it counts powered time since TPM2_Clear and goes
    back after a power cut (measured on swtpm: docs/verdict.md).
    """
    if clock and isinstance(clock.get("time"), int):
        return clock["time"] / 1000, "tpm"
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME), "host"
    except OSError:
        return None, "host"


def gather(
    tpm: Any,
    cfg: Any,
    *,
    pstore_dir: str = PSTORE_DIR,
    previous: Any = READ_FROM_TPM,
) -> Evidence:
    """Read every signal; ``previous`` is the previous decision record (bytes or None),
    read from ``cfg.tpm_record_nv`` when not given."""
    if previous is READ_FROM_TPM:
        try:
            previous = tpm.nv_blob_read(cfg.tpm_record_nv)
        except HostRecoverError as e:
            log.debug("previous decision record unreadable: %s", e)
            previous = None
    prev = parse_previous(previous)
    signals = (
        orderly_bit(tpm),
        orderly_counter(tpm, cfg.tpm_orderly_nv),
        pstore(pstore_dir),
        lockout_change(tpm, prev),
        previous_record(previous),
    )
    try:
        clock: dict[str, Any] | None = clock_fields(tpm.clock())
    except HostRecoverError as e:
        log.debug("TPM clock unreadable: %s", e)
        clock = None
    return Evidence(signals, clock, since_reset(clock)[0], time.time())


def format_text(ev: Evidence) -> str:
    lines = [f"summary: {ev.summary}"]
    for s in ev.signals:
        lines.append(f"  {s.name:<18} {s.reading:<9} ({s.strength}) {s.reason}")
    if ev.since_reset_s is not None:
        lines.append(f"  since TPM reset:   {ev.since_reset_s:.1f} s")
    return "\n".join(lines)


def cmd_evidence(args: argparse.Namespace, cfg: Any) -> int:
    from recover.tpm import Tpm

    with Tpm.open(cfg.tpm_tcti, timeout=cfg.tpm_timeout) as tpm:
        ev = gather(tpm, cfg)
    if args.json:
        print(json.dumps(ev.to_json(), indent=2, sort_keys=True))
    else:
        print(format_text(ev))
    return 0
