"""``host-recover evidence`` and ``host-recover decide`` (a dry run; docs/verdict.md)."""

from __future__ import annotations

import argparse
import json
import logging
from typing import TYPE_CHECKING, Any

from recover.config import Config
from recover.errors import PeersUnavailable, report

if TYPE_CHECKING:
    from recover.boot.gather import Decision

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser("evidence", help="Show the local evidence about the previous shutdown.")
    p.set_defaults(handler=cmd_evidence)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser(
        "decide",
        help="Dry run: gather evidence, ask the peers and print the verdict with reasons; "
        "unseals nothing.",
    )
    p.set_defaults(handler=cmd_decide)
    p.add_argument("--json", action="store_true")


def cmd_evidence(args: argparse.Namespace, cfg: Config) -> int:
    from recover.boot.gather import gather
    from recover.core.evidence import format_text
    from recover.tpm import Tpm

    with Tpm.open(cfg.tpm_tcti, timeout=cfg.tpm_timeout) as tpm:
        ev = gather(tpm, cfg)
    if args.json:
        print(json.dumps(ev.to_json(), indent=2, sort_keys=True))
    else:
        print(format_text(ev))
    return 0


def format_decision(d: Decision) -> str:
    from recover.core.evidence import format_text

    v = d.verdict
    lines = [f"verdict: {v.kind} → {v.action}"]
    lines += [f"  - {r}" for r in v.reasons]
    lines.append(format_text(d.evidence))
    if d.peers is not None:
        lines.append(
            f"peers: {d.peers.verified}/{d.peers.domain_size} verified in "
            f"{d.peers.elapsed_ms:.0f} ms"
        )
        for r in d.peers.results:
            extra = (
                f" {r.status.summary}, reset {r.status.since_reset_s:.0f} s ago" if r.status else ""
            )
            lines.append(f"  {r.peer_id:<20} {r.outcome:<15}{extra} {r.reason}".rstrip())
    return "\n".join(lines)


def cmd_decide(args: argparse.Namespace, cfg: Config) -> int:
    """Dry run: exit 0 with the verdict, or 6 when peers are configured, none could be
    verified and the verdict is undetermined (docs/verdict.md)."""
    from recover.boot.gather import run
    from recover.tpm import Tpm

    with Tpm.open(cfg.tpm_tcti, timeout=cfg.tpm_timeout) as tpm:
        d = run(cfg, tpm, serve=False)
    if args.json:
        print(json.dumps(d.to_json(), indent=2, sort_keys=True))
    else:
        print(format_decision(d))
    if d.peers_unavailable:
        e = PeersUnavailable(
            "no peer could be verified and the verdict is undetermined",
            hint="check the peers' agents, the inventory and the network",
        )
        report(e, log)
        return int(e.exit_code)
    return 0
