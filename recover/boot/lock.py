"""The lock: extend the lock PCR so that nothing later in this boot can unseal the
master secret (it is sealed with the lock PCR at its reset value, docs/tpm.md)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from recover.tpm import Tpm

log = logging.getLogger(__name__)


LOCK_EVENT = b"host-recover: locked for this boot"


def extend(tpm: Tpm, pcr: int) -> dict[str, str]:
    """Extend ``pcr`` in every allocated bank and verify each bank by reading it back
    (recover.tpm.pcr); raises a HostRecoverError when that cannot be done. Returns the
    new values by bank (hex) for the decision record."""
    values = tpm.extend_all_banks(pcr, LOCK_EVENT)
    log.info("locked: PCR %d extended in %s", pcr, ", ".join(sorted(values)))
    return {bank: v.hex() for bank, v in values.items()}
