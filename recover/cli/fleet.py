"""``host-recover fleet status``: every host of a failure domain as the witness (etcd)
sees it: last seen, alive or not, the last decision, its kind and reasons
(docs/witness.md)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from recover.config import Config


def register(sub: Any) -> None:
    p = sub.add_parser("fleet", help="The fleet as the witness (etcd) sees it.")
    fsub = p.add_subparsers(dest="fleet_verb", metavar="VERB", required=True)
    s = fsub.add_parser(
        "status",
        help="Every host of a failure domain: last seen, alive, last decision, reasons.",
    )
    s.set_defaults(handler=cmd_status)
    s.add_argument("--domain", help="the failure domain (default: this host's)")
    s.add_argument("--json", action="store_true", help="machine-readable output")


def hosts_of(
    kvs: dict[str, tuple[bytes, int]], base: str, inventory: Any, domain: str
) -> list[dict[str, Any]]:
    """One row per host found under ``base`` (or listed in the inventory's domain)."""
    from recover.core import witness
    from recover.core.protocol import Rejected

    ids = {k[len(base) :].split("/", 1)[0] for k in kvs if k.startswith(base)}
    listed = {p.id: p for p in inventory if p.failure_domain == domain} if inventory else {}
    rows = []
    for host in sorted(ids | set(listed)):
        kv = kvs.get(base + host)
        alive = (base + host + witness.ALIVE_SUFFIX) in kvs
        row: dict[str, Any] = {
            "host": host,
            "alive": alive,
            "verified": False,
            "problem": None,
            "last_seen_rev": None,
            "last_seen_time": None,
            "summary": None,
            "decision": None,
        }
        peer = listed.get(host)
        if kv is None:
            row["problem"] = "no heartbeat"
        elif peer is None:
            row["problem"] = "not in the inventory: not verified"
        else:
            try:
                hb = witness.verify_record(peer, kv[0], kv[1])
            except Rejected as e:
                row["problem"] = f"{e.outcome}: {e.reason}"
            else:
                row.update(
                    verified=True,
                    last_seen_rev=hb.rev_read,
                    last_seen_time=hb.time,
                    summary=hb.summary,
                    decision=dict(hb.decision) if hb.decision else None,
                )
        rows.append(row)
    return rows


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + "Z"


def cmd_status(args: argparse.Namespace, cfg: Config) -> int:
    import os

    from recover.core import inventory as inv_mod
    from recover.core import witness
    from recover.errors import ConfigError, PeersUnavailable
    from recover.peers.witness import WitnessUnavailable, read_prefix

    if not cfg.witness_endpoints:
        raise ConfigError(
            "witness.endpoints is empty: there is no witness to ask",
            hint="set witness.endpoints (etcd host:port) in host-recover.conf or with --set",
        )
    inventory = inv_mod.load(cfg.peers_inventory) if os.path.exists(cfg.peers_inventory) else None
    domain = args.domain
    if not domain:
        me = inventory.get(inv_mod.self_id(cfg)) if inventory else None
        if me is None:
            raise ConfigError(
                "no --domain given and this host is not in the inventory",
                hint="name the failure domain: host-recover fleet status --domain rack-1",
            )
        domain = me.failure_domain
    try:
        base = witness.domain_prefix(cfg.witness_prefix, domain)
    except ValueError as e:
        raise ConfigError(str(e), hint="a failure domain name has no '/'") from None
    try:
        kvs, revision = read_prefix(cfg.witness_endpoints, base, max(5.0, cfg.witness_deadline))
    except WitnessUnavailable as e:
        raise PeersUnavailable(
            f"witness unreachable: {e}", hint="check witness.endpoints and that etcd runs"
        ) from None
    rows = hosts_of(kvs, base, inventory, domain)
    if args.json:
        json.dump({"domain": domain, "revision": revision, "hosts": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"domain {domain}: {len(rows)} hosts (witness revision {revision})")
    for r in rows:
        d = r["decision"] or {}
        state = "alive" if r["alive"] else "stopped"
        print(
            f"  {r['host']:<20} {state:<8} last seen {_when(r['last_seen_time'])} "
            f"(rev {r['last_seen_rev'] if r['last_seen_rev'] is not None else '-'})  "
            f"decision {d.get('kind') or '-'} → {d.get('action') or '-'}"
        )
        if r["problem"]:
            print(f"      {r['problem']}")
        for reason in d.get("reasons") or ():
            print(f"      {reason}")
    return 0
