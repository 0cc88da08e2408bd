"""What ``host-recover`` does once its arguments are parsed, without argparse: set up
logging, load the configuration, run the verb's handler and report its errors. Shared by
the full command line (recover.cli.main) and the boot entry (recover.cli.entry), so the
two cannot differ in anything after parsing."""

from __future__ import annotations

import logging
import os
import traceback
from typing import Any

from recover.config import Config
from recover.errors import ExitCode, HostRecoverError, UsageError, report
from recover.settings import SETTINGS

log = logging.getLogger("recover")


def overrides(args: Any) -> dict[str, str]:
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
        value = getattr(args, flag_dest(s.cli), None) if s.cli else None
        if value:
            out[s.name] = value
    return out


def flag_dest(flag: str) -> str:
    """The attribute argparse stores a ``--long-flag`` under."""
    return flag.lstrip("-").replace("-", "_")


def load_config(args: Any) -> Config:
    """Defaults ← file ← drop-ins ← environment ← :func:`overrides`. A verb marked
    ``baked_config`` (the boot payload) ignores the environment: init's environment
    comes from the kernel command line, which does not decide trust."""
    from recover import config as config_mod

    baked = getattr(args, "baked_config", False)
    return config_mod.load(args.config, overrides(args), env={} if baked else None)


def run(args: Any) -> int:
    """Run the parsed command ``args`` (an argparse namespace or its equal) to its exit
    code: the one top-level error handler."""
    from recover import log as logsetup

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
