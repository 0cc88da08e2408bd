"""The decision record: /run/host-recover/decision.json (survives switch_root) and its
compact summary in TPM NV (the next boot's "previous decision" evidence).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recover.errors import HostRecoverError

if TYPE_CHECKING:
    from recover.config import Config
    from recover.tpm import Tpm

log = logging.getLogger(__name__)


RECORD_NAME = "decision.json"


@dataclasses.dataclass
class Outcome:
    """What this boot did; written to the decision record."""

    action: str = "normal"  # normal | recover | hold | error | disabled | never
    exit_code: int = 0
    next: str = ""  # what the hook does next: recover.core.plan.HookAction
    verdict: dict[str, Any] | None = None
    evidence: dict[str, Any] | None = None
    peers: dict[str, Any] | None = None
    error: str | None = None
    hint: str | None = None
    image: dict[str, Any] | None = None
    credentials: list[str] = dataclasses.field(default_factory=list)
    lock_pcr_extended: bool = False  # extended in every allocated bank and verified
    lock: dict[str, str] = dataclasses.field(default_factory=dict)  # bank → new value
    timeline_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    inventory_version: int | None = None  # the signed inventory used (docs/inventory.md)
    witness: dict[str, Any] | None = None  # the witness's view, if read (docs/witness.md)


ACTION_NAME = "action"  # what the hook does next, one word (recover.core.plan.HookAction)


def write_record(state_dir: str, outcome: Outcome, cfg: Config) -> Path:
    """Write decision.json and the hook's ``action`` file atomically (tmpfs /run
    survives switch_root). The action file is written last: a hook that finds it
    finds a complete record."""
    d = Path(state_dir)
    d.mkdir(mode=0o755, parents=True, exist_ok=True)
    record = dataclasses.asdict(outcome)
    record.update(
        {
            "version": 1,
            "boot_id": boot_id(),
            "time": time.time(),
            "mode": cfg.boot_mode,
            "on_error": cfg.boot_on_error,
        }
    )
    path = d / RECORD_NAME
    tmp = d / f".{RECORD_NAME}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)
    (d / "on-error").write_text(cfg.boot_on_error + "\n", encoding="utf-8")
    if outcome.next:
        tmp = d / f".{ACTION_NAME}.tmp"
        tmp.write_text(outcome.next + "\n", encoding="utf-8")
        os.replace(tmp, d / ACTION_NAME)
    return path


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        import uuid

        return str(uuid.uuid4())


def record_summary(outcome: Outcome) -> bytes:
    """A compact summary for the TPM NV record (the next boot's 'previous decision')."""
    from recover.core.evidence import record_fields

    summary = {
        "v": 1,
        "action": outcome.action,
        "kind": (outcome.verdict or {}).get("kind"),
        "exit": outcome.exit_code,
        "t": int(time.time()),
        "boot": boot_id()[:8],
        **record_fields(outcome.evidence, outcome.inventory_version),
    }
    return json.dumps(summary, separators=(",", ":")).encode()


def record_nv(tpm: Tpm, cfg: Config, outcome: Outcome) -> bool:
    """Store the summary through the index's write policy: only before the lock.
    Returns whether it was stored."""
    from recover.core.policy import WriteLock

    lock = WriteLock.of(cfg.tpm_pcrs, cfg.tpm_lock_pcr)
    try:
        tpm.nv_blob_write(cfg.tpm_record_nv, record_summary(outcome), lock=lock)
    except HostRecoverError as e:
        log.warning("could not store the decision summary in TPM NV: %s", e)
        return False
    return True
