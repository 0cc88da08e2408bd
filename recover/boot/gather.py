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
from collections.abc import Callable, Mapping
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
from recover.store import inventory as inventory_store

if TYPE_CHECKING:
    from recover.config import Config
    from recover.core.inventory import Inventory
    from recover.core.protocol import PeerResult, PeerResults
    from recover.peers.rounds import Session
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


BOOT_RESERVE = 60.0  # seconds of boot.timeout kept for unseal, image and lock after the wait


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the evidence and peer stage decided: the evidence, the peers' answers, the
    verdict and the step timings."""

    evidence: Evidence
    peers: PeerResults | None  # None: no peers configured, or not asked (clean, forced)
    verdict: Verdict
    timings: dict[str, float]  # milliseconds per step
    inventory_version: int | None = None  # the signed inventory used (docs/inventory.md)
    witness: dict[str, Any] | None = None  # the witness's view (docs/witness.md), if read

    @property
    def convergence(self) -> verdict_mod.Convergence | None:
        """How long the payload waited for its peers, in how many rounds, and why it
        stopped (also in the verdict's JSON)."""
        return self.verdict.convergence

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
            "witness": self.witness,
        }


def _need_peers(ev: Evidence, policy: Policy) -> str | None:
    """Why the peers need not be asked, or None when they must be."""
    if policy.mode is not Mode.AUTO:
        return f"boot.mode={policy.mode}"
    if ev.summary is Reading.CLEAN:
        return "the previous shutdown was clean"
    return None


def peer_wait(cfg: Config, policy: Policy, serve: bool) -> float:
    """Seconds the payload keeps asking silent peers: ``verdict.wait``, capped so that
    the payload still ends within ``boot.timeout``; a dry run (``decide``) asks once."""
    if not serve:
        return 0.0
    return max(0.0, min(policy.wait, cfg.boot_timeout - BOOT_RESERVE))


