"""The entry of ``host-recover``: ``python -m recover``, the console script and the
initramfs's /usr/bin/host-recover.

The dracut hooks run ``host-recover boot --newroot DIR`` on every boot. Building the
whole command line for it (argparse, then every verb group's parser) took a sixth of the
clean boot's time to its first TPM command (docs/performance.md, cold start), for one
verb with two options. So the boot verb's plain form is read here, without argparse:

    [--config FILE] [--debug] boot [--newroot DIR] [--cmdline FILE]

Each option at most once, as ``--opt VALUE`` or ``--opt=VALUE``, with a value that is
not empty and does not start with ``-``. Any other command line (``--help``, ``--set``,
an abbreviation, another verb, a mistake) goes to the full parser, recover.cli.main,
which accepts or rejects it as always. After parsing, both run the same code
(recover.cli.run). tests/unit/test_entry.py checks that the namespace built here equals
the full parser's for every command line this accepts, and that this declines the rest.

Before anything else, the entry imports dataclasses with ``inspect`` deferred
(recover.deferred): dataclasses calls it only for a class without a docstring, and
loading it is about 5 ms of the clean boot's cold start.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from types import SimpleNamespace

#: The global options read here (the full parser declares them in recover.cli.main).
_GLOBAL = {"--config": None, "--debug": False}
_VERB = "boot"


def parse_boot(argv: Sequence[str]) -> SimpleNamespace | None:
    """The namespace of the boot verb's plain command line, or None for the full parser."""
    from recover.cli import boot

    given: dict[str, str | bool | None] = dict(_GLOBAL)
    options: dict[str, str | bool | None] = {k: d for k, (d, _) in boot.BOOT_OPTIONS.items()}
    seen: set[str] = set()
    verb = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == _VERB and not verb:
            verb = True
            continue
        flag, eq, value = arg.partition("=")
        table = options if verb else given
        if flag not in table or flag in seen:
            return None
        seen.add(flag)
        if isinstance(table[flag], bool):  # a switch: no value
            if eq:
                return None
            table[flag] = True
            continue
        if not eq:
            if i == len(argv):
                return None
            value = argv[i]
            i += 1
        if not value or value.startswith("-"):
            return None
        table[flag] = value
    if not verb:
        return None
    return SimpleNamespace(**_namespace(given, options, boot.boot_defaults()))


def _namespace(
    given: dict[str, str | bool | None],
    options: dict[str, str | bool | None],
    defaults: dict[str, object],
) -> dict[str, object]:
    from recover.cli.run import flag_dest
    from recover.settings import SETTINGS

    ns: dict[str, object] = {flag_dest(f): v for f, v in given.items()}
    ns["set"] = []
    ns.update((flag_dest(s.cli), None) for s in SETTINGS if s.cli)
    ns["verb"] = _VERB
    ns.update((flag_dest(f), v) for f, v in options.items())
    ns.update(defaults)
    return ns


def _import_dataclasses() -> None:
    """dataclasses, with inspect loaded on its first use, and with the bundle's compiled
    code of the methods it writes when there is one (recover.dataclasscode); nothing to
    do when dataclasses is loaded already (the tests, a program that embeds the CLI)."""
    if "dataclasses" in sys.modules:
        return
    import os

    import recover
    from recover import dataclasscode, deferred

    with deferred.importing(deferred.DATACLASSES):
        import dataclasses  # noqa: F401
    dataclasscode.install(os.path.join(os.path.dirname(recover.__file__), dataclasscode.FILE))


def main(argv: Sequence[str] | None = None) -> int:
    _import_dataclasses()
    args = list(sys.argv[1:] if argv is None else argv)
    parsed = parse_boot(args)
    if parsed is None:
        from recover.cli.main import main as full

        return full(args)
    from recover.cli.run import run

    return run(parsed)
