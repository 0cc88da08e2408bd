"""Gather: evidence → peers → verdict, the decision the boot payload acts on
(docs/verdict.md). Shared by the boot payload (``serve=True``: this host answers its
peers while it asks them) and by ``host-recover decide`` (a dry run that unseals nothing).

The evidence signals are read here from the TPM and the platform; their records and
interpretation are pure (recover.core.evidence).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recover.core import evidence
from recover.core import verdict as verdict_mod
from recover.core.evidence import (
    PSTORE_DIR,
    Evidence,
    Reading,
    Signal,
    Strength,
    _unknown,
    clock_fields,
    parse_previous,
    previous_record,
    since_reset,
)
from recover.core.verdict import Kind, Mode, Policy, Verdict
from recover.errors import ConfigError, HostRecoverError
from recover.log import step

if TYPE_CHECKING:
    from recover.config import Config
    from recover.core.protocol import PeerResults
    from recover.tpm import Tpm


READ_FROM_TPM = object()  # gather(previous=...) default: read the record from TPM NV


def orderly_bit(tpm: Tpm) -> Signal:
    name = "orderly_bit"
    try:
        orderly = bool(tpm.orderly())
    except HostRecoverError as e:
        return _unknown(name, Strength.STRONG, e)
    if orderly:
        return Signal(name, True, Reading.CLEAN, Strength.STRONG, "TPM2_Shutdown preceded boot")
    return Signal(
        name,
        False,
        Reading.ABNORMAL,
        Strength.STRONG,
        "TPMA_STARTUP_CLEAR.orderly is 0: no TPM2_Shutdown before this boot",
    )


def orderly_counter(tpm: Tpm, index: int) -> Signal:
    name = "orderly_counter"
    try:
        value = int(tpm.counter_read(index))
    except HostRecoverError as e:
        return _unknown(name, Strength.STRONG, e)
    low = value & 0xFF
    if value == 0:
        return Signal(
            name, value, Reading.UNKNOWN, Strength.STRONG, f"counter {index:#x} never incremented"
        )
    if low == 0xFF:
        return Signal(
            name,
            value,
            Reading.ABNORMAL,
            Strength.STRONG,
            f"hybrid counter {index:#x} low byte is 0xff: non-orderly startup",
        )
    return Signal(
        name, value, Reading.CLEAN, Strength.STRONG, f"hybrid counter low byte {low:#04x}"
    )


def lockout_change(tpm: Tpm, previous: dict[str, Any] | None) -> Signal:
    name = "lockout_counter"
    try:
        counter = int(tpm.lockout()["counter"])
    except (HostRecoverError, KeyError, TypeError, ValueError) as e:
        return _unknown(name, Strength.WEAK, e)
    before = (previous or {}).get("lockout")
    if not isinstance(before, int):
        return Signal(name, counter, Reading.UNKNOWN, Strength.WEAK, "no previous value to compare")
    if counter > before:
        return Signal(
            name,
            counter,
            Reading.ABNORMAL,
            Strength.WEAK,
            f"lockout counter rose {before} → {counter} (non-orderly shutdown after DA auth)",
        )
    return Signal(name, counter, Reading.CLEAN, Strength.WEAK, f"lockout counter {counter}")


def pstore(pstore_dir: str) -> Signal:
    name = "pstore"
    try:
        entries = sorted(p.name for p in Path(pstore_dir).iterdir() if p.is_file())
    except OSError as e:
        return Signal(
            name,
            None,
            Reading.UNKNOWN,
            Strength.STRONG,
            f"{pstore_dir} unreadable: {e.strerror or e}",
        )
    crashes = [n for n in entries if n.startswith("dmesg-")]
    if crashes:
        return Signal(
            name,
            crashes,
            Reading.ABNORMAL,
            Strength.STRONG,
            f"kernel crash records in {pstore_dir}: {', '.join(crashes[:5])}",
        )
    # No crash record does not prove a clean shutdown (power loss leaves none).
    return Signal(name, entries, Reading.UNKNOWN, Strength.WEAK, "no crash records")


def rearm_orderly_counter(tpm: Tpm, cfg: Config) -> bool:
    """Increment the hybrid counter when it was never written (a fresh or migrated
    index: only written does it turn to 0x..ff after a non-orderly startup) or reads
    0x..ff (so that the next boot reads the signal afresh). Only the boot payload can,
    before its lock (the index's write policy); call once per boot, after :func:`gather`."""
    from recover.core.policy import WriteLock

    index = cfg.tpm_orderly_nv
    try:
        if index not in tpm.nv_indices():
            return False
        if not tpm.nv_written(index) or tpm.counter_read(index) & 0xFF == 0xFF:
            tpm.counter_increment(index, lock=WriteLock.of(cfg.tpm_pcrs, cfg.tpm_lock_pcr))
            return True
    except HostRecoverError as e:
        log.warning("could not re-arm the orderly counter %#x: %s", index, e.message)
    return False


def gather(
    tpm: Tpm,
    cfg: Config,
    *,
    pstore_dir: str = PSTORE_DIR,
    previous: Any = READ_FROM_TPM,
) -> Evidence:
    """Read every signal; ``previous`` is the previous decision record (bytes or None),
    read from ``cfg.tpm_record_nv`` when not given."""
    if previous is READ_FROM_TPM:
        try:
            previous = tpm.nv_blob_read(cfg.tpm_record_nv)
        except HostRecoverError as e:
            log.debug("previous decision record unreadable: %s", e)
            previous = None
    prev = parse_previous(previous)
    bit = orderly_bit(tpm)
    signals = (
        bit,
        orderly_counter(tpm, cfg.tpm_orderly_nv),
        pstore(pstore_dir),
        lockout_change(tpm, prev),
        previous_record(previous, bit.value if bit.reading is not Reading.UNKNOWN else None),
    )
    try:
        clock: dict[str, Any] | None = clock_fields(tpm.clock())
    except HostRecoverError as e:
        log.debug("TPM clock unreadable: %s", e)
        clock = None
    return Evidence(signals, clock, since_reset(clock)[0], time.time())


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
            "timeline_ms": dict(self.timings),  # the name the decision record uses
        }


