"""``host-recover deprovision``: remove what ``provision`` put into the TPM (sealed
object, attestation and storage keys, NV indices, owner auth) and its pins. Without
``--yes-destroy-tpm-objects`` it lists what it would remove and changes nothing."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from recover.config import Config
from recover.errors import UsageError

log = logging.getLogger(__name__)

CONFIRM = "--yes-destroy-tpm-objects"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "deprovision",
        help="Remove what provision put into the TPM (sealed secret, keys, NV indices, "
        f"owner auth) and its pins; lists them and changes nothing without {CONFIRM}.",
    )
    p.set_defaults(handler=cmd_deprovision)
    p.add_argument(
        CONFIRM,
        dest="confirm",
        action="store_true",
        help="really remove them: the recovery image and credential store of this host "
        "can then never be opened with this TPM again",
    )
    add_owner_auth(p)
    p.add_argument(
        "--keep-owner-auth",
        action="store_true",
        help="leave the owner hierarchy auth as it is (default: back to empty)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")


def add_owner_auth(p: Any) -> None:
    """--owner-auth FILE of the verbs that change owner-authorised TPM objects."""
    p.add_argument(
        "--owner-auth",
        metavar="FILE",
        help="the owner hierarchy auth (from provision --export-owner-auth); needed when set",
    )


def cmd_deprovision(args: argparse.Namespace, cfg: Config) -> int:
    from recover.config import dropin_dir
    from recover.store import deprovision as dp

    if not args.confirm:
        found = dp.plan(cfg)
        what = [*found["persistent"], *found["nv"]]
        if found["owner_auth_set"] and not args.keep_owner_auth:
            what.append("the owner hierarchy auth")
        raise UsageError(
            "deprovision would remove: " + (", ".join(what) or "nothing (not provisioned)"),
            hint=f"add {CONFIRM} to remove them (irreversible: this host's images and "
            "credentials then stay closed for this TPM)",
        )
    report = dp.deprovision(
        cfg,
        owner_auth=args.owner_auth,
        keep_owner_auth=args.keep_owner_auth,
        pin_dir=dropin_dir(args.config),
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        removed = [*report["persistent"], *report["nv"]]
        log.info(
            "deprovisioned: removed %s%s%s",
            ", ".join(removed) or "nothing (not provisioned)",
            "; owner auth cleared" if report["owner_auth_cleared"] else "",
            f"; removed {report['pins_removed']}" if report["pins_removed"] else "",
        )
    return 0
