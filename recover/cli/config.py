"""``host-recover config``: the effective configuration, or the settings reference."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from recover.config import Config


def register(sub: Any) -> None:
    p = sub.add_parser(
        "config", help="Print the effective configuration, or the settings reference (--docs)."
    )
    p.set_defaults(handler=cmd_config)
    p.add_argument("--docs", action="store_true")
    p.add_argument("--json", action="store_true")


def cmd_config(args: argparse.Namespace, cfg: Config) -> int:
    from recover.cli import docs

    if args.docs:
        sys.stdout.write(docs.render_config_docs())
    elif args.json:
        print(json.dumps(cfg.as_dict(), indent=2, default=str))
    else:
        for name, value in cfg.as_dict().items():
            print(f"{name} = {hex(value) if name.endswith(('_handle', '_nv')) else value}")
    return 0
