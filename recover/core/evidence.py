"""Local evidence about the previous shutdown: the records and their pure interpretation
(docs/verdict.md).

Each signal reads clean, abnormal or unknown; a signal that cannot be read is unknown,
never clean. Strong signals decide the summary; weak ones only when no strong signal
could be read (and then only towards abnormal); context signals never change it.
Reading the signals from the TPM and the platform is ``recover.boot.gather``'s job.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import time
from typing import Any

PSTORE_DIR = "/sys/fs/pstore"


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
    """One piece of evidence about the previous shutdown, with how it reads and how
    much it weighs."""

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
    """Everything read about the previous shutdown: the signals and the TPM's clock."""

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


def _unknown(name: str, strength: Strength, e: Exception) -> Signal:
    return Signal(name, None, Reading.UNKNOWN, strength, f"could not be read: {e}")


def record_fields(
    evidence_json: dict[str, Any] | None, inventory_version: int | None = None
) -> dict[str, int]:
    """What the boot's TPM NV decision record must carry for the next boot's evidence:
    the lockout counter, the baseline of the ``lockout_counter`` signal; and ``inv``, the
    newest signed inventory version this host accepted (its anti-rollback floor,
    docs/inventory.md), carried from the previous record when this boot read none."""
    out: dict[str, int] = {}
    for s in (evidence_json or {}).get("signals", []):
        if s.get("name") == "lockout_counter" and isinstance(s.get("value"), int):
            out["lockout"] = s["value"]
    seen = max(inventory_seen(evidence_json), inventory_version or 0)
    if seen:
        out["inv"] = seen
    return out


def inventory_seen(evidence_json: dict[str, Any] | None) -> int:
    """The newest signed inventory version the previous boot's record says was accepted
    (0: none)."""
    for s in (evidence_json or {}).get("signals", []):
        value = s.get("value")
        if s.get("name") == "previous_decision" and isinstance(value, dict):
            inv = value.get("inv")
            if isinstance(inv, int) and not isinstance(inv, bool) and inv > 0:
                return inv
    return 0


def parse_previous(blob: bytes | None) -> dict[str, Any] | None:
    if not blob:
        return None
    try:
        data = json.loads(blob.rstrip(b"\x00").decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def previous_record(blob: bytes | None, orderly: bool | None = None) -> Signal:
    """The previous boot's TPM record. A recovery's record says ``recovering`` for good
    (written before the unseal; the index cannot be written after the lock), so whether
    that recovery completed is read from this boot's ``orderly`` bit: a TPM shutdown
    since means the recovered system ran and shut down in order."""
    name = "previous_decision"
    data = parse_previous(blob)
    if data is None:
        why = "no record" if not blob else "unreadable record"
        return Signal(name, None, Reading.UNKNOWN, Strength.CONTEXT, why)
    action = data.get("action")
    if action == "recovering" and orderly:
        return Signal(
            name,
            data,
            Reading.CLEAN,
            Strength.CONTEXT,
            "the previous boot started a recovery (its outcome is in that boot's "
            "decision.json), and the host shut down in order since",
        )
    if action == "recovering":
        return Signal(
            name,
            data,
            Reading.ABNORMAL,
            Strength.CONTEXT,
            "recovery was in progress when the host went down (or the recovered system "
            "went down without a TPM shutdown)",
        )
    return Signal(
        name, data, Reading.CLEAN, Strength.CONTEXT, f"previous boot ended with action {action}"
    )


_CLOCK_KEYS = {"resetCount": "reset_count", "restartCount": "restart_count"}


def clock_fields(raw: dict[str, Any]) -> dict[str, int]:
    """The TPM clock as ``{time, clock, reset_count, restart_count, safe}`` (ints)."""
    return {_CLOCK_KEYS.get(k, k): int(v) for k, v in raw.items()}


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


def format_text(ev: Evidence) -> str:
    lines = [f"summary: {ev.summary}"]
    for s in ev.signals:
        lines.append(f"  {s.name:<18} {s.reading:<9} ({s.strength}) {s.reason}")
    if ev.since_reset_s is not None:
        lines.append(f"  since TPM reset:   {ev.since_reset_s:.1f} s")
    return "\n".join(lines)
