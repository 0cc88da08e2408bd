"""Unsealing the master secret (the secure store), shared by the boot payload and the
CLI: PolicyPCR or a signed policy (docs/tpm.md), the anti-rollback floors.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from recover.core.pcrsel import parse_selection
from recover.errors import HostRecoverError, IntegrityError, PolicyMismatch, UsageError
from recover.store.safefile import POLICY_MAX, read_capped

if TYPE_CHECKING:
    from recover.config import Config
    from recover.core.policy import SignedPolicy
    from recover.tpm import Tpm

log = logging.getLogger(__name__)


@contextlib.contextmanager
def open_tpm(cfg: Config, tpm: Tpm | None = None) -> Iterator[Tpm]:
    """The given open Tpm, or a new connection closed on exit."""
    if tpm is not None:
        yield tpm
        return
    from recover.tpm import Tpm

    with Tpm.open(cfg.tpm_tcti, timeout=cfg.tpm_timeout) as t:
        yield t


def load_signed_policy(path: str | os.PathLike[str]) -> SignedPolicy:
    """The signed policy file (on the store partition at boot: not followed if a link, a
    regular file of at most POLICY_MAX bytes). Unreadable → PolicyMismatch (exit 4)."""
    from recover.core.policy import SignedPolicy

    try:
        data = read_capped(path, POLICY_MAX, follow=False)
    except HostRecoverError as e:
        raise PolicyMismatch(
            f"cannot read signed policy: {e.message}",
            hint="sign one with `host-recover policy sign`",
        ) from None
    return SignedPolicy.from_bytes(data, os.fspath(path))


def read_pubkey(cfg: Config) -> bytes:
    try:
        return Path(cfg.tpm_policy_pubkey).read_bytes()
    except OSError as e:
        raise UsageError(
            f"cannot read the policy public key {cfg.tpm_policy_pubkey}: {e.strerror}",
            hint="create one with `host-recover policy keygen` and set tpm.policy_pubkey",
        ) from None


def policy_floor(t: Tpm, cfg: Config) -> int | None:
    """The TPM's signed-policy counter, or None when it is not defined."""
    if cfg.tpm_policy_nv not in t.nv_indices():
        return None
    return t.counter_read(cfg.tpm_policy_nv)


def unseal_master(cfg: Config, tpm: Tpm | None = None) -> bytes:
    """Unseal the master secret with the configured policy; PolicyMismatch → exit 4.

    With ``tpm.policy = signed`` the signed policy file is checked (signatures, PCR
    values, version >= the TPM's policy counter), and the TPM checks the counter again
    (PolicyNV). Unsealing never raises the counter: ``policy install`` does.
    """
    with open_tpm(cfg, tpm) as t:
        try:
            return _check_key_id(cfg, _unseal(cfg, t))
        except PolicyMismatch as e:
            if _lock_pcr_extended(t, cfg):
                raise PolicyMismatch(
                    f"{e.message}: lock PCR {cfg.tpm_lock_pcr} is extended in this boot",
                    hint="the boot payload extends it (boot.lock = always) so the normal OS "
                    "cannot unseal: pass --key-file with the offline copy of the key",
                ) from None
            raise


def _check_key_id(cfg: Config, secret: bytes) -> bytes:
    """The pinned image key id (tpm.image_key_id) against the unsealed master."""
    if not cfg.tpm_image_key_id:
        return secret
    from recover.core import imageformat
    from recover.core.keys import image_root_key

    got = imageformat.key_id(image_root_key(secret)).hex()
    if got != cfg.tpm_image_key_id:
        raise IntegrityError(
            f"the unsealed master has image key id {got}, not the provisioned "
            f"{cfg.tpm_image_key_id} (tpm.image_key_id): refusing it",
            hint="the sealed object was replaced; if you re-provisioned on purpose, rebuild "
            "the initramfs with the new host-recover.conf.d/50-provisioned.conf",
        )
    return secret


def _pin(value: str) -> bytes | None:
    return bytes.fromhex(value) if value else None


def _lock_pcr_extended(t: Tpm, cfg: Config) -> bool:
    bank = parse_selection(cfg.tpm_pcrs)[0][0]
    values = t.pcr_read(f"{bank}:{cfg.tpm_lock_pcr}")
    return any(v != bytes(len(v)) for b in values.values() for v in b.values())


def _unseal(cfg: Config, t: Tpm) -> bytes:
    """One unseal: the same objects and pins, with the PCR or the signed policy."""
    unseal = functools.partial(
        t.unseal_master,
        srk_handle=cfg.tpm_srk_handle,
        seal_handle=cfg.tpm_seal_handle,
        lock_pcr=cfg.tpm_lock_pcr,
        srk_name=_pin(cfg.tpm_srk_name),
        seal_name=_pin(cfg.tpm_seal_name),
    )
    if cfg.tpm_policy != "signed":
        return unseal(selection=cfg.tpm_pcrs, policy="pcr")
    signed = load_signed_policy(cfg.tpm_policy_file)
    return unseal(
        selection=signed.selection,
        policy="signed",
        signed_policy=signed,
        policy_pubkey_pem=read_pubkey(cfg),
        min_policy_version=policy_floor(t, cfg) or 0,
        policy_nv=cfg.tpm_policy_nv,
    )


def rollback_version(cfg: Config, tpm: Tpm | None = None) -> int:
    """The lowest accepted recovery image version (the TPM's rollback counter)."""
    with open_tpm(cfg, tpm) as t:
        return t.counter_read(cfg.tpm_rollback_nv)


def tpm_master(cfg: Config) -> bytes:
    """The master secret, unsealed from the TPM."""
    from recover.store.unseal import unseal_master

    return bytes(unseal_master(cfg))
