"""``host-recover policy keygen|sign|install``: signed PCR policies (tpm.policy = signed).

The private key signs on an operator machine; the host keeps only the public key (in
the measured initramfs) and the signed policy file (outside the measured path). After
a planned PCR change (new firmware, kernel, initramfs) the operator signs the predicted
values and installs them (``policy install``: the file goes to tpm.policy_file and the
TPM's policy counter rises to its version, so every older signed policy stops working
at the TPM); the host unseals again without re-sealing. File format: docs/tpm.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recover.errors import PolicyMismatch, UsageError

if TYPE_CHECKING:
    from recover.config import Config

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    pol = sub.add_parser("policy", help="Signed PCR policies (tpm.policy = signed).")
    polsub = pol.add_subparsers(dest="policy_verb", metavar="ACTION", required=True)
    p = polsub.add_parser(
        "keygen",
        help="Create an ECC P-256 policy signing key pair (private key stays offline).",
    )
    p.set_defaults(handler=cmd_keygen)
    p.add_argument("--private", required=True, metavar="FILE", help="private key PEM (0600)")
    p.add_argument("--public", required=True, metavar="FILE", help="public key PEM")
    p = polsub.add_parser("sign", help="Sign a PCR policy for the current (or given) PCR values.")
    p.set_defaults(handler=cmd_sign)
    p.add_argument("--key", required=True, metavar="FILE", help="private key PEM")
    p.add_argument("--pcrs", help="selection (default tpm.pcrs)")
    p.add_argument(
        "--values",
        metavar="FILE",
        help='JSON {"sha256": {"0": "hex", ...}} of predicted PCR values '
        "(default: read the current PCRs from the TPM)",
    )
    p.add_argument("--output", metavar="FILE", help="policy file (default tpm.policy_file)")
    p.add_argument(
        "--policy-version",
        type=int,
        metavar="N",
        help="anti-rollback version of the signed policy (default: one more than the "
        "existing output file's, at least the TPM's policy counter)",
    )
    p.add_argument(
        "--allow-unbound",
        action="store_true",
        help="sign even when this boot's event log shows that the selection leaves the "
        "kernel, the initramfs or the command line unmeasured, or there is no event log "
        "(docs/measured-boot.md)",
    )
    p = polsub.add_parser(
        "install",
        help="Verify a signed policy, copy it to tpm.policy_file (atomically) and raise the "
        "TPM's policy counter to its version: older signed policies stop working at the TPM.",
    )
    p.set_defaults(handler=cmd_install)
    p.add_argument("file", metavar="FILE", help="signed policy file (from `policy sign`)")
    p.add_argument(
        "--owner-auth",
        metavar="FILE",
        help="owner hierarchy auth (from `provision --export-owner-auth`); needed to raise "
        "the policy counter once it is set",
    )


def cmd_keygen(args: argparse.Namespace, cfg: Config) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from recover.core.policy import write_atomic

    for path in (args.private, args.public):
        if Path(path).exists():
            raise UsageError(f"{path} already exists", hint="keys are never overwritten")
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_atomic(args.private, private, mode=0o600)
    try:
        write_atomic(args.public, public, mode=0o644)
    except BaseException:
        Path(args.private).unlink(missing_ok=True)  # no half key pair
        raise
    log.info("wrote %s (keep offline) and %s (set tpm.policy_pubkey)", args.private, args.public)
    return 0


def _read_values(path: str) -> dict[str, dict[int, bytes]]:
    from recover.core.inventory import parse_pcrs

    hint = 'expected JSON {"sha256": {"0": "<64 hex digits>", ...}}'
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"cannot read PCR values from {path}: {e.strerror}") from None
    except ValueError as e:
        raise UsageError(f"{path} is not valid JSON: {e}", hint=hint) from None
    try:
        return parse_pcrs(doc, path)
    except UsageError as e:
        raise UsageError(e.message, hint=hint) from None


def _previous_version(path: str) -> int:
    from recover.store.unseal import load_signed_policy

    if not Path(path).exists():
        return 0
    try:
        return load_signed_policy(path).policy_version
    except PolicyMismatch:
        return 0


def cmd_sign(args: argparse.Namespace, cfg: Config) -> int:
    from recover.core.policy import sign_policy

    selection = args.pcrs or cfg.tpm_pcrs
    output = args.output or cfg.tpm_policy_file
    try:
        private = Path(args.key).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read the signing key {args.key}: {e.strerror}") from None
    from recover.store import binding

    floor, setting = 0, "--pcrs" if args.pcrs else "tpm.pcrs"
    what = f"sign a policy for {setting}"
    if args.values:  # predicted values: the log still says which PCR measures what
        bound = binding.assess(cfg.tpm_event_log, selection, setting=setting)
        binding.require(bound, allow_unbound=args.allow_unbound, what=what)
        values = _read_values(args.values)
    else:
        from recover.tpm import Tpm

        with Tpm.open(cfg.tpm_tcti, timeout=cfg.tpm_timeout) as t:
            bound = binding.assess(cfg.tpm_event_log, selection, t, setting=setting)
            binding.require(bound, allow_unbound=args.allow_unbound, what=what)
            values = t.pcr_read(selection)
            if cfg.tpm_policy_nv in t.nv_indices():
                floor = t.counter_read(cfg.tpm_policy_nv)
    version = args.policy_version
    if version is None:
        version = max(_previous_version(output) + 1, floor, 1)
    if version < 0:
        raise UsageError("--policy-version must be >= 0")
    try:
        signed = sign_policy(
            private, selection, values, cfg.tpm_lock_pcr, version, policy_nv=cfg.tpm_policy_nv
        )
    except (ValueError, TypeError) as e:
        raise UsageError(
            f"cannot sign with {args.key}: {str(e).splitlines()[0]}",
            hint="--key takes the private key PEM written by `host-recover policy keygen`",
        ) from None
    signed.save(output)
    log.info(
        "signed policy v%d for %s (+ lock PCR %d, policy counter <= %d): %s → %s",
        version,
        signed.selection,
        cfg.tpm_lock_pcr,
        version,
        signed.approved_policy.hex(),
        output,
    )
    if os.path.abspath(output) == os.path.abspath(cfg.tpm_policy_file):
        log.info(
            "activate it (and revoke older ones) with `host-recover policy install %s`", output
        )
    return 0


def cmd_install(args: argparse.Namespace, cfg: Config) -> int:
    from recover.store.policyinstall import install_policy

    version, counter = install_policy(cfg, args.file, owner_auth_file=args.owner_auth)
    log.info(
        "installed signed policy v%d at %s; policy counter 0x%08x = %d (older policies revoked)",
        version,
        cfg.tpm_policy_file,
        cfg.tpm_policy_nv,
        counter,
    )
    return 0
