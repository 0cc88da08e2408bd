"""Secure-store verbs: ``provision``, ``status``, ``unseal --check``, ``attest``.

Also the library calls other modules use: :func:`unseal_master` (boot, image and
credential verbs) and :func:`rollback_version` (anti-rollback floor of images).
Handles and policies: docs/tpm.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recover.errors import HostRecoverError, PolicyMismatch, TpmUnavailable, UsageError
from recover.keys import MASTER_SIZE, image_root_key
from recover.pcrsel import parse_selection

if TYPE_CHECKING:
    from recover.tpm import Tpm

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _tpm(cfg: Any, tpm: Tpm | None = None) -> Iterator[Tpm]:
    """The given open Tpm, or a new connection closed on exit."""
    if tpm is not None:
        yield tpm
        return
    from recover.tpm import Tpm

    with Tpm.open(cfg.tpm_tcti, timeout=cfg.tpm_timeout) as t:
        yield t


def _read_pubkey(cfg: Any) -> bytes:
    try:
        return Path(cfg.tpm_policy_pubkey).read_bytes()
    except OSError as e:
        raise UsageError(
            f"cannot read the policy public key {cfg.tpm_policy_pubkey}: {e.strerror}",
            hint="create one with `host-recover policy keygen` and set tpm.policy_pubkey",
        ) from None


def _policy_floor(t: Tpm, cfg: Any) -> int | None:
    """The TPM's signed-policy counter, or None when it is not defined."""
    if cfg.tpm_policy_nv not in t.nv_indices():
        return None
    return t.counter_read(cfg.tpm_policy_nv)


def unseal_master(cfg: Any, tpm: Tpm | None = None) -> bytes:
    """Unseal the master secret with the configured policy; PolicyMismatch → exit 4.

    With ``tpm.policy = signed`` the signed policy file is checked (signatures, PCR
    values, version >= the TPM's policy counter) and, once it unsealed, the counter is
    raised to its version so older signed policies are refused from then on.
    """
    with _tpm(cfg, tpm) as t:
        try:
            return _unseal(cfg, t)
        except PolicyMismatch as e:
            if _lock_pcr_extended(t, cfg):
                raise PolicyMismatch(
                    f"{e.message}: lock PCR {cfg.tpm_lock_pcr} is extended in this boot",
                    hint="the boot payload extends it (boot.lock = always) so the normal OS "
                    "cannot unseal: pass --key-file with the offline copy of the key",
                ) from None
            raise


def _lock_pcr_extended(t: Tpm, cfg: Any) -> bool:
    bank = parse_selection(cfg.tpm_pcrs)[0][0]
    values = t.pcr_read(f"{bank}:{cfg.tpm_lock_pcr}")
    return any(v != bytes(len(v)) for b in values.values() for v in b.values())


def _unseal(cfg: Any, t: Tpm) -> bytes:
    from recover.tpm.policy import SignedPolicy

    if cfg.tpm_policy != "signed":
        return t.unseal_master(
            srk_handle=cfg.tpm_srk_handle,
            seal_handle=cfg.tpm_seal_handle,
            selection=cfg.tpm_pcrs,
            lock_pcr=cfg.tpm_lock_pcr,
            policy="pcr",
        )
    signed = SignedPolicy.load(cfg.tpm_policy_file)
    floor = _policy_floor(t, cfg)
    secret = t.unseal_master(
        srk_handle=cfg.tpm_srk_handle,
        seal_handle=cfg.tpm_seal_handle,
        selection=signed.selection,
        lock_pcr=cfg.tpm_lock_pcr,
        policy="signed",
        signed_policy=signed,
        policy_pubkey_pem=_read_pubkey(cfg),
        min_policy_version=floor or 0,
    )
    if floor is not None and signed.policy_version > floor:
        try:
            t.counter_advance_to(cfg.tpm_policy_nv, signed.policy_version)
        except HostRecoverError as e:
            log.warning("could not raise the policy counter: %s", e.message)
    return secret


