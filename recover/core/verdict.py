"""The verdict: a pure function of local evidence, peers' attested status and the policy.

    clean               this host shut down cleanly: nothing to recover
    correlated-failure  this host went down, and at least a quorum of its failure
                        domain's peers went down abnormally at about the same time
    isolated-failure    this host went down, and enough peers are verifiably fine that
                        a quorum can no longer be reached
    undetermined        anything else (too few verified answers, unknown local evidence)

Pure: no TPM, no sockets, no cryptography; tables of cases test it (docs/verdict.md).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from recover.core.evidence import Evidence, Reading
from recover.settings import Action, Mode

if TYPE_CHECKING:
    from recover.config import Config
    from recover.core.protocol import PeerResult, PeerResults


MIN_PERCENT_QUORUM = 2  # a percentage quorum never rests on one peer's word


class Kind(enum.StrEnum):
    CLEAN = "clean"
    CORRELATED = "correlated-failure"
    ISOLATED = "isolated-failure"
    UNDETERMINED = "undetermined"


def parse_quorum(text: str) -> tuple[int | None, float | None]:
    """``"3"`` → (3, None); ``"50%"`` → (None, 0.5)."""
    t = text.strip()
    if t.endswith("%"):
        frac = float(t[:-1]) / 100
        if not 0 < frac <= 1:
            raise ValueError(f"quorum {text!r}: a percentage must be in (0, 100]")
        return None, frac
    count = int(t)
    if count < 1:
        raise ValueError(f"quorum {text!r}: a count must be >= 1")
    return count, None


@dataclasses.dataclass(frozen=True)
class Policy:
    quorum: str = "50%"
    window: float = 120.0
    on_isolated: Action = Action.NORMAL
    on_undetermined: Action = Action.NORMAL
    mode: Mode = Mode.AUTO

    def __post_init__(self) -> None:
        parse_quorum(self.quorum)
        if not self.window > 0:
            raise ValueError("window must be > 0")
        object.__setattr__(self, "on_isolated", Action(self.on_isolated))
        object.__setattr__(self, "on_undetermined", Action(self.on_undetermined))
        object.__setattr__(self, "mode", Mode(self.mode))

    @classmethod
    def from_config(cls, cfg: Config) -> Policy:
        return cls(
            quorum=cfg.verdict_quorum,
            window=float(cfg.verdict_window),
            on_isolated=Action(cfg.verdict_on_isolated),
            on_undetermined=Action(cfg.verdict_on_undetermined),
            mode=Mode(cfg.boot_mode),
        )

    def needed(self, domain_size: int) -> int:
        """Abnormal peers needed for a correlated failure: a count as configured; a
        percentage of the domain rounded up, but at least 2, so that no single peer (one
        compromised host) decides a correlated failure. A domain smaller than that can
        never reach the quorum: the verdict is then undetermined (:func:`_kind`)."""
        count, frac = parse_quorum(self.quorum)
        if count is not None:
            return count
        assert frac is not None
        return max(MIN_PERCENT_QUORUM, math.ceil(frac * domain_size - 1e-9))


@dataclasses.dataclass(frozen=True)
class Verdict:
    kind: Kind
    action: Action
    reasons: tuple[str, ...]
    counts: Mapping[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "action": str(self.action),
            "reasons": list(self.reasons),
            "counts": dict(self.counts),
        }


@dataclasses.dataclass(frozen=True)
class _Tally:
    same: int  # verified, abnormal, TPM reset within the window of ours
    unknown: int  # verified, reset within the window, evidence unknown
    unaffected: int  # verified and clean, reset outside the window, or a normal-OS answer
    unverified: int  # no believable answer (any reason)
    outside: int  # of unaffected: abnormal but reset outside the window
    normal_os: int  # of unaffected: answered by the peer's normal OS (role agent)


def _classify(own_since_reset: float | None, r: PeerResult, window: float) -> str:
    """same | unknown | unaffected | outside (unaffected, abnormal) | normal-os
    (unaffected: an agent's answer) | unverified."""
    from recover.core.protocol import Outcome

    if r.outcome is not Outcome.VERIFIED or r.status is None:
        return "unverified"
    st = r.status
    if st.role != "boot":
        # Its normal OS answered (the verifier checked that only a quote with the lock PCR
        # at its reset value may say "boot"): root there can say anything, so at most
        # "unaffected", never a vote for a correlated failure (docs/verdict.md).
        return "normal-os"
    if own_since_reset is not None and abs(st.since_reset_s - own_since_reset) > window:
        return "outside" if st.summary == Reading.ABNORMAL else "unaffected"
    if st.summary == Reading.ABNORMAL:  # in the window, or ours unknown (said)
        return "same"
    return "unaffected" if st.summary == Reading.CLEAN else "unknown"


def _tally(
    own_since_reset: float | None, results: Iterable[PeerResult], window: float
) -> tuple[_Tally, dict[str, int]]:
    n = dict.fromkeys(("same", "unknown", "unaffected", "outside", "normal-os", "unverified"), 0)
    outcomes: dict[str, int] = {}
    for r in results:
        outcomes[str(r.outcome)] = outcomes.get(str(r.outcome), 0) + 1
        n[_classify(own_since_reset, r, window)] += 1
    tally = _Tally(
        same=n["same"],
        unknown=n["unknown"],
        unaffected=n["unaffected"] + n["outside"] + n["normal-os"],
        unverified=n["unverified"],
        outside=n["outside"],
        normal_os=n["normal-os"],
    )
    return tally, outcomes


def _kind(own: Reading, same: int, undecided: int, need: int, domain: int) -> Kind:
    if own == Reading.CLEAN:
        return Kind.CLEAN
    if need > domain:  # no peers, or fewer than the quorum: correlation cannot be judged
        return Kind.UNDETERMINED
    if same >= need:
        return Kind.CORRELATED
    if same + undecided < need:
        return Kind.ISOLATED if own == Reading.ABNORMAL else Kind.UNDETERMINED
    return Kind.UNDETERMINED


def _settled(own: Reading, same: int, undecided: int, pending: int, domain: int, need: int) -> bool:
    # The kind is monotone in the number of same-event peers and of undecided ones, so it
    # is enough to compare the two extremes: every pending peer abnormal, or every one fine.
    high = _kind(own, same + pending, undecided, need, domain)
    return high == _kind(own, same, undecided, need, domain)


def settled(
    own: Reading,
    own_since_reset: float | None,
    results: Iterable[PeerResult],
    pending: int,
    domain_size: int,
    policy: Policy,
) -> bool:
    """True when no answer from the ``pending`` peers can change the verdict's kind."""
    if policy.mode is not Mode.AUTO:
        return True
    t, _ = _tally(own_since_reset, results, policy.window)
    need = policy.needed(domain_size)
    return _settled(own, t.same, t.unknown + t.unverified, pending, domain_size, need)


class EarlyStop:
    """:func:`settled` as an incremental ``stop_early`` callback for peers.query_all
    (results arrive append-only; each is classified once)."""

    def __init__(
        self, own: Reading, own_since_reset: float | None, domain_size: int, policy: Policy
    ) -> None:
        self.own, self.since, self.domain, self.policy = own, own_since_reset, domain_size, policy
        self.need = policy.needed(domain_size)
        self.seen = self.same = self.undecided = 0

    def __call__(self, done: Sequence[PeerResult], pending: int) -> bool:
        for r in done[self.seen :]:
            c = _classify(self.since, r, self.policy.window)
            self.same += c == "same"
            self.undecided += c in ("unknown", "unverified")
        self.seen = len(done)
        if self.policy.mode is not Mode.AUTO:
            return True
        return _settled(self.own, self.same, self.undecided, pending, self.domain, self.need)


def decide(
    evidence: Evidence,
    peers: PeerResults | None,
    policy: Policy,
    witness: Mapping[str, str] | None = None,
) -> Verdict:
    """The verdict from this host's evidence, its peers' results and the policy.

    ``peers`` is None when no peers are configured (a failure domain of one). Peers that
    were never asked (the query stopped early) count as unverified. ``witness``: peer id
    → recover.core.witness.WitnessClass, for peers the witness (etcd) knows about.
    """
    if peers is None:
        return decide_counts(evidence.summary, evidence.since_reset_s, (), 0, policy)
    return decide_counts(
        evidence.summary,
        evidence.since_reset_s,
        peers.results,
        peers.domain_size,
        policy,
        witness,
    )


def _apply_witness(
    t: _Tally,
    own_since_reset: float | None,
    results: Sequence[PeerResult],
    witness: Mapping[str, str],
    window: float,
) -> tuple[_Tally, dict[str, int], list[str]]:
    """Fold the witness into the tally (docs/verdict.md, "Witnessed peers").

    A peer's verified answer always wins over the witness. A peer without one (silent,
    skipped, refused, ...) whose heartbeat stopped within the window of this host's counts
    as "same event (witnessed)"; one whose heartbeat shows another event (stopped
    earlier or later, or still heartbeating) counts unaffected. The witness is ignored
    altogether when a verified answer contradicts it: a peer the witness says stopped
    with this host, whose own attested answer shows it has been up since before.
    """
    from recover.core.protocol import Outcome

    counts = {"witnessed": 0, "witnessed_other": 0, "witness_contradicted": 0}
    contra = [
        r.peer_id
        for r in results
        if r.outcome is Outcome.VERIFIED
        and r.status is not None
        and witness.get(r.peer_id) == "same"
        and own_since_reset is not None
        and r.status.since_reset_s - own_since_reset > window
    ]
    if contra:
        counts["witness_contradicted"] = len(contra)
        return (
            t,
            counts,
            [
                "witness ignored: it says "
                + ", ".join(contra[:5])
                + " stopped with this host, but their attested answers show them up since "
                "before (etcd or their agents' heartbeats cannot be trusted here)"
            ],
        )
    same: list[str] = []
    other: list[str] = []
    for r in results:
        if _classify(own_since_reset, r, window) != "unverified":
            continue
        c = witness.get(r.peer_id)
        if c == "same":
            same.append(r.peer_id)
        elif c in ("earlier", "later", "alive"):
            other.append(r.peer_id)
    counts["witnessed"], counts["witnessed_other"] = len(same), len(other)
    reasons: list[str] = []
    if same:
        reasons.append(
            f"{len(same)} silent peers stopped heartbeating within {window:g} s of this "
            f"host's last heartbeat: same event (witnessed): {', '.join(same[:10])}"
            + (" …" if len(same) > 10 else "")
        )
    if other:
        reasons.append(
            f"{len(other)} silent peers' heartbeats show another event (stopped earlier or "
            "later, or still alive): counted unaffected (witnessed)"
        )
    t = dataclasses.replace(
        t,
        same=t.same + len(same),
        unaffected=t.unaffected + len(other),
        unverified=t.unverified - len(same) - len(other),
    )
    return t, counts, reasons


def decide_counts(
    own: Reading,
    own_since_reset: float | None,
    results: Iterable[PeerResult],
    domain_size: int,
    policy: Policy,
    witness: Mapping[str, str] | None = None,
) -> Verdict:
    """:func:`decide` on plain values (``domain_size``: peers of the domain, self excluded)."""
    results = tuple(results)
    t, outcomes = _tally(own_since_reset, results, policy.window)
    witness_counts: dict[str, int] = {}
    witness_reasons: list[str] = []
    answered_same = t.same  # the reason line below counts answers; witnessed have their own
    if witness is not None:
        t, witness_counts, witness_reasons = _apply_witness(
            t, own_since_reset, results, witness, policy.window
        )
    need = policy.needed(domain_size)
    undecided = t.unknown + t.unverified
    kind = _kind(own, t.same, undecided, need, domain_size)
    counts = {
        "domain": domain_size,
        "needed": need,
        "same_event": t.same,
        "unknown": t.unknown,
        "unaffected": t.unaffected,
        "outside_window": t.outside,
        "normal_os": t.normal_os,
        "unverified": t.unverified,
        **witness_counts,
        **{f"outcome.{k}": v for k, v in sorted(outcomes.items())},
    }
    reasons: list[str] = [f"local evidence: {own}"]
    if own == Reading.CLEAN:
        reasons.append("the previous shutdown was orderly: nothing to recover")
    elif domain_size == 0:
        reasons.append("no peers in this host's failure domain: correlation cannot be judged")
    else:
        reasons.append(
            f"{answered_same} of {domain_size} peers went down abnormally within "
            f"{policy.window:g} s of this host's TPM reset (quorum {need})"
        )
        reasons.extend(witness_reasons)
        if t.outside:
            reasons.append(f"{t.outside} abnormal peers reset outside the window (other events)")
        if t.normal_os:
            reasons.append(
                f"{t.normal_os} peers answered from their normal OS (role agent): counted "
                "unaffected, only a peer's measured boot payload can vote"
            )
        if undecided:
            from recover.core.protocol import Outcome

            why = [f"{v} {k}" for k, v in sorted(outcomes.items()) if k != Outcome.VERIFIED]
            resolved = witness_counts.get("witnessed", 0) + witness_counts.get("witnessed_other", 0)
            if resolved:
                why.append(f"less {resolved} the witness accounts for")
            if t.unknown:
                why.append(f"{t.unknown} verified with unknown evidence")
            noun = "peer" if undecided == 1 else "peers"
            reasons.append(f"{undecided} {noun} undecided: {', '.join(why)}")
        if own_since_reset is None:
            reasons.append("this host's time since TPM reset is unknown: no window check")
        if kind is Kind.UNDETERMINED and own == Reading.UNKNOWN and t.same < need:
            reasons.append("local evidence is unknown and peers show no correlated failure")
        if need > domain_size:
            reasons.append(
                f"quorum {need} exceeds the domain's {domain_size} peers: it can never be "
                "reached, so correlation cannot be judged"
            )
    action = {
        Kind.CLEAN: Action.NORMAL,
        Kind.CORRELATED: Action.RECOVER,
        Kind.ISOLATED: policy.on_isolated,
        Kind.UNDETERMINED: policy.on_undetermined,
    }[kind]
    if kind in (Kind.ISOLATED, Kind.UNDETERMINED):
        reasons.append(f"policy: on {kind} → {action}")
    if policy.mode is Mode.FORCE:
        action = Action.RECOVER
        reasons.insert(0, "boot.mode=force: recover regardless of the verdict")
    elif policy.mode is Mode.NEVER:
        action = Action.NORMAL
        reasons.insert(0, "boot.mode=never: never recover")
    return Verdict(kind, action, tuple(reasons), counts)