def run(
    cfg: Config,
    tpm: Tpm,
    *,
    serve: bool,
    pstore_dir: str = evidence.PSTORE_DIR,
    previous: Any = READ_FROM_TPM,
    prepare: Callable[[], None] | None = None,
) -> Decision:
    """``prepare`` is called once the evidence says the shutdown was not clean: a
    recovery is possible, and what it will need can get ready while the peers answer
    (the payload: recover.boot.preload). It must give nobody a secret."""
    timings: dict[str, float] = {}
    with step("evidence", timings):
        ev = gather(tpm, cfg, pstore_dir=pstore_dir, previous=previous)
    read_at = time.monotonic()
    log.info("evidence: %s", ev.summary)
    if prepare is not None and ev.summary is not Reading.CLEAN:
        prepare()
    if serve:  # the boot: the next boot must read the hybrid counter afresh
        rearm_orderly_counter(tpm, cfg)
    policy = Policy.from_config(cfg)
    skip = _need_peers(ev, policy)
    peers: PeerResults | None = None
    witness: WitnessRead | None = None
    conv: verdict_mod.Convergence | None = None
    if skip:
        log.info("not asking peers: %s", skip)
    elif not inventory_store.configured(cfg):
        log.info("no peer inventory at %s: this host is alone", cfg.peers_inventory)
    else:
        # Imported only here: a clean boot, or a host alone, never loads the peer stack.
        with step("peer-stack", timings):  # imports (asyncio, cryptography) + inventory
            from recover.core import inventory
            from recover.peers import server
            from recover.peers.attestor import TpmAttestor
            from recover.peers.rounds import Session

            inv = _load_inventory(cfg, ev, serve)
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
                inventory_store.where(cfg),
            )
        with step("attestation-key", timings):
            ak_pem = tpm.ensure_ak(cfg.tpm_ak_handle)
        attestor = TpmAttestor(
            tpm, cfg.tpm_ak_handle, cfg.tpm_pcrs, threading.Lock(), lock_pcr=cfg.tpm_lock_pcr
        )

        sample = verdict_mod.sample_size(len(domain), policy)
        judge = verdict_mod.Judge(
            ev.summary, ev.since_reset_s, verdict_mod.Rule.of(len(domain), policy, sample), policy
        )
        wait = peer_wait(cfg, policy, serve)
        if sample is not None:
            log.info("asking a random sample of %d of %d peers", sample, len(domain))
        if cfg.witness_endpoints and domain:
            # This host's own last heartbeat is verified with its AK and the PCRs of this
            # boot when its inventory does not list it (docs/witness.md).
            own_pcrs = None
            if entry is None:
                try:
                    own_pcrs = tpm.pcr_read(cfg.tpm_pcrs)
                except HostRecoverError as e:  # the witness is optional: no anchor then
                    log.warning("witness: cannot read this boot's PCRs: %s", e.message)
            witness = WitnessRead(cfg, inv, me, ak_pem, own_pcrs, _previous_boot(ev))
            judge.witness = witness.peek

        def ask(session: Session) -> tuple[PeerResults, verdict_mod.Convergence]:
            if serve and domain and cfg.peers_network_wait > 0:
                from recover.boot.network import wait_for_routes

                with step("network-wait", timings):  # dracut's ip=: docs/boot.md#network
                    wait_for_routes((p.host for p in domain), cfg.peers_network_wait)
            with step("peers", timings):
                return session.converge(
                    inv,
                    me,
                    attestor,
                    judge,
                    deadline=cfg.peers_deadline,
                    timeout=cfg.peers_timeout,
                    retries=cfg.peers_retries,
                    wait=wait,
                    origin=read_at,
                    sample=sample,
                )

        with contextlib.ExitStack() as stack:
            srv = None
            decided = threading.Event()
            if serve and domain:
                status = server.StatusSource(
                    me, entry.failure_domain if entry else "", "boot", ev, decided=decided
                )
                try:
                    with step("serve-start", timings):
                        srv = stack.enter_context(
                            server.serve_in_background(cfg, attestor, status, inventory=inv)
                        )
                except ConfigError as e:  # cannot listen: still ask, peers may decide
                    log.warning("not answering peers: %s", e.message)
            # The queries still out when the verdict settles keep running through the
            # answer wait (closed before the server stops: the stack unwinds in order).
            session = stack.enter_context(Session(keep_late=srv is not None))
            asked_at = time.monotonic()
            peers, conv = ask(session)
            decided.set()  # from now on our replies say we will not ask again
            if srv is not None:
                with step("answer-wait", timings):
                    ids = may_still_ask({p.id for p in domain}, peers)
                    booting = in_payload(peers) & ids
                    answer_wait(
                        srv, ids, booting, len(domain) - len(ids), cfg, asked_at + wait, session
                    )
                with step("serve-stop", timings):  # the server closed, its TPM work done
                    stack.close()
        log.info(
            "peers: %d of %d verified in %.0f ms, %d round%s (%s)",
            peers.verified,
            peers.domain_size,
            peers.elapsed_ms,
            conv.rounds,
            "" if conv.rounds == 1 else "s",
            conv.stopped,
        )
    view = witness() if witness is not None else None
    classes = view.classes if view is not None and not view.error else None
    verdict = verdict_mod.decide(ev, peers, policy, classes, convergence=conv)
    if peers is not None:
        log.info("decide steps (ms): %s", " ".join(f"{k}={v:g}" for k, v in timings.items()))
    return Decision(
        ev,
        peers,
        verdict,
        timings,
        inv.version if peers is not None else None,
        view.to_json() if view is not None else None,
    )