def _need_peers(ev: Evidence, policy: Policy) -> str | None:
    """Why the peers need not be asked, or None when they must be."""
    if policy.mode is not Mode.AUTO:
        return f"boot.mode={policy.mode}"
    if ev.summary is Reading.CLEAN:
        return "the previous shutdown was clean"
    return None


def run(
    cfg: Config,
    tpm: Tpm,
    *,
    serve: bool,
    pstore_dir: str = evidence.PSTORE_DIR,
    previous: Any = READ_FROM_TPM,
) -> Decision:
    timings: dict[str, float] = {}
    with step("evidence", timings):
        ev = gather(tpm, cfg, pstore_dir=pstore_dir, previous=previous)
    log.info("evidence: %s", ev.summary)
    if serve:  # the boot: the next boot must read the hybrid counter afresh
        rearm_orderly_counter(tpm, cfg)
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
            from recover.core import inventory
            from recover.peers import server
            from recover.peers.attestor import TpmAttestor
            from recover.peers.client import query_all

            inv = inventory.load(cfg.peers_inventory)
        if serve and not cfg.peers_host_id:
            # The host name can come from the kernel command line or DHCP: at boot the
            # id peers know this host by must come from the measured configuration.
            raise ConfigError(
                "peers.host_id is not set, and at boot the host name cannot be trusted",
                hint="set peers.host_id in host-recover.conf (the id in the inventory)",
            )
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
        attestor = TpmAttestor(
            tpm, cfg.tpm_ak_handle, cfg.tpm_pcrs, threading.Lock(), lock_pcr=cfg.tpm_lock_pcr
        )

        stop_early = verdict_mod.EarlyStop(ev.summary, ev.since_reset_s, len(domain), policy)

        def ask() -> PeerResults:
            if serve and domain and cfg.peers_network_wait > 0:
                from recover.boot.network import wait_for_routes

                with step("network-wait", timings):  # dracut's ip=: docs/boot.md#network
                    wait_for_routes((p.host for p in domain), cfg.peers_network_wait)
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
                status = server.StatusSource(me, entry.failure_domain if entry else "", "boot", ev)
                try:
                    with step("serve-start", timings):
                        srv = stack.enter_context(
                            server.serve_in_background(cfg, attestor, status, inventory=inv)
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
    from recover.core.protocol import Outcome

    agents = {
        r.peer_id
        for r in peers.results
        if r.outcome is Outcome.VERIFIED and r.status is not None and r.status.role == "agent"
    }
    return domain_ids - agents
