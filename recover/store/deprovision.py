"""``host-recover deprovision``: remove what ``provision`` put into the TPM.

The sealed object first (the secret goes before anything else), then the NV indices
(evidence, anti-rollback and policy counters, the decision record), the attestation
key and the storage key, then the owner hierarchy auth back to empty, and the pins
``provision`` wrote into the configuration's drop-in directory. Only what exists at the
configured handles is removed, so a run that was interrupted can simply be repeated.
A set owner auth must be proven (``--owner-auth``) before anything changes: a wrong one
changes nothing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from recover.config import Config
from recover.errors import UsageError
from recover.store.keyfile import read_key_file
from recover.store.unseal import open_tpm

log = logging.getLogger(__name__)


def targets(cfg: Config) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(persistent objects, NV indices) provisioning creates, in removal order."""
    persistent = [
        ("sealed object", cfg.tpm_seal_handle),
        ("attestation key", cfg.tpm_ak_handle),
        ("storage key", cfg.tpm_srk_handle),
    ]
    nv = [
        ("orderly_nv", cfg.tpm_orderly_nv),
        ("record_nv", cfg.tpm_record_nv),
        ("rollback_nv", cfg.tpm_rollback_nv),
        ("policy_nv", cfg.tpm_policy_nv),
        ("credentials_nv", cfg.tpm_credentials_nv),
    ]
    return persistent, nv


def plan(cfg: Config) -> dict[str, Any]:
    """What a deprovision would remove now (reads the TPM, changes nothing)."""
    persistent, nv = targets(cfg)
    with open_tpm(cfg) as t:
        handles, indices = set(t.persistent_handles()), set(t.nv_indices())
        owner_auth_set = t.owner_auth_set()
    return {
        "persistent": [f"{name} 0x{h:08x}" for name, h in persistent if h in handles],
        "nv": [f"{name} 0x{i:08x}" for name, i in nv if i in indices],
        "owner_auth_set": owner_auth_set,
    }


def deprovision(
    cfg: Config,
    *,
    owner_auth: str | None,
    keep_owner_auth: bool = False,
    pin_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Remove the provisioned objects, NV indices, owner auth (unless
    ``keep_owner_auth``) and pins; return what was removed."""
    from recover.store.provision import PINS_FILE

    auth = read_key_file(owner_auth, "owner auth") if owner_auth else None
    persistent, nv = targets(cfg)
    report: dict[str, Any] = {"persistent": [], "nv": [], "owner_auth_cleared": False}
    with open_tpm(cfg) as t:
        auth_set = t.owner_auth_set()
        if auth_set and auth is None:
            raise UsageError(
                "the owner hierarchy auth is set on this TPM: deprovision must prove "
                "ownership; nothing was changed",
                hint="pass --owner-auth FILE (written by `provision --export-owner-auth`)",
            )
        if auth is not None:
            t.use_owner_auth(auth)
            if auth_set:
                # Proves the auth with a change to the same value: a wrong file fails
                # here, before anything is removed.
                t.change_owner_auth(auth)
        handles, indices = set(t.persistent_handles()), set(t.nv_indices())
        for name, handle in persistent[:1]:
            if handle in handles:
                t.evict(handle, name)
                report["persistent"].append(f"{name} 0x{handle:08x}")
        for name, index in nv:
            if index in indices:
                t.nv_undefine(index)
                report["nv"].append(f"{name} 0x{index:08x}")
        for name, handle in persistent[1:]:
            if handle in handles:
                t.evict(handle, name)
                report["persistent"].append(f"{name} 0x{handle:08x}")
        if auth_set and not keep_owner_auth:
            t.change_owner_auth(b"")
            report["owner_auth_cleared"] = True
    report["pins_removed"] = None
    if pin_dir is not None:
        pins = Path(pin_dir) / PINS_FILE
        try:
            pins.unlink()
            report["pins_removed"] = os.fspath(pins)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not remove %s (%s): remove it by hand", pins, e.strerror)
    return report