def _load_inventory(cfg: Config, ev: Evidence, at_boot: bool) -> Inventory:
    """The configured inventory (recover.store.inventory). At boot the signed one comes
    from the store partition, refused below the newest version the TPM record says this
    host accepted; a refusal keeps the evidence, so the record keeps that floor."""
    path = None
    if at_boot and inventory_store.signed(cfg) and cfg.store_device:
        from recover.boot import rootfs

        rootfs.mount_store(cfg)
        path = rootfs.store_dir(cfg) / os.path.basename(cfg.inventory_file)
    try:
        return inventory_store.load(cfg, last_seen=evidence.inventory_seen(ev.to_json()), path=path)
    except HostRecoverError as e:
        e.evidence = ev  # type: ignore[attr-defined]  # recover.boot.payload records it
        raise


def _previous_boot(ev: Evidence) -> str | None:
    """The boot id prefix in the previous boot's TPM decision record, if any."""
    for s in ev.signals:
        if s.name == "previous_decision" and isinstance(s.value, dict):
            boot = s.value.get("boot")
            return boot if isinstance(boot, str) and boot else None
    return None


class WitnessRead:
    """The witness (etcd) read in a thread while the peers are asked (docs/witness.md):
    ``peek()`` its classes once read, without waiting; calling it waits at most until
    witness.deadline and gives its view."""

    def __init__(
        self, cfg: Config, inv: Any, me: str, own_ak: bytes, own_pcrs: Any, previous: str | None
    ) -> None:
        from recover.peers.witness import read_domain

        self._deadline = cfg.witness_deadline
        self._out: list[Any] = []
        self._t0 = time.monotonic()
        self._thread = threading.Thread(
            target=lambda: self._out.append(read_domain(cfg, inv, me, own_ak, own_pcrs, previous)),
            name="host-recover-witness",
            daemon=True,
        )
        self._thread.start()

    def peek(self) -> Mapping[str, str] | None:
        view = self._out[0] if self._out else None
        return None if view is None or view.error else view.classes

    def __call__(self) -> Any:
        from recover.core.witness import unavailable

        self._thread.join(max(0.0, self._deadline + 1 - (time.monotonic() - self._t0)))
        view = self._out[0] if self._out else unavailable("no answer within witness.deadline")
        if view.error:
            log.warning("witness: deciding without it: %s", view.error)
        else:
            counts: dict[str, int] = {}
            for c in view.classes.values():
                counts[str(c)] = counts.get(str(c), 0) + 1
            log.info(
                "witness: %s in %.0f ms%s",
                " ".join(f"{k}={v}" for k, v in sorted(counts.items())),
                view.elapsed_ms,
                f" (no anchor: {view.anchor_problem})" if view.anchor_problem else "",
            )
        return view


def answer_wait(
    srv: Any,
    ids: set[str],
    booting: set[str],
    settled: int,
    cfg: Config,
    end: float,
    session: Session,
) -> None:
    """After its own rounds, keep answering the peers that may still ask (``ids``; those
    seen in their payload: ``booting``; ``settled`` others run their normal OS or have
    decided) until
    :func:`still_answering` says none will, or ``end`` (this host's own
    ``verdict.wait``) passes. The queries still out when the verdict settled run on in
    ``session`` (recover.peers.rounds.Session): a peer whose late answer is attested to
    come from its normal OS, or from a payload that will not ask, is not waited for; one
    whose late answer says it runs its payload gets its round, as a peer seen booting in
    the rounds does."""
    ids, booting = set(ids), set(booting)
    out = session.still_out()
    if out:
        log.info(
            "answer wait: %d quer%s of the settled round still out", out, "y" if out == 1 else "ies"
        )
    heard = done_late = 0
    since = time.monotonic()
    end = max(end, since + max(cfg.peers_timeout, cfg.peers_deadline))
    while time.monotonic() < end:
        for r in session.late():
            heard += 1
            if r.peer_id not in ids:
                continue
            if will_not_ask(r):
                ids.discard(r.peer_id)
                booting.discard(r.peer_id)
                done_late += 1
            elif says_booting(r):
                booting.add(r.peer_id)  # in its payload: it asks within its round
        waiting = still_answering(
            time.monotonic(),
            since,
            ids,
            booting,
            srv.last_answer.copy(),  # written by the server's thread
            timeout=cfg.peers_timeout,
            deadline=cfg.peers_deadline,
            receipts=srv.receipts.copy(),
        )
        if not waiting:
            break
        session.sleep(0.05)
    answered = set(srv.last_answer)
    log.info(
        "answered %d of %d peers that may ask (%d receipted; %d run their normal OS or have "
        "decided)%s%s",
        len(ids & answered),
        len(ids),
        len(ids & set(srv.receipts)),
        settled + done_late,
        f"; {heard} of {out} late answers in, {done_late} of them not asking" if out else "",
        "" if time.monotonic() < end else " (stopped at the end of verdict.wait)",
    )


