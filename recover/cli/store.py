"""Secure-store verbs: ``provision``, ``status``, ``unseal --check``, ``attest``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from recover.config import Config
from recover.errors import HostRecoverError, PolicyMismatch, TpmUnavailable, report

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "provision",
        help="Create the storage key, seal a master secret to the PCR policy, create the "
        "attestation key and NV counters. Idempotent.",
    )
    p.set_defaults(handler=cmd_provision)
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing sealed secret (old images become unreadable)",
    )
    p.add_argument(
        "--export-image-key",
        metavar="FILE",
        help="write the image key (derived from the new master secret) to FILE, "
        "mode 0600, for the image factory; only when a secret is created",
    )
    p.add_argument(
        "--export-master",
        metavar="FILE",
        help="write the master secret itself to FILE (mode 0600); only when a secret is created",
    )
    p.add_argument(
        "--master-from",
        metavar="FILE",
        help="seal this 32-byte master secret instead of a fresh random one "
        "(fleet images shared by hosts)",
    )
    p.add_argument(
        "--owner-auth",
        metavar="FILE",
        help="the owner hierarchy auth (from --export-owner-auth); needed for --force, "
        "migrations and any change once it is set",
    )
    p.add_argument(
        "--export-owner-auth",
        metavar="FILE",
        help="set a new random owner hierarchy auth and write it to FILE (mode 0600) before "
        "the TPM changes; keep it offline like the master (recommended; a TPM whose owner "
        "auth is empty needs this or --no-owner-auth)",
    )
    p.add_argument(
        "--no-owner-auth",
        action="store_true",
        help="provision a TPM whose owner auth is empty without setting one: the counters "
        "(policy, image and credential floors) and the NV indices stay unprotected "
        "against root (test labs); no effect once an owner auth is set",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_allow_unbound(p)

    p = sub.add_parser(
        "status",
        help="Report TPM reachability, orderly bit, lockout counter, handles and whether "
        "the current PCRs satisfy the sealed policy.",
        description="Exit code: 0 the sealed secret can be unsealed on a boot like this one "
        "(the policy's PCRs match; the lock PCR, which the payload extends on every boot, is "
        "reported, not counted); 3 the TPM is unreachable or holds no sealed secret; 4 the "
        "PCRs (or the signed policy) do not satisfy the sealed policy.",
    )
    p.set_defaults(handler=cmd_status)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "unseal", help="Check that the sealed secret can be unsealed now (never prints it)."
    )
    p.set_defaults(handler=cmd_unseal)
    p.add_argument(
        "--check",
        action="store_true",
        required=True,
        help="only check; exit 0 if it unseals, 4 on policy mismatch",
    )

    p = sub.add_parser(
        "attest", help="Print this host's inventory entry (id, AK public key, PCR values)."
    )
    p.set_defaults(handler=cmd_attest)
    p.add_argument("--address", default="", help="address peers reach this host at")
    p.add_argument("--failure-domain", default="", help="failure domain of this host")


def _add_allow_unbound(p: Any) -> None:
    p.add_argument(
        "--allow-unbound",
        action="store_true",
        help="seal even when the event log shows that tpm.pcrs leaves the kernel, the "
        "initramfs or the command line unmeasured, or there is no event log (a boot path "
        "without measurements, a test TPM); docs/measured-boot.md",
    )


def cmd_provision(args: argparse.Namespace, cfg: Config) -> int:
    from recover.config import dropin_dir
    from recover.store.provision import provision

    report = provision(
        cfg,
        force=args.force,
        export_image_key=args.export_image_key,
        export_master=args.export_master,
        master_from=args.master_from,
        owner_auth=args.owner_auth,
        export_owner_auth=args.export_owner_auth,
        no_owner_auth=args.no_owner_auth,
        pin_dir=dropin_dir(args.config),
        allow_unbound=args.allow_unbound,
    )
    exported = report.pop("exported")
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
            "".join(f"; wrote {p}" for p in exported),
        )
        if report.get("pinned"):
            log.info(
                "pinned the provisioned objects in %s: rebuild the initramfs to bake it in",
                report["pinned"],
            )
    return 0


def cmd_status(args: argparse.Namespace, cfg: Config) -> int:
    from recover.store.provision import status

    doc = status(cfg)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print_status(doc)
    e = status_error(doc)
    if e is not None:
        report(e, log)
        return int(e.exit_code)
    return 0


def status_error(doc: dict[str, Any]) -> HostRecoverError | None:
    """Why the status document says the sealed secret cannot be unsealed (None: it can, on
    a boot like this one): the exit code of ``status``."""
    if not doc["tpm"]["reachable"]:
        return TpmUnavailable(
            doc["tpm"].get("error", "the TPM is unreachable"), doc["tpm"].get("hint")
        )
    sealed = doc["sealed"]
    if not sealed["present"]:
        return TpmUnavailable(
            f"no sealed secret at {sealed['handle']}", hint="run `host-recover provision`"
        )
    if not sealed.get("pcrs_match"):
        return PolicyMismatch(
            "the sealed secret cannot be unsealed: "
            + (sealed.get("reason") or "the PCRs do not satisfy the sealed policy"),
            hint="re-seal for this boot chain (`host-recover provision --force`) or, with a "
            "signed policy, sign and install one for it (`policy sign`, `policy install`)",
        )
    return None


def _print_status(doc: dict[str, Any]) -> None:
    out = sys.stdout
    tpm = doc["tpm"]
    if not tpm["reachable"]:
        print(f"tpm:        unreachable via {tpm['tcti']} ({tpm.get('error', '')})", file=out)
        return
    sealed = doc["sealed"]
    verdict = {True: "yes", False: "NO", None: "unknown"}[sealed.get("satisfied")]
    if sealed.get("pcrs_match") and sealed.get("lock_pcr_extended"):
        verdict = "at boot, not now"  # the payload extended the lock PCR, as on every boot
    lines = [
        f"tpm:        {tpm['tcti']}",
        f"orderly:    {'yes' if doc['orderly'] else 'NO (previous power cycle was not shut down)'}",
        f"lockout:    {doc['lockout']['counter']}/{doc['lockout']['max_tries']} failures",
        f"handles:    {' '.join(doc['handles']['persistent']) or '-'}",
        f"nv:         {' '.join(doc['handles']['nv']) or '-'}",
        f"sealed:     {sealed['handle']} {'present' if sealed['present'] else 'MISSING'}"
        + (
            f", {sealed.get('policy')} policy over {sealed.get('selection')}"
            if sealed["present"]
            else ""
        ),
        f"unsealable: {verdict}" + (f" ({sealed['reason']})" if sealed.get("reason") else ""),
        "rollback:   "
        + (str(doc["rollback_counter"]) if doc["rollback_counter"] is not None else "not defined"),
        "credentials floor: "
        + (
            str(doc["credentials_floor"])
            if doc["credentials_floor"] is not None
            else "not set (`credential add|remove` sets it)"
        ),
        "owner auth: "
        + ("set" if doc["owner_auth_set"] else "EMPTY (provision --export-owner-auth FILE)"),
        "pins:       " + ", ".join(f"{k} {v}" for k, v in doc["pins"].items()),
        "evidence:   "
        + ", ".join(f"{k} {v}" for k, v in doc["evidence_write_policy"].items())
        + " (write policy: the boot payload before its lock)",
    ]
    if b := doc.get("binding"):  # which selected PCR binds what (docs/measured-boot.md)
        names = {"kernel": "kernel", "initrd": "initramfs", "cmdline": "command line"}
        pcrs = [f"{n} {'/'.join(map(str, b['selected'][k])) or '-'}" for k, n in names.items()]
        blocking = [p["message"] for p in b["problems"] if p["component"] in names]
        lines.append(f"binding:    {b['boot_path']}: {', '.join(pcrs)}"
                     + ("" if b["bound"] else f" (NOT BOUND: {blocking[0]})"))  # fmt: skip
    print("\n".join(lines), file=out)


def cmd_unseal(args: argparse.Namespace, cfg: Config) -> int:
    from recover.store.unseal import unseal_master

    secret = unseal_master(cfg)
    log.info("unseal check: ok (%d-byte secret; not shown)", len(secret))
    return 0


def own_entry(cfg: Config, args: argparse.Namespace, ak_pub: bytes, pcrs: Any) -> dict[str, Any]:
    """This host's inventory entry (``attest``, ``enrol request``)."""
    from recover.core.inventory import pcrs_to_json, self_id

    return {
        "id": self_id(cfg),
        "address": args.address,
        "failure_domain": args.failure_domain,
        "ak_pub": ak_pub.decode(),
        "pcrs": pcrs_to_json(pcrs),
        "lock_pcr": cfg.tpm_lock_pcr,
    }


def cmd_attest(args: argparse.Namespace, cfg: Config) -> int:
    from recover.store.unseal import open_tpm

    with open_tpm(cfg) as t:
        ak_pub = t.ak_public(cfg.tpm_ak_handle)
        pcrs = t.pcr_read(cfg.tpm_pcrs)
    print(json.dumps(own_entry(cfg, args, ak_pub, pcrs), indent=2))
    return 0
