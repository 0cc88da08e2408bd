"""Provisioning the secure store and reporting its state (docs/tpm.md): storage key,
attestation key, NV counters, the sealed master secret; ``status``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recover.config import Config
from recover.core.evidence import clock_fields
from recover.core.keys import MASTER_SIZE, image_root_key
from recover.core.pcrsel import parse_selection
from recover.errors import HostRecoverError, PolicyMismatch, TpmUnavailable, UsageError
from recover.store import binding, credentials
from recover.store.keyfile import KeyKind, encode_key_file, read_key_file
from recover.store.owner import OWNER_AUTH_SIZE
from recover.store.unseal import load_signed_policy, open_tpm, policy_floor, read_pubkey

if TYPE_CHECKING:
    from recover.tpm import Tpm

log = logging.getLogger(__name__)


def _check_export_target(path: str) -> None:
    p = Path(path)
    if p.exists():
        raise UsageError(f"{path} already exists", hint="choose a new file; it is never replaced")
    if not p.parent.is_dir():
        raise UsageError(f"directory {p.parent} does not exist")


def provision(
    cfg: Config,
    *,
    force: bool = False,
    export_image_key: str | None = None,
    export_master: str | None = None,
    master_from: str | None = None,
    owner_auth: str | None = None,
    export_owner_auth: str | None = None,
    no_owner_auth: bool = False,
    pin_dir: str | os.PathLike[str] | None = None,
    allow_unbound: bool = False,
) -> dict[str, Any]:
    """Create what is missing (SRK, AK, NV counters) and seal a master secret unless
    one is sealed (``force`` replaces it). Exports are written completely before the
    TPM changes. Once the owner hierarchy auth is set, ``force`` and every change need
    it (``owner_auth``: a file); ``export_owner_auth`` sets a new random one (written
    to that file first). A TPM whose owner auth is empty needs an explicit choice:
    ``export_owner_auth`` or ``no_owner_auth`` (else a UsageError, before anything
    changes). ``pin_dir``: the configuration's drop-in directory, where the
    TPM names of the SRK and (policy = signed) the sealed object and the image key id
    are written (``PINS_FILE``, to be baked into the initramfs). Returns the report
    ``provision --json`` prints."""
    from recover.atomicfile import AtomicFile
    from recover.core import imageformat
    from recover.core.policy import (
        CC_NV_INCREMENT,
        CREDENTIALS_COUNTER_ATTRS,
        HYBRID_COUNTER_ATTRS,
        POLICY_COUNTER_ATTRS,
        ROLLBACK_COUNTER_ATTRS,
        WriteLock,
    )
    from recover.store.credentials import on_memory_fs
    from recover.tpm.nv import NvLayoutError

    if export_owner_auth and no_owner_auth:
        raise UsageError("--export-owner-auth and --no-owner-auth exclude each other")
    exports = [p for p in (export_image_key, export_master) if p]
    for p in [*exports, *([export_owner_auth] if export_owner_auth else [])]:
        _check_export_target(p)
    named = [os.path.abspath(p) for p in (*exports, export_owner_auth) if p]
    if len(set(named)) != len(named):
        raise UsageError("two --export-* options name the same file")
    given = read_key_file(master_from, "master secret") if master_from else None
    auth = read_key_file(owner_auth, "owner auth") if owner_auth else None
    pubkey = read_pubkey(cfg) if cfg.tpm_policy == "signed" else None
    report: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        # Export files are created (unnamed) before the TPM changes: a bad path fails here.
        outs = {p: stack.enter_context(contextlib.closing(AtomicFile(p))) for p in exports}
        auth_out = (
            stack.enter_context(contextlib.closing(AtomicFile(export_owner_auth)))
            if export_owner_auth
            else None
        )
        t = stack.enter_context(open_tpm(cfg))
        auth_was_set = t.owner_auth_set()
        if auth is not None:
            t.use_owner_auth(auth)
        elif auth_was_set and (force or export_owner_auth):
            raise UsageError(
                "the owner hierarchy auth is set on this TPM: "
                + ("--force" if force else "--export-owner-auth")
                + " must prove ownership with --owner-auth FILE",
                hint="give the file written by `provision --export-owner-auth`; if it is lost, "
                'see docs/tpm.md ("Owner auth")',
            )
        if force or not t.has_object(cfg.tpm_seal_handle):  # about to seal: bound?
            bound = binding.assess(cfg.tpm_event_log, cfg.tpm_pcrs, t)
            binding.require(bound, allow_unbound=allow_unbound, what="seal to tpm.pcrs")
            report["binding"] = bound.to_json()
        if not auth_was_set and not export_owner_auth and not no_owner_auth:
            raise UsageError(
                "the owner hierarchy auth of this TPM is empty: with it any root process "
                "can raise the policy, image and credential floors (a denial of recovery) "
                "and undefine the NV indices; nothing was changed",
                hint="pass --export-owner-auth FILE (recommended: keep FILE offline with the "
                "master) or, for a test lab, --no-owner-auth",
            )
        report["srk_created"] = t.ensure_srk(cfg.tpm_srk_handle)
        t.ensure_ak(cfg.tpm_ak_handle)
        sealed = t.has_object(cfg.tpm_seal_handle)
        if sealed and not force:
            if exports or given is not None:
                raise UsageError(
                    f"a secret is already sealed at 0x{cfg.tpm_seal_handle:08x}; nothing exported",
                    hint="--export-*/--master-from act only when a secret is sealed now; "
                    "add --force to replace it (old images become unreadable)",
                )
            report["secret"] = "kept"
        else:
            secret = given if given is not None else os.urandom(MASTER_SIZE)
            # Exports are complete on disk before the TPM changes, so that neither an
            # interruption nor a power loss can leave a sealed secret nobody has a copy of.
            for path, kind, data in (
                (export_image_key, KeyKind.IMAGE_KEY, image_root_key(secret)),
                (export_master, KeyKind.MASTER_SECRET, secret),
            ):
                if path:
                    outs[path].write_all(encode_key_file(kind, data), 0)
                    outs[path].commit()
            try:
                t.seal_master(
                    secret,
                    srk_handle=cfg.tpm_srk_handle,
                    seal_handle=cfg.tpm_seal_handle,
                    selection=cfg.tpm_pcrs,
                    lock_pcr=cfg.tpm_lock_pcr,
                    policy=cfg.tpm_policy,
                    policy_pubkey_pem=pubkey,
                    force=force,
                )
            except BaseException:
                for path in exports:  # nothing was sealed: no keys to a secret nobody uses
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                raise
            report["secret"] = "replaced" if sealed else "sealed"
            for path in exports:
                if not on_memory_fs(outs[path].fd):
                    log.warning("%s is on persistent storage: move it offline and shred it", path)
            # Public: compare with `image inspect`'s key_id to tell which master an image needs.
            report["image_key_id"] = imageformat.key_id(image_root_key(secret)).hex()
        # The evidence indices are written only through their write policy (the lock PCR
        # at its reset value): by the boot payload before its lock, never the normal OS.
        lock = WriteLock.of(cfg.tpm_pcrs, cfg.tpm_lock_pcr)
        counters = {
            "orderly_nv": (
                cfg.tpm_orderly_nv,
                True,
                HYBRID_COUNTER_ATTRS,
                lock.digest(CC_NV_INCREMENT),
            ),
            "rollback_nv": (cfg.tpm_rollback_nv, False, ROLLBACK_COUNTER_ATTRS, b""),
            "policy_nv": (cfg.tpm_policy_nv, False, POLICY_COUNTER_ATTRS, b""),
            # not initialised here: no floor until `credential add|remove` raises it
            "credentials_nv": (cfg.tpm_credentials_nv, False, CREDENTIALS_COUNTER_ATTRS, b""),
        }
        report["counters_created"], report["counters_migrated"] = [], []
        for name, (index, orderly, attrs, auth_policy) in counters.items():
            try:
                if t.ensure_counter(
                    index,
                    orderly=orderly,
                    attrs=attrs,
                    auth_policy=auth_policy,
                    initialise=name != "credentials_nv",
                ):
                    report["counters_created"].append(name)
            except NvLayoutError:
                # An older layout (AUTHWRITE: anyone could raise or forge it): redefine it
                # (a floor at its old value). Needs the owner auth once it is set.
                t.migrate_counter(index, attrs=attrs, auth_policy=auth_policy)
                report["counters_migrated"].append(name)
        try:
            if t.ensure_blob(cfg.tpm_record_nv, lock):
                report["counters_created"].append("record_nv")
        except NvLayoutError:
            t.migrate_blob(cfg.tpm_record_nv, lock)
            report["counters_migrated"].append("record_nv")
        if auth_out is not None:
            new = os.urandom(OWNER_AUTH_SIZE)
            auth_out.write_all(encode_key_file(KeyKind.OWNER_AUTH, new), 0)
            auth_out.commit()  # on disk before the TPM changes
            try:
                t.change_owner_auth(new)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(auth_out.dst)
                raise
            if not on_memory_fs(auth_out.fd):
                log.warning(
                    "%s is on persistent storage: move it offline and shred it", auth_out.dst
                )
        if pin_dir is not None:
            key_id = report.get("image_key_id") or cfg.tpm_image_key_id
            pins = {"srk_name": t.object_name(cfg.tpm_srk_handle, "storage key").hex()}
            if cfg.tpm_policy == "signed":
                pins["seal_name"] = t.object_name(cfg.tpm_seal_handle, "sealed object").hex()
            if key_id:
                pins["image_key_id"] = key_id
            report["pins"] = pins
            try:
                report["pinned"] = os.fspath(write_pins(pin_dir, pins))
            except HostRecoverError as e:  # e.g. a read-only /etc: the TPM work is done
                report["pinned"] = None
                log.warning(
                    "could not write the pinned names (%s): add [tpm] %s to the baked-in "
                    "configuration by hand",
                    e.message,
                    ", ".join(f"{k} = {v}" for k, v in pins.items()),
                )
        report["owner_auth_set"] = auth_out is not None or auth_was_set
        if not report["owner_auth_set"]:
            log.warning(
                "--no-owner-auth: the owner hierarchy auth stays empty: any root process can "
                "raise the floors or undefine the NV indices; set one with "
                "`host-recover provision --export-owner-auth FILE` and keep the file offline"
            )
    report["policy"] = str(cfg.tpm_policy)
    report["selection"] = cfg.tpm_pcrs
    report["lock_pcr"] = cfg.tpm_lock_pcr
    report["exported"] = [p for p in exports if report["secret"] != "kept"]
    if export_owner_auth:
        report["exported"].append(export_owner_auth)
    return report


PINS_FILE = "50-provisioned.conf"


def write_pins(pin_dir: str | os.PathLike[str], pins: dict[str, str]) -> Path:
    """Write the pinned names as a configuration drop-in, atomically (0644)."""
    from recover.atomicfile import write_file

    d = Path(pin_dir)
    if not d.parent.is_dir():  # never create the configuration directory itself
        raise UsageError(f"the configuration directory {d.parent} does not exist")
    try:
        d.mkdir(mode=0o755, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {d}: {e.strerror}") from None
    text = (
        "# Written by `host-recover provision`: the provisioned TPM objects, checked before\n"
        "# every unseal. Bake it into the initramfs (the dracut module installs\n"
        "# host-recover.conf.d/*.conf). Rewritten by every provision run.\n"
        "[tpm]\n" + "".join(f"{k} = {v}\n" for k, v in pins.items())
    )
    path = d / PINS_FILE
    write_file(path, text.encode(), mode=0o644)
    return path


def _policy_state(t: Tpm, cfg: Config) -> dict[str, Any]:
    """Whether the current PCRs satisfy the sealed policy, without unsealing."""
    from recover.core import policy as pol

    out: dict[str, Any] = {"handle": f"0x{cfg.tpm_seal_handle:08x}", "present": False}
    if not t.has_object(cfg.tpm_seal_handle):
        out["reason"] = "no sealed object; run `host-recover provision`"
        return out
    out["present"] = True
    sealed = t.sealed_policy_digest(cfg.tpm_seal_handle)
    out["policy_digest"] = sealed.hex()
    bank = parse_selection(cfg.tpm_pcrs)[0][0]
    lock = t.pcr_read(f"{bank}:{cfg.tpm_lock_pcr}")
    lock_zero = all(v == bytes(len(v)) for bank in lock.values() for v in bank.values())
    out["lock_pcr"] = cfg.tpm_lock_pcr
    out["lock_pcr_extended"] = not lock_zero
    try:
        pubkey = read_pubkey(cfg) if cfg.tpm_policy == "signed" else None
    except UsageError as e:
        pubkey, out["reason"] = None, e.message
    if pubkey is not None and sealed == pol.policy_authorize_digest(pubkey):
        out["policy"] = "signed"
        try:
            signed = load_signed_policy(cfg.tpm_policy_file)
            signed.verify(pubkey, min_version=policy_floor(t, cfg) or 0)
        except PolicyMismatch as e:
            out.update(satisfied=False, reason=e.message)
            return out
        out["selection"] = signed.selection
        out["policy_version"] = signed.policy_version
        current = t.pcr_read(signed.selection)
        ok = pol.expected_values(signed.selection, current, None) == pol.expected_values(
            signed.selection, signed.pcrs, None
        )
        reason = "" if ok else "current PCRs differ from the signed policy's values"
    else:
        current = t.pcr_read(cfg.tpm_pcrs)
        ok = sealed == pol.policy_pcr_digest(cfg.tpm_pcrs, current, cfg.tpm_lock_pcr)
        out["policy"] = "pcr" if ok or cfg.tpm_policy == "pcr" else "unknown"
        out["selection"] = cfg.tpm_pcrs
        reason = "" if ok else "current values of tpm.pcrs do not give the sealed policy digest"
    out["pcrs_match"] = ok  # the policy's PCRs, apart from the lock PCR
    if not lock_zero:
        ok, reason = (
            False,
            (
                f"lock PCR {cfg.tpm_lock_pcr} is extended in this boot (after an unseal, or on "
                f"every boot with boot.lock = always); the other PCRs {'' if ok else 'do not '}"
                "match the policy"
            ),
        )
    out["satisfied"] = ok
    if reason:
        out["reason"] = reason
    return out


def _pin_state(t: Tpm, cfg: Config, persistent: list[int]) -> dict[str, str]:
    """Each pinned TPM name: "match", "MISMATCH", "missing" (no object) or "not pinned"."""
    out = {}
    for key, handle in (("srk_name", cfg.tpm_srk_handle), ("seal_name", cfg.tpm_seal_handle)):
        pinned = getattr(cfg, f"tpm_{key}")
        if not pinned:
            out[key] = "not pinned"
        elif handle not in persistent:
            out[key] = "missing"
        else:
            out[key] = "match" if t.object_name(handle).hex() == pinned else "MISMATCH"
    out["image_key_id"] = cfg.tpm_image_key_id or "not pinned"
    return out


def _evidence_state(t: Tpm, cfg: Config, nv: list[int]) -> dict[str, str]:
    """Whether each evidence index is protected by the write policy of this
    configuration: "protected", "OPEN" (an older AUTHWRITE layout: run provision),
    "other policy" (another lock PCR or bank) or "missing"."""
    from recover.core.policy import CC_NV_INCREMENT, CC_NV_WRITE, NV_POLICYWRITE, WriteLock

    lock = WriteLock.of(cfg.tpm_pcrs, cfg.tpm_lock_pcr)
    out = {}
    for name, index, cc in (
        ("orderly_nv", cfg.tpm_orderly_nv, CC_NV_INCREMENT),
        ("record_nv", cfg.tpm_record_nv, CC_NV_WRITE),
    ):
        if index not in nv:
            out[name] = "missing"
            continue
        attrs, policy = t.nv_layout(index)
        if not attrs & NV_POLICYWRITE:
            out[name] = "OPEN"
        else:
            out[name] = "protected" if policy == lock.digest(cc) else "other policy"
    return out


def status(cfg: Config) -> dict[str, Any]:
    """The status document (``status --json``)."""
    doc: dict[str, Any] = {"tpm": {"tcti": cfg.tpm_tcti, "reachable": False}}
    try:
        with open_tpm(cfg) as t:
            doc["orderly"] = t.orderly()
            doc["tpm"]["reachable"] = True
            doc["lockout"] = t.lockout()
            doc["clock"] = clock_fields(t.clock())  # the names `evidence` uses
            persistent = t.persistent_handles()
            nv = t.nv_indices()
            doc["handles"] = {
                "persistent": [f"0x{h:08x}" for h in persistent],
                "nv": [f"0x{h:08x}" for h in nv],
            }
            doc["srk"] = {
                "handle": f"0x{cfg.tpm_srk_handle:08x}",
                "present": cfg.tpm_srk_handle in persistent,
            }
            doc["ak"] = {
                "handle": f"0x{cfg.tpm_ak_handle:08x}",
                "present": cfg.tpm_ak_handle in persistent,
            }
            doc["sealed"] = _policy_state(t, cfg)
            doc["owner_auth_set"] = t.owner_auth_set()
            doc["pins"] = _pin_state(t, cfg, persistent)
            doc["binding"] = binding.assess(cfg.tpm_event_log, cfg.tpm_pcrs, t).to_json()
            for name in ("rollback_nv", "orderly_nv", "policy_nv"):
                index = getattr(cfg, f"tpm_{name}")
                # None: not defined, or not initialised yet (the hybrid counter until
                # the first boot's payload writes it)
                doc[name.replace("_nv", "_counter")] = (
                    t.counter_read(index) if index in nv and t.nv_written(index) else None
                )
            doc["evidence_write_policy"] = _evidence_state(t, cfg, nv)
            # the lowest credential store generation the boot accepts (None: no floor yet)
            doc["credentials_floor"] = credentials.tpm_floor(t, cfg)
    except TpmUnavailable as e:
        doc["tpm"]["error"] = e.message
        if e.hint:
            doc["tpm"]["hint"] = e.hint
    return doc
