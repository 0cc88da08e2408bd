"""``host-recover predict`` and ``reseal``: after an initramfs rebuild or a kernel
update with the same boot path and command line, the next boot's PCR values, and the
same master sealed to them before the reboot (recover.store.reseal)."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from recover.config import Config

log = logging.getLogger(__name__)

_INITRAMFS_HELP = "the rebuilt initramfs the next boot loads (same command line)"
_KERNEL_HELP = (
    "the new kernel the next boot loads, if it changes (an EFI-stub image started by the "
    "firmware, or a file GRUB loads under the same name; not a UKI)"
)


def register(sub: Any) -> None:
    from recover.cli.deprovision import add_owner_auth

    verbs = {}
    for name, handler, text in (
        (
            "predict",
            cmd_predict,
            "Print the PCR values (tpm.pcrs) the next boot will have with a rebuilt "
            "initramfs (and kernel), as JSON for `policy sign --values`.",
        ),
        (
            "reseal",
            cmd_reseal,
            "Seal the same master secret to the PCR values predicted for a rebuilt "
            "initramfs (and kernel), before rebooting into it (tpm.policy = pcr).",
        ),
    ):
        verbs[name] = sub.add_parser(name, help=text)
        verbs[name].set_defaults(handler=handler)
        verbs[name].add_argument("--initramfs", required=True, metavar="FILE", help=_INITRAMFS_HELP)
        verbs[name].add_argument("--kernel", metavar="FILE", help=_KERNEL_HELP)
    p = verbs["reseal"]
    p.add_argument(
        "--master-from",
        required=True,
        metavar="FILE",
        help="this host's master secret (from provision --export-master)",
    )
    add_owner_auth(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def cmd_predict(args: argparse.Namespace, cfg: Config) -> int:
    from recover.store import reseal

    print(
        json.dumps(reseal.values_json(reseal.predict(cfg, args.initramfs, args.kernel)), indent=2)
    )
    return 0


def cmd_reseal(args: argparse.Namespace, cfg: Config) -> int:
    from recover.store import reseal

    report = reseal.reseal(
        cfg,
        initramfs=args.initramfs,
        master_from=args.master_from,
        owner_auth=args.owner_auth,
        kernel=args.kernel,
    )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    pcrs = ", ".join(f"{b}:{','.join(p)}" for b, p in report["pcrs"].items())
    files = report["initramfs"] + (f" and {report['kernel']}" if report["kernel"] else "")
    log.info("re-sealed %s to the PCR values predicted for %s (%s): reboot into it",
             report["sealed"], files, pcrs)  # fmt: skip
    return 0