def still_answering(
    now: float,
    since: float,
    ids: set[str],
    booting: set[str],
    last_answer: Mapping[str, float],
    *,
    timeout: float,
    deadline: float,
    receipts: Mapping[str, float] | None = None,
) -> set[str]:
    """The peers this host must still answer at ``now``, its own rounds having ended at
    ``since`` (pure: docs/verdict.md, "Staggered boots").

    - a peer seen in its payload (``booting``) that has not asked yet asks within its
      round: it is waited for up to ``max(timeout, deadline)``;
    - any other peer that may ask (``ids``: not attested to run its normal OS) and has
      not asked is waited for up to one ``timeout``;
    - a peer that was answered is waited for until it has been quiet for
      ``max(timeout, deadline)`` + :data:`recover.peers.rounds.PAUSE_MAX`: an answer can
      be lost in transit (the requester timed out first); the requester then retries
      within its round, which ends at most ``deadline`` after it began, and asks again
      in its next round after a pause of at most ``PAUSE_MAX``. A host that stopped
      answering sooner would leave that peer asking until its whole ``verdict.wait``
      ends, undetermined. (The peer's settings are taken to be this host's: a fleet's
      configuration.)
    - a peer whose receipt (``receipts``: docs/peer-protocol.md, "Receipts") came after
      its last answer has verified that answer and will not ask again: done at once.
    """
    from recover.peers.rounds import PAUSE_MAX

    round_max = max(timeout, deadline)
    quiet = round_max + PAUSE_MAX
    receipts = receipts or {}
    left = set()
    for p in ids:
        at = last_answer.get(p)
        if at is not None:
            if receipts.get(p, -1.0) >= at:
                continue
            if now - at < quiet:
                left.add(p)
        elif now - since < (round_max if p in booting else timeout):
            left.add(p)
    return left


def in_payload(peers: PeerResults) -> set[str]:
    """The peers whose verified reply says they run their boot payload (role boot): they
    ask this host in their own rounds."""
    return {r.peer_id for r in peers.results if says_booting(r)}


def says_booting(r: PeerResult) -> bool:
    """Whether a peer's verified reply attests that it runs its boot payload."""
    from recover.core.protocol import Outcome

    return r.outcome is Outcome.VERIFIED and r.status is not None and r.status.role == "boot"


def may_still_ask(domain_ids: set[str], peers: PeerResults) -> set[str]:
    """The peers of the domain that may still ask this host for its status.

    Only a boot payload asks, and only in its own rounds; ``host-recover agent`` (role
    ``agent``, the peer's normal OS) only answers. A peer whose attested reply says it is
    an agent, or a payload whose rounds have ended (``asking: false``: it has decided and
    will not ask again), is therefore not waited for; a peer in its own payload that is
    still asking or does not say (an older peer), and one whose reply was not verified
    (it may be booting still), are.
    """
    return domain_ids - {r.peer_id for r in peers.results if will_not_ask(r)}


def will_not_ask(r: PeerResult) -> bool:
    """Whether a peer's verified reply attests that it will not ask this host: it runs
    its normal OS (role ``agent``), or its payload has decided (``asking: false``)."""
    from recover.core.protocol import Outcome

    return (
        r.outcome is Outcome.VERIFIED
        and r.status is not None
        and (r.status.role == "agent" or (r.status.role == "boot" and r.status.asking is False))
    )
