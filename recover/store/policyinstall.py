"""``policy install`` (make a signed policy the current one and revoke older ones) and
``image floor`` (raise the lowest accepted recovery image version): the two owner-auth
operations on the TPM's anti-rollback counters.

The file is verified (policy key, digest, both signatures, lock PCR, policy counter
index, version >= the TPM's policy counter), copied atomically to tpm.policy_file, and
then the TPM's policy counter is raised to its version. Every signed policy approves
``PolicyPCR ∧ PolicyNV(policy counter <= its version)``, so from then on the TPM itself
refuses older ones (docs/tpm.md, "Revocation"). Raising the counter needs the owner
auth once provisioning set one (the counter is OWNERWRITE only).
"""

from __future__ import annotations

import logging
import os

from recover.config import Config
from recover.core.policy import NV_WRITTEN, POLICY_COUNTER_ATTRS
from recover.errors import PolicyMismatch
from recover.store.owner import use_owner_auth
from recover.store.unseal import load_signed_policy, open_tpm, read_pubkey

log = logging.getLogger(__name__)


def install_policy(
    cfg: Config, path: str, *, owner_auth_file: str | None = None
) -> tuple[int, int]:
    """Install the signed policy at ``path``; returns (its version, the counter after)."""
    from recover.atomicfile import write_file
    from recover.tpm.nv import NvLayoutError

    signed = load_signed_policy(path)
    signed.verify(read_pubkey(cfg))
    if signed.lock_pcr != cfg.tpm_lock_pcr:
        raise PolicyMismatch(
            f"signed policy covers lock PCR {signed.lock_pcr}, not tpm.lock_pcr {cfg.tpm_lock_pcr}",
            hint="sign it again with the configured tpm.lock_pcr",
        )
    if signed.policy_nv != cfg.tpm_policy_nv:
        raise PolicyMismatch(
            f"signed policy names policy counter 0x{signed.policy_nv:08x}, "
            f"not tpm.policy_nv 0x{cfg.tpm_policy_nv:08x}",
            hint="sign it again with the configured tpm.policy_nv",
        )
    with open_tpm(cfg) as t:
        floor = t.counter_read(cfg.tpm_policy_nv)
        if signed.policy_version < floor:
            raise PolicyMismatch(
                f"signed policy version {signed.policy_version} is older than the installed "
                f"one (policy counter {floor})",
                hint="sign a new policy; a revoked version never works again",
            )
        have = t.nv_attributes(cfg.tpm_policy_nv)
        if have != POLICY_COUNTER_ATTRS | NV_WRITTEN:
            raise NvLayoutError(cfg.tpm_policy_nv, have, POLICY_COUNTER_ATTRS)
        use_owner_auth(t, owner_auth_file, "raising the policy counter")
        data = signed.to_json().encode()
        if os.path.abspath(path) != os.path.abspath(cfg.tpm_policy_file):
            write_file(cfg.tpm_policy_file, data, mode=0o644)
        # File first: if raising the counter fails, the new file is in place and still
        # valid (counter <= its version); the old one was superseded on disk only.
        counter = t.counter_advance_to(cfg.tpm_policy_nv, signed.policy_version)
    return signed.policy_version, counter


def raise_image_floor(cfg: Config, version: int, *, owner_auth_file: str | None = None) -> int:
    """Raise the rollback counter (tpm.rollback_nv) to ``version``; returns its value.

    Images below it are refused from then on (exit 5). Needs the owner auth once set
    (the counter is OWNERWRITE only, so the normal OS cannot raise it to deny recovery).
    """
    from recover.errors import UsageError

    if version < 0:
        raise UsageError("the image floor must be >= 0")
    with open_tpm(cfg) as t:
        use_owner_auth(t, owner_auth_file, "raising the image floor")
        return t.counter_advance_to(cfg.tpm_rollback_nv, version)
