"""``host-recover agent``: answer peers' attested status queries in the normal OS."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from recover.config import Config

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser("agent", help="Serve this host's attested status to its peers (normal OS).")
    p.set_defaults(handler=cmd_agent)
    p.add_argument("--listen", help="override peers.listen")
    p.add_argument(
        "--role",
        choices=("agent", "boot"),
        default="agent",
        help="the role to claim (default agent). 'boot' stands in for a peer in its boot "
        "payload that has decided (labs, tests; it says asking: false): peers believe it "
        "only while this TPM's lock PCR is at its reset value, i.e. never in a normal OS "
        "whose payload locked",
    )


def cmd_agent(args: argparse.Namespace, cfg: Config) -> int:
    from recover.boot import gather
    from recover.core import inventory
    from recover.peers.attestor import TpmAttestor
    from recover.peers.server import Responder, Server, StatusSource, parse_listen, serve_forever
    from recover.store import inventory as inventory_store
    from recover.tpm import Tpm

    inv = inventory_store.load(cfg)  # baked or signed (docs/inventory.md)
    me = inventory.self_id(cfg)
    entry = inv.get(me)
    host, port = parse_listen(args.listen or cfg.peers_listen)
    # a service started at boot: the device may still be probing (tpm.timeout)
    with Tpm.open(cfg.tpm_tcti, timeout=cfg.tpm_timeout, device_wait=cfg.tpm_timeout) as tpm:
        ev = gather.gather(tpm, cfg)
        tpm.ensure_ak(cfg.tpm_ak_handle)
        attestor = TpmAttestor(tpm, cfg.tpm_ak_handle, cfg.tpm_pcrs, lock_pcr=cfg.tpm_lock_pcr)
        status = StatusSource(me, entry.failure_domain if entry else "", args.role, ev)
        srv = Server(Responder(inv, attestor, status))

        def ready(s: Server) -> None:
            log.info(
                "host-recover agent %s answering on %s:%d as %s (evidence: %s)",
                me,
                host,
                s.port,
                args.role,
                ev.summary,
            )

        with _heartbeat(cfg, attestor, status):
            serve_forever(srv, host, port, ready)
    log.info("agent stopped after %d requests", srv.served)
    return 0


def _heartbeat(cfg: Config, attestor: Any, status: Any) -> Any:
    """With ``witness.endpoints`` set: heartbeat into etcd while the agent serves
    (docs/witness.md); each heartbeat carries this boot's decision record."""
    import contextlib

    if not cfg.witness_endpoints:
        return contextlib.nullcontext()
    import json
    import time
    from pathlib import Path

    from recover.boot.record import RECORD_NAME
    from recover.peers import witness

    if not status.failure_domain:
        from recover.errors import ConfigError

        raise ConfigError(
            f"witness: this host ({status.host_id}) is not in the inventory, so its failure "
            "domain (its key in the witness) is unknown",
            hint="add this host's entry to peers.inventory, or empty witness.endpoints",
        )
    record_path = Path(cfg.boot_state_dir) / RECORD_NAME

    def fields(clock: dict[str, int]) -> dict[str, Any]:
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None
        return {
            **status.build(clock),
            "time": round(time.time(), 3),
            "decision": witness.decision_summary(record),
        }

    hb = witness.Heartbeat(
        witness.EtcdClient(cfg.witness_endpoints, timeout=max(2.0, cfg.witness_deadline)),
        attestor,
        status.host_id,
        status.failure_domain,
        cfg.witness_prefix,
        cfg.witness_interval,
        cfg.witness_ttl_intervals,
        fields,
    )
    log.info(
        "heartbeating to %s every %g s under %s",
        cfg.witness_endpoints,
        cfg.witness_interval,
        hb.key,
    )
    return witness.heartbeat_in_background(hb)
