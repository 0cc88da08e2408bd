"""The ``host-recover`` command line: one parser for every verb.

Each verb group is a module of this package with ``register(sub)``: its arguments sit
next to its handler. Handlers take ``(args, cfg)`` and return an exit code; expected
failures raise ``HostRecoverError`` and are reported by the one top-level handler,
recover.cli.run (recover.errors.report), and nowhere else. Handlers import what they
need when they run, so that ``--help`` and parsing stay light. The boot verb as the
hooks run it is read without this parser (recover.cli.entry), to the same namespace.
"""

from __future__ import annotations

import argparse
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
from recover.cli.run import load_config, overrides, run
from recover.errors import epilog
from recover.settings import SETTINGS

__all__ = ["build_parser", "load_config", "main", "overrides"]


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


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
