"""The ``host-recover`` command line: one parser, one top-level error handler.

Each verb group is a module of this package with ``register(sub)``: its arguments sit
next to its handler. Handlers take ``(args, cfg)`` and return an exit code; expected
failures raise ``HostRecoverError`` and are reported here (recover.errors.report), and
nowhere else. Handlers import what they need when they run, so that ``--help``,
parsing and the clean boot stay light.
"""

from __future__ import annotations

import argparse
import logging
import os
import traceback
from collections.abc import Sequence

from recover import __version__
from recover.cli import (
    agent,
    boot,
    config,
    credential,
    decision,
    deprovision,
    enrol,
    fleet,
    image,
    inventory,
    policy,
    reseal,
    store,
)
from recover.config import Config
from recover.errors import ExitCode, HostRecoverError, UsageError, epilog, report
from recover.settings import SETTINGS

log = logging.getLogger("recover")


#: Verb groups in the order --help lists them.
GROUPS = (
    store,
    policy,
    image,
    credential,
    decision,
    agent,
    enrol,
    boot,
    config,
    inventory,
    fleet,
    deprovision,
    reseal,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="host-recover",
        description="Early-boot host recovery from a TPM-sealed secure store.",
        epilog=epilog(),
    )
    parser.add_argument("--version", action="version", version=f"host-recover {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="configuration file (default /etc/host-recover/host-recover.conf)",
    )
    for s in SETTINGS:
        if s.cli:
            env = f" (env {s.env})" if s.env else ""
            parser.add_argument(s.cli, metavar=s.key.upper(), help=f"sets {s.name}{env}")
    parser.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a setting, e.g. --set tpm.pcrs=sha256:7",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for group in GROUPS:
        group.register(sub)
    _describe(parser)
    return parser


def _describe(parser: argparse.ArgumentParser) -> None:
    """A verb's --help repeats its one-line help as its description."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                sp = action.choices[choice.dest]
                if sp.description is None:
                    sp.description = choice.help
                _describe(sp)


def overrides(args: argparse.Namespace) -> dict[str, str]:
    """Setting name → raw value from ``--set NAME=VALUE`` and the settings' own flags."""
    out: dict[str, str] = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise UsageError(
                f"--set {item!r}: expected NAME=VALUE", hint="e.g. --set tpm.pcrs=sha256:7"
            )
        out[name.strip()] = value
    for s in SETTINGS:
        value = getattr(args, s.cli.lstrip("-").replace("-", "_"), None) if s.cli else None
        if value:
            out[s.name] = value
    return out


def load_config(args: argparse.Namespace) -> Config:
    """Defaults ← file ← drop-ins ← environment ← :func:`overrides`. A verb marked
    ``baked_config`` (the boot payload) ignores the environment: init's environment
    comes from the kernel command line, which does not decide trust."""
    from recover import config as config_mod

    baked = getattr(args, "baked_config", False)
    return config_mod.load(args.config, overrides(args), env={} if baked else None)


def main(argv: Sequence[str] | None = None) -> int:
    from recover import log as logsetup

    parser = build_parser()
    args = parser.parse_args(argv)
    baked = getattr(args, "baked_config", False)
    if baked:  # libtss2's debug log would print session keys: off, whatever init's env says
        os.environ["TSS2_LOG"] = "all+none"
    logsetup.setup(debug=args.debug, kmsg=baked)
    try:
        try:
            cfg = load_config(args)
        except HostRecoverError as e:
            on_config_error = getattr(args, "on_config_error", None)
            if on_config_error is None:
                raise
            return int(on_config_error(args, e))
        return int(args.handler(args, cfg))
    except HostRecoverError as e:
        report(e, log)
        if args.debug:
            traceback.print_exc()
        return int(e.exit_code)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # noqa: BLE001 - the one top-level handler
        log.error("internal error: %s: %s", type(e).__name__, e)
        if args.debug:
            traceback.print_exc()
        else:
            log.error("hint: run again with --debug for a traceback, and report it")
        return int(ExitCode.INTERNAL)
