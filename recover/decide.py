"""Evidence → peers → verdict: the decision the boot payload acts on (docs/verdict.md).

``run`` is shared by the boot payload (``serve=True``: this host answers its peers while
it asks them) and by ``host-recover decide`` (a dry run that unseals nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from recover import evidence as evidence_mod
from recover import verdict as verdict_mod
from recover.errors import ConfigError, ExitCode
from recover.evidence import Evidence, Reading
from recover.log import step
from recover.verdict import Kind, Mode, Policy, Verdict

if TYPE_CHECKING:
    from recover.peers import PeerResults

log = logging.getLogger("recover.decide")


@dataclasses.dataclass(frozen=True)
class Decision:
    evidence: Evidence
    peers: PeerResults | None  # None: no peers configured, or not asked (clean, forced)
    verdict: Verdict
    timings: dict[str, float]  # milliseconds per step

    @property
    def peers_unavailable(self) -> bool:
        """Peers are configured, none could be verified, and the verdict is undetermined."""
        return (
            self.peers is not None
            and self.peers.domain_size > 0
            and self.peers.verified == 0
            and self.verdict.kind is Kind.UNDETERMINED
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.to_json(),
            "evidence": self.evidence.to_json(),
            "peers": self.peers.to_json() if self.peers is not None else None,
            "timings_ms": dict(self.timings),
        }


def _need_peers(ev: Evidence, policy: Policy) -> str | None:
    """Why the peers need not be asked, or None when they must be."""
    if policy.mode is not Mode.AUTO:
        return f"boot.mode={policy.mode}"
    if ev.summary is Reading.CLEAN:
        return "the previous shutdown was clean"
    return None


def run(
    cfg: Any,
    tpm: Any,
    *,
    serve: bool,
    pstore_dir: str = evidence_mod.PSTORE_DIR,
    previous: Any = evidence_mod.READ_FROM_TPM,
) -> Decision:
    timings: dict[str, float] = {}
    with step("evidence", timings):
        ev = evidence_mod.gather(tpm, cfg, pstore_dir=pstore_dir, previous=previous)
    log.info("evidence: %s", ev.summary)
    if serve:  # the boot: the next boot must read the hybrid counter afresh
        evidence_mod.rearm_orderly_counter(tpm, cfg.tpm_orderly_nv)
    policy = Policy.from_config(cfg)
    skip = _need_peers(ev, policy)
    peers: PeerResults | None = None
    if skip:
        log.info("not asking peers: %s", skip)
    elif not os.path.exists(cfg.peers_inventory):
        log.info("no peer inventory at %s: this host is alone", cfg.peers_inventory)
    else:
        # Imported only here: a clean boot, or a host alone, never loads the peer stack.
        with step("peer-stack", timings):  # imports (asyncio, cryptography) + inventory
            from recover import agent, inventory
            from recover.peers import TpmAttestor, query_all

            inv = inventory.load(cfg.peers_inventory)
        me = inventory.self_id(cfg)
        domain = inv.domain_peers(me)
        entry = inv.get(me)
        if entry is None:
            log.warning(
                "this host (%s) is not in its own inventory %s: its failure domain is "
                "unknown, so every listed peer counts (peers answer it only if their "
                "inventories list it)",
                me,
                cfg.peers_inventory,
            )
        with step("attestation-key", timings):
            tpm.ensure_ak(cfg.tpm_ak_handle)
        attestor = TpmAttestor(tpm, cfg.tpm_ak_handle, cfg.tpm_pcrs, threading.Lock())

        stop_early = verdict_mod.EarlyStop(ev.summary, ev.since_reset_s, len(domain), policy)

        def ask() -> PeerResults:
            with step("peers", timings):
                return query_all(
                    inv,
                    me,
                    attestor,
                    cfg.peers_deadline,
                    cfg.peers_timeout,
                    cfg.peers_retries,
                    stop_early,
                )

        with contextlib.ExitStack() as stack:
            srv = None
            if serve and domain:
                status = agent.StatusSource(me, entry.failure_domain if entry else "", "boot", ev)
                try:
                    with step("serve-start", timings):
                        srv = stack.enter_context(
                            agent.serve_in_background(cfg, attestor, status, inventory=inv)
                        )
                except ConfigError as e:  # cannot listen: still ask, peers may decide
                    log.warning("not answering peers: %s", e.message)
            peers = ask()
            if srv is not None:
                # Peers that booted later may still be asking us: answer a little longer,
                # until every peer that may ask got its answer (at most one timeout).
                ids = may_still_ask({p.id for p in domain}, peers)
                with step("answer-wait", timings):
                    until = time.monotonic() + cfg.peers_timeout
                    while not ids <= srv.answered and time.monotonic() < until:
                        time.sleep(0.02)
                log.info(
                    "answered %d of %d peers that may ask (%d run their normal OS)",
                    len(ids & srv.answered),
                    len(ids),
                    len(domain) - len(ids),
                )
        log.info(
            "peers: %d of %d verified in %.0f ms%s",
            peers.verified,
            peers.domain_size,
            peers.elapsed_ms,
            " (stopped early)" if peers.stopped_early else "",
        )
    verdict = verdict_mod.decide(ev, peers, policy)
    if peers is not None:
        log.info("decide steps (ms): %s", " ".join(f"{k}={v:g}" for k, v in timings.items()))
    return Decision(ev, peers, verdict, timings)


def may_still_ask(domain_ids: set[str], peers: PeerResults) -> set[str]:
    """The peers of the domain that may still ask this host for its status.

    Only a boot payload asks; ``host-recover agent`` (role ``agent``, the peer's normal
    OS) only answers. A peer whose attested reply says it is an agent is therefore not
    waited for; a peer in its own payload (role ``boot``), and one whose reply was not
    verified (it may be booting still), are.
    """
    from recover.peers import Outcome

    agents = {
        r.peer_id
        for r in peers.results
        if r.outcome is Outcome.VERIFIED and r.status is not None and r.status.role == "agent"
    }
    return domain_ids - agents


def format_text(d: Decision) -> str:
    v = d.verdict
    lines = [f"verdict: {v.kind} → {v.action}"]
    lines += [f"  - {r}" for r in v.reasons]
    lines.append(evidence_mod.format_text(d.evidence))
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


def cmd_decide(args: argparse.Namespace, cfg: Any) -> int:
    """Dry run: exit 0 with the verdict, or 6 when peers are configured, none could be
    verified and the verdict is undetermined (docs/verdict.md)."""
    from recover.tpm import Tpm

    with Tpm.open(cfg.tpm_tcti, timeout=cfg.tpm_timeout) as tpm:
        d = run(cfg, tpm, serve=False)
    if args.json:
        print(json.dumps(d.to_json(), indent=2, sort_keys=True))
    else:
        print(format_text(d))
    if d.peers_unavailable:
        log.error("error: no peer could be verified and the verdict is undetermined")
        log.error("hint: check the peers' agents, the inventory and the network")
        return int(ExitCode.PEERS_UNAVAILABLE)
    return 0
