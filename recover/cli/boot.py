"""``host-recover boot`` (the initramfs payload) and ``host-recover bundle``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recover.config import Config
from recover.errors import HostRecoverError, UsageError

if TYPE_CHECKING:  # the boot entry (recover.cli.entry) runs this module without argparse
    import argparse

log = logging.getLogger(__name__)

#: The boot verb's options: flag → (default, help). Its parser below and the boot entry's
#: own reading of the hooks' command line (recover.cli.entry) both use them.
BOOT_OPTIONS = {
    "--newroot": ("/sysroot", "where to mount the recovery root"),
    "--cmdline": ("/proc/cmdline", "kernel command line file"),
}


def boot_defaults() -> dict[str, Any]:
    """What the ``boot`` verb sets besides its options."""
    return {"handler": cmd_boot, "baked_config": True, "on_config_error": boot_config_error}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "boot",
        help="The initramfs payload: evidence, peers, verdict, unseal, image, credentials.",
    )
    p.set_defaults(**boot_defaults())
    for flag, (default, text) in BOOT_OPTIONS.items():
        p.add_argument(flag, default=default, help=text)
    p = sub.add_parser(
        "bundle", help="Compute the payload's file set for the initramfs (modules + libraries)."
    )
    p.set_defaults(handler=cmd_bundle)
    p.add_argument("--output", metavar="DIR", required=True, help="staging directory")
    p.add_argument(
        "--stdlib",
        choices=("dir", "zip"),
        default="dir",
        help="the standard library as a directory of .pyc (loads faster) or a zip",
    )
    p.add_argument("--json", action="store_true")


def _cmdline(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None


def cmd_boot(args: argparse.Namespace, cfg: Config) -> int:
    from recover.boot.payload import boot

    return boot(cfg, args.newroot, _cmdline(args.cmdline))


def boot_config_error(args: argparse.Namespace, error: HostRecoverError) -> int:
    """The baked-in configuration is broken: still lock, then end as the plan says."""
    from recover.boot.payload import boot_without_config
    from recover.cli.run import overrides

    try:
        cmdline = _cmdline(args.cmdline)
    except UsageError:
        cmdline = ""
    try:
        given = overrides(args)
    except UsageError:
        given = {}
    return boot_without_config(error, args.newroot, cmdline, given)


def cmd_bundle(args: argparse.Namespace, cfg: Config) -> int:
    from recover.bundle import build

    report = build(args.output, stdlib=args.stdlib)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        mib = 1 << 20
        print(f"staging: {report.output}")
        print(
            f"modules: {report.modules} ({report.stdlib_pyc} stdlib .pyc, {report.stdlib_layout},"
        )
        print(f"         {report.site_pyc} package .pyc, {len(report.extensions)} extensions)")
        print(f"libraries: {len(report.libraries)} (DT_NEEDED closure + dlopen'ed)")
        print(
            f"size: stdlib {report.stdlib_bytes / mib:.1f} MiB, packages {report.site_bytes / mib:.1f} "
            f"MiB, ELF {report.elf_bytes / mib:.1f} MiB, total {report.total_bytes / mib:.1f} MiB "
            "(uncompressed; the initramfs delta is measured by python -m bench.initramfs_size)"
        )
    return 0
