"""``host-recover predict`` and ``reseal``: the next boot's PCR values after an
initramfs rebuild or a kernel update (recover.core.predict), from this boot's event log
checked against the TPM, and the same master secret sealed to them before the reboot, so
that a crash right after the reboot still recovers (tpm.policy = pcr). With tpm.policy =
signed the prediction is what to sign (``policy sign --values``).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from recover.config import Config
from recover.core import eventlog as ev
from recover.core.pcrsel import parse_selection
from recover.core.predict import PREDICT_HINT, NewFile
from recover.core.predict import predict as predict_log
from recover.errors import UsageError
from recover.store import binding
from recover.store.keyfile import read_key_file
from recover.store.unseal import open_tpm

if TYPE_CHECKING:
    from recover.tpm import Tpm

log = logging.getLogger(__name__)

#: An initramfs or a kernel is read whole (it is hashed whole at boot too).
FILE_MAX = 1 << 30


def _read(path: str, what: str) -> NewFile:
    """The file's bytes and its name (a symbolic link's target's: /boot/vmlinuz is
    /boot/vmlinuz-VERSION to GRUB)."""
    try:
        with open(path, "rb") as f:
            # Not f.read(FILE_MAX + 1): that allocates the whole bound first (MemoryError
            # in a 1 GiB guest). The size first, then at most one byte more than it.
            size = os.fstat(f.fileno()).st_size
            data = f.read(size + 1) if size <= FILE_MAX else b""
    except OSError as e:
        raise UsageError(f"cannot read the {what} {path}: {e.strerror}") from None
    if len(data) > FILE_MAX or not data:
        raise UsageError(f"{path} is not a{'n' if what[0] in 'aeiou' else ''} {what} "
                         "(empty or over 1 GiB)")  # fmt: skip
    return NewFile(data, os.path.basename(os.path.realpath(path)))


def predicted_values(
    cfg: Config, initramfs: str, t: Tpm, kernel: str | None = None
) -> dict[str, dict[int, bytes]]:
    """tpm.pcrs as the next boot with ``initramfs`` (and ``kernel``) will measure them.
    This boot's log must replay to the TPM's values for every selected PCR it extends
    (else it does not describe this boot and predicts nothing)."""
    data = binding.read_log(cfg.tpm_event_log)
    if not data:
        raise UsageError(f"no TPM event log at {cfg.tpm_event_log}", hint=PREDICT_HINT)
    try:
        parsed = ev.parse_event_log(data)
    except ev.EventLogError as e:
        raise UsageError(f"the event log is malformed: {e}", hint=PREDICT_HINT) from None
    current = t.pcr_read(cfg.tpm_pcrs)
    replayed = ev.replay(parsed)
    new_kernel = _read(kernel, "kernel") if kernel is not None else None
    predicted = predict_log(parsed, initrd=_read(initramfs, "initramfs"), kernel=new_kernel)
    out: dict[str, dict[int, bytes]] = {}
    for bank, pcrs in parse_selection(cfg.tpm_pcrs):
        out[bank] = {}
        for pcr in pcrs:
            now = current[bank][pcr]
            if pcr in replayed.get(bank, {}) and replayed[bank][pcr] != now:
                raise UsageError(
                    f"the event log does not replay to the TPM's PCR {bank}:{pcr}: "
                    "cannot predict the next boot",
                    hint=PREDICT_HINT,
                )
            out[bank][pcr] = predicted.get(bank, {}).get(pcr, now)
    return out


def predict(cfg: Config, initramfs: str, kernel: str | None = None) -> dict[str, dict[int, bytes]]:
    with open_tpm(cfg) as t:
        return predicted_values(cfg, initramfs, t, kernel)


def reseal(
    cfg: Config,
    *,
    initramfs: str,
    master_from: str,
    owner_auth: str | None,
    kernel: str | None = None,
) -> dict[str, Any]:
    """Seal the master secret from ``master_from`` (the one this host has: checked
    against the pinned image key id) to the values predicted for ``initramfs`` (and
    ``kernel``)."""
    from recover.core import imageformat
    from recover.core.keys import image_root_key

    if cfg.tpm_policy != "pcr":
        raise UsageError(
            "tpm.policy = signed: nothing is re-sealed",
            hint="sign the predicted values: host-recover predict --initramfs FILE > "
            "values.json; host-recover policy sign --values values.json ...",
        )
    secret = read_key_file(master_from, "master secret")
    key_id = imageformat.key_id(image_root_key(secret)).hex()
    if cfg.tpm_image_key_id and key_id != cfg.tpm_image_key_id:
        raise UsageError(
            f"{master_from} is not this host's master secret (image key id {key_id}, "
            f"pinned {cfg.tpm_image_key_id}): nothing was changed",
            hint="give the master exported by `provision --export-master` for this host",
        )
    auth = read_key_file(owner_auth, "owner auth") if owner_auth else None
    with open_tpm(cfg) as t:
        if auth is not None:
            t.use_owner_auth(auth)
        elif t.owner_auth_set():
            raise UsageError(
                "the owner hierarchy auth is set: re-sealing needs --owner-auth FILE",
                hint="give the file written by `provision --export-owner-auth`",
            )
        values = predicted_values(cfg, initramfs, t, kernel)
        handles = {"srk_handle": cfg.tpm_srk_handle, "seal_handle": cfg.tpm_seal_handle}
        t.seal_master(
            secret, **handles, selection=cfg.tpm_pcrs, lock_pcr=cfg.tpm_lock_pcr,
            policy="pcr", policy_pubkey_pem=None, force=True, values=values,
        )  # fmt: skip
    return {
        "initramfs": os.path.abspath(initramfs),
        "kernel": os.path.abspath(kernel) if kernel is not None else None,
        "sealed": f"0x{cfg.tpm_seal_handle:08x}",
        "image_key_id": key_id,
        "pcrs": values_json(values),
    }


def values_json(values: dict[str, dict[int, bytes]]) -> dict[str, dict[str, str]]:
    """The ``policy sign --values`` format: {"sha256": {"9": "hex", ...}}."""
    return {b: {str(p): v.hex() for p, v in sorted(pcrs.items())} for b, pcrs in values.items()}