def rollback_version(cfg: Any, tpm: Tpm | None = None) -> int:
    """The lowest accepted recovery image version (the TPM's rollback counter)."""
    with _tpm(cfg, tpm) as t:
        return t.counter_read(cfg.tpm_rollback_nv)


# --- provision ----------------------------------------------------------------------


def _check_export_target(path: str) -> None:
    p = Path(path)
    if p.exists():
        raise UsageError(f"{path} already exists", hint="choose a new file; it is never replaced")
    if not p.parent.is_dir():
        raise UsageError(f"directory {p.parent} does not exist")


def _read_master(path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    if len(data) != MASTER_SIZE:
        raise UsageError(
            f"{path} must hold exactly {MASTER_SIZE} raw bytes, it has {len(data)}",
            hint="use a file written by `provision --export-master`",
        )
    return data


def cmd_provision(args: argparse.Namespace, cfg: Any) -> int:
    from recover import image
    from recover.atomicfile import AtomicFile
    from recover.credentials import on_memory_fs

    exports = [p for p in (args.export_image_key, args.export_master) if p]
    for p in exports:
        _check_export_target(p)
    if len(exports) == 2 and os.path.abspath(exports[0]) == os.path.abspath(exports[1]):
        raise UsageError("--export-image-key and --export-master name the same file")
    given = _read_master(args.master_from) if args.master_from else None
    pubkey = _read_pubkey(cfg) if cfg.tpm_policy == "signed" else None
    report: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        # Export files are created (unnamed) before the TPM changes: a bad path fails here.
        outs = {p: stack.enter_context(contextlib.closing(AtomicFile(p))) for p in exports}
        t = stack.enter_context(_tpm(cfg))
        report["srk_created"] = t.ensure_srk(cfg.tpm_srk_handle)
        t.ensure_ak(cfg.tpm_ak_handle)
        sealed = t.has_object(cfg.tpm_seal_handle)
        if sealed and not args.force:
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
            for path, data in ((args.export_image_key, image_root_key), (args.export_master, None)):
                if path:
                    outs[path].write_all(data(secret) if data else secret, 0)
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
                    force=args.force,
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
            report["image_key_id"] = image.key_id(image_root_key(secret)).hex()
        counters = {
            "orderly_nv": (cfg.tpm_orderly_nv, True),
            "rollback_nv": (cfg.tpm_rollback_nv, False),
            "policy_nv": (cfg.tpm_policy_nv, False),
        }
        report["counters_created"] = [
            name for name, (index, orderly) in counters.items()
            if t.ensure_counter(index, orderly=orderly)
        ]  # fmt: skip
    report["policy"] = cfg.tpm_policy
    report["pcrs"] = cfg.tpm_pcrs
    report["lock_pcr"] = cfg.tpm_lock_pcr
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        log.info(
            "provisioned: secret %s (%s policy over %s + lock PCR %d)%s%s",
            report["secret"],
            cfg.tpm_policy,
            cfg.tpm_pcrs,
            cfg.tpm_lock_pcr,
            f"; image key id {report['image_key_id']}" if "image_key_id" in report else "",
            "".join(f"; wrote {p}" for p in exports if report["secret"] != "kept"),
        )
    return 0


# --- status -------------------------------------------------------------------------


def _policy_state(t: Tpm, cfg: Any) -> dict[str, Any]:
    """Whether the current PCRs satisfy the sealed policy, without unsealing."""
    from recover.tpm import policy as pol

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
    out["lock_pcr"] = {"pcr": cfg.tpm_lock_pcr, "reset": lock_zero}
    try:
        pubkey = _read_pubkey(cfg) if cfg.tpm_policy == "signed" else None
    except UsageError as e:
        pubkey, out["reason"] = None, e.message
    if pubkey is not None and sealed == pol.policy_authorize_digest(pubkey):
        out["policy"] = "signed"
        try:
            signed = pol.SignedPolicy.load(cfg.tpm_policy_file)
            signed.verify(pubkey, min_version=_policy_floor(t, cfg) or 0)
        except PolicyMismatch as e:
            out.update(satisfied=False, reason=e.message)
            return out
        out["pcrs"] = signed.selection
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
        out["pcrs"] = cfg.tpm_pcrs
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


def status(cfg: Any) -> dict[str, Any]:
    """The status document (``status --json``)."""
    doc: dict[str, Any] = {"tpm": {"tcti": cfg.tpm_tcti, "reachable": False}}
    try:
        with _tpm(cfg) as t:
            doc["orderly"] = t.orderly()
            doc["tpm"]["reachable"] = True
            doc["lockout"] = t.lockout()
            doc["clock"] = t.clock()
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
            for name in ("rollback_nv", "orderly_nv", "policy_nv"):
                index = getattr(cfg, f"tpm_{name}")
                doc[name.replace("_nv", "_counter")] = (
                    t.counter_read(index) if index in nv else None
                )
    except TpmUnavailable as e:
        doc["tpm"]["error"] = e.message
        if e.hint:
            doc["tpm"]["hint"] = e.hint
    return doc


def cmd_status(args: argparse.Namespace, cfg: Any) -> int:
    doc = status(cfg)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print_status(doc)
    if not doc["tpm"]["reachable"]:
        log.error("error: %s", doc["tpm"].get("error", "the TPM is unreachable"))
        if doc["tpm"].get("hint"):
            log.error("hint: %s", doc["tpm"]["hint"])
        return int(TpmUnavailable.exit_code)
    return 0


def _print_status(doc: dict[str, Any]) -> None:
    out = sys.stdout
    tpm = doc["tpm"]
    if not tpm["reachable"]:
        print(f"tpm:        unreachable via {tpm['tcti']} ({tpm.get('error', '')})", file=out)
        return
    sealed = doc["sealed"]
    verdict = {True: "yes", False: "NO", None: "unknown"}[sealed.get("satisfied")]
    lines = [
        f"tpm:        {tpm['tcti']}",
        f"orderly:    {'yes' if doc['orderly'] else 'NO (previous power cycle was not shut down)'}",
        f"lockout:    {doc['lockout']['counter']}/{doc['lockout']['max_tries']} failures",
        f"handles:    {' '.join(doc['handles']['persistent']) or '-'}",
        f"nv:         {' '.join(doc['handles']['nv']) or '-'}",
        f"sealed:     {sealed['handle']} {'present' if sealed['present'] else 'MISSING'}"
        + (
            f", {sealed.get('policy')} policy over {sealed.get('pcrs')}"
            if sealed["present"]
            else ""
        ),
        f"unsealable: {verdict}" + (f" ({sealed['reason']})" if sealed.get("reason") else ""),
        f"rollback:   {doc['rollback_counter']}",
    ]
    print("\n".join(lines), file=out)


# --- unseal --check, attest ---------------------------------------------------------


def cmd_unseal(args: argparse.Namespace, cfg: Any) -> int:
    secret = unseal_master(cfg)
    log.info("unseal check: ok (%d-byte secret; not shown)", len(secret))
    return 0


def cmd_attest(args: argparse.Namespace, cfg: Any) -> int:
    from recover.inventory import pcrs_to_json

    with _tpm(cfg) as t:
        ak_pub = t.ak_public(cfg.tpm_ak_handle)
        pcrs = t.pcr_read(cfg.tpm_pcrs)
    entry = {
        "id": cfg.peers_host_id or socket.gethostname(),
        "address": args.address,
        "failure_domain": args.failure_domain,
        "ak_pub": ak_pub.decode(),
        "pcrs": pcrs_to_json(pcrs),
    }
    print(json.dumps(entry, indent=2))
    return 0
