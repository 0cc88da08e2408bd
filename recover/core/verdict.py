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
    from collections.abc import Callable

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
    """The verdict's settings: quorum, window, actions, mode, wait and sampling."""

    quorum: str = "50%"
    window: float = 120.0
    on_isolated: Action = Action.NORMAL
    on_undetermined: Action = Action.NORMAL
    mode: Mode = Mode.AUTO
    wait: float = 240.0  # seconds to keep asking silent peers (verdict.wait)
    sample_above: int = 64  # domains larger than this are sampled; 0: never
    sample_error: float = 0.01  # a sampled verdict's error rate (per kind)

    def __post_init__(self) -> None:
        parse_quorum(self.quorum)
        if not self.window > 0:
            raise ValueError("window must be > 0")
        if not self.wait >= 0:
            raise ValueError("wait must be >= 0")
        if not 0 < self.sample_error < 0.5:
            raise ValueError("sample_error must be in (0, 0.5)")
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
            wait=float(cfg.verdict_wait),
            sample_above=int(cfg.verdict_sample_above),
            sample_error=float(cfg.verdict_sample_error),
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
    """The decision, its action and its reasons, with the counts behind it."""

    kind: Kind
    action: Action
    reasons: tuple[str, ...]
    counts: Mapping[str, int]
    convergence: Convergence | None = None  # how the answers were collected

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": str(self.kind),
            "action": str(self.action),
            "reasons": list(self.reasons),
            "counts": dict(self.counts),
        }
        if self.convergence is not None:
            out["convergence"] = self.convergence.to_json()
        return out


@dataclasses.dataclass(frozen=True)
class _Tally:
    """The peers' answers, counted by what they say about this failure."""

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


def _shifted(own_since_reset: float | None, offset: float) -> float | None:
    """This host's time since its TPM reset ``offset`` seconds after its evidence was read
    (a peer asked in a later round answers that much later: docs/verdict.md)."""
    return None if own_since_reset is None else own_since_reset + offset


def _tally(
    own_since_reset: float | None,
    results: Iterable[PeerResult],
    window: float,
    offsets: Mapping[str, float] | None = None,
) -> tuple[_Tally, dict[str, int]]:
    n = dict.fromkeys(("same", "unknown", "unaffected", "outside", "normal-os", "unverified"), 0)
    outcomes: dict[str, int] = {}
    for r in results:
        outcomes[str(r.outcome)] = outcomes.get(str(r.outcome), 0) + 1
        own = _shifted(own_since_reset, (offsets or {}).get(r.peer_id, 0.0))
        n[_classify(own, r, window)] += 1
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


# --- Large domains: a random sample, an exact one-sided test -------------------------

SAMPLE_MARGIN = 0.25  # of the domain: the clear cases a sample must tell apart
SAMPLE_POWER = 0.99  # ... with at least this probability (docs/verdict.md)
MAX_SAMPLE = 1024  # larger samples save too little: ask every peer


def _log_comb(a: int, b: int) -> float:
    return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)


def hypergeom_pmf(domain: int, marked: int, n: int) -> list[float]:
    """P(X = k) for k = 0..n: X marked peers in a uniform sample of n of ``domain`` peers
    of which ``marked`` are marked (sampling without replacement)."""
    lo, hi = max(0, n - (domain - marked)), min(n, marked)
    total = _log_comb(domain, n)
    out = [0.0] * (n + 1)
    for k in range(lo, hi + 1):
        out[k] = math.exp(_log_comb(marked, k) + _log_comb(domain - marked, n - k) - total)
    return out


def _thresholds(domain: int, n: int, need: int, error: float) -> tuple[int, int]:
    """(corr, iso) for a sample of n: ``corr`` the fewest same-event peers that decide a
    correlated failure, P(X >= corr | need - 1 of the domain went down) <= error (n + 1:
    never); ``iso`` the most same-event-or-undecided peers that still decide an isolated
    one, P(X <= iso | need went down) <= error (-1: never)."""
    below = hypergeom_pmf(domain, need - 1, n)
    corr, tail = n + 1, 0.0
    for k in range(n, -1, -1):
        tail += below[k]
        if tail > error:
            break
        corr = k
    corr = max(corr, min(need, MIN_PERCENT_QUORUM))
    at = hypergeom_pmf(domain, need, n)
    iso, head = -1, 0.0
    for k in range(n + 1):
        head += at[k]
        if head > error:
            break
        iso = k
    return corr, iso


@dataclasses.dataclass(frozen=True)
class Rule:
    """How the counts become a kind. Every peer asked (``asked == domain``): the exact
    table. A uniform random sample of ``asked`` peers of a larger domain: an exact
    one-sided test (hypergeometric, i.e. a Clopper-Pearson-style bound for sampling
    without replacement) of the number of same-event peers in the domain against the
    quorum, each wrong kind at most ``error`` likely (docs/verdict.md)."""

    domain: int
    asked: int
    need: int
    error: float = 0.01
    corr: int = dataclasses.field(default=0, compare=False)
    iso: int = dataclasses.field(default=-1, compare=False)

    def __post_init__(self) -> None:
        if self.sampled and self.need <= self.domain:
            corr, iso = _thresholds(self.domain, self.asked, self.need, self.error)
            object.__setattr__(self, "corr", corr)
            object.__setattr__(self, "iso", iso)

    @classmethod
    def of(cls, domain: int, policy: Policy, asked: int | None = None) -> Rule:
        asked = domain if asked is None else asked
        return cls(domain, asked, policy.needed(domain), policy.sample_error)

    @property
    def sampled(self) -> bool:
        return self.asked < self.domain

    def kind(self, own: Reading, same: int, undecided: int) -> Kind:
        if not self.sampled:
            return _kind(own, same, undecided, self.need, self.domain)
        if own == Reading.CLEAN:
            return Kind.CLEAN
        if self.need > self.domain:
            return Kind.UNDETERMINED
        if same >= self.corr:
            return Kind.CORRELATED
        if same + undecided <= self.iso:
            return Kind.ISOLATED if own == Reading.ABNORMAL else Kind.UNDETERMINED
        return Kind.UNDETERMINED

    def settled(self, own: Reading, same: int, undecided: int, pending: int) -> bool:
        # Monotone in both counts, like the exact table (see _settled).
        return self.kind(own, same + pending, undecided) == self.kind(own, same, undecided)


def sample_size(domain: int, policy: Policy) -> int | None:
    """How many peers of a domain of ``domain`` to ask, or None: ask every one (the domain
    is at most ``verdict.sample_above``, or no sample smaller than half of it meets the
    rule). The rule: the smallest n whose test decides a clear case right with probability
    >= SAMPLE_POWER: correlated when ``needed + SAMPLE_MARGIN * domain`` peers went down,
    isolated when ``needed - SAMPLE_MARGIN * domain`` did, every sampled peer answering."""
    if policy.sample_above <= 0 or domain <= policy.sample_above:
        return None
    need = policy.needed(domain)
    if need > domain:
        return None
    margin = math.ceil(SAMPLE_MARGIN * domain)
    high, low = min(domain, need + margin), max(0, need - margin)

    def good(n: int) -> bool:
        corr, iso = _thresholds(domain, n, need, policy.sample_error)
        if corr > n or iso < 0:
            return False
        p_corr = sum(hypergeom_pmf(domain, high, n)[corr:])
        p_iso = sum(hypergeom_pmf(domain, low, n)[: iso + 1])
        return p_corr >= SAMPLE_POWER and p_iso >= SAMPLE_POWER

    limit = min(domain // 2, MAX_SAMPLE)
    n = MIN_PERCENT_QUORUM
    while n <= limit and not good(n):  # doubling, then the smallest in the last step
        n *= 2
    if n > limit:
        if not good(limit):
            return None
        n = limit
    start = max(MIN_PERCENT_QUORUM, n // 2 + 1)
    return next(k for k in range(start, n + 1) if good(k))


# --- Staggered boots: rounds until the peers answer or the wait ends -----------------

SILENT = frozenset({"timeout", "unreachable", "busy"})  # a later round may change these


def silent(r: PeerResult) -> bool:
    """The peer gave no answer (yet): in POST, powered off, busy, cut off. Asked again in
    the next round; after the last one undecided, never counted as fine."""
    return str(r.outcome) in SILENT


class Judge:
    """The verdict's running view of a query in rounds (recover.peers.rounds): each
    peer's final class, taken with this host's time since reset at the round that asked
    it (``offset``: seconds after the evidence was read). Silent peers stay pending."""

    def __init__(
        self, own: Reading, own_since_reset: float | None, rule: Rule, policy: Policy
    ) -> None:
        self.own, self.since, self.rule, self.policy = own, own_since_reset, rule, policy
        self.final: dict[str, float] = {}  # peer id → offset of its final result
        self.same = self.undecided = 0
        self.silent_ids: set[str] = set()  # asked, no answer yet
        # The witness's classes once read (recover.boot.gather): a silent peer it saw stop
        # with this host lets the rounds stop as soon as that makes the kind correlated.
        self.witness: Callable[[], Mapping[str, str] | None] | None = None

    def add(self, r: PeerResult, offset: float) -> bool:
        """Take a result; False (and nothing counted) when the peer was silent."""
        if r.peer_id in self.final:
            return False
        if silent(r):
            self.silent_ids.add(r.peer_id)
            return False
        self.silent_ids.discard(r.peer_id)
        c = _classify(_shifted(self.since, offset), r, self.policy.window)
        self.same += c == "same"
        self.undecided += c in ("unknown", "unverified")
        self.final[r.peer_id] = offset
        return True

    def settled(self, pending: int, undecided: int = 0) -> bool:
        """No answer from ``pending`` peers can change the kind (``undecided``: silent
        peers that will not be asked again)."""
        if self.policy.mode is not Mode.AUTO:
            return True
        witnessed = self.witnessed()
        if (
            witnessed
            and self.rule.kind(self.own, self.same + witnessed, self.undecided + undecided)
            is Kind.CORRELATED
        ):
            return True  # more answers cannot undo it; decide() re-checks contradictions
        return self.rule.settled(self.own, self.same, self.undecided + undecided, pending)

    def witnessed(self) -> int:
        """Silent peers the witness saw stop heartbeating with this host (0: no witness)."""
        classes = self.witness() if self.witness is not None else None
        if not classes:
            return 0
        return sum(1 for i in self.silent_ids if classes.get(i) == "same")

    def round_stop(self, offset: float, last: bool) -> Callable[[Sequence[PeerResult], int], bool]:
        """The ``stop_early`` callback of one round: its silent peers count as pending
        when another round follows, as undecided after the ``last``."""
        seen, quiet = [0], [0]

        def stop(done: Sequence[PeerResult], pending: int) -> bool:
            for r in done[seen[0] :]:
                if not self.add(r, offset):
                    quiet[0] += 1
            seen[0] = len(done)
            if last:
                return self.settled(pending, quiet[0])
            return self.settled(pending + quiet[0])

        return stop


_STOP_WHY = {
    "settled": "stopped once no pending answer could change the kind",
    "answered": "every peer asked answered",
    "window-closed": "the wait ran out",
    "round-limit": "the bound on rounds was reached",
}


class Stop(enum.StrEnum):
    """Why the rounds ended."""

    SETTLED = "settled"  # no pending answer could change the kind
    ANSWERED = "answered"  # every peer asked gave a final answer
    WINDOW = "window-closed"  # verdict.wait ran out with peers still silent
    ROUNDS = "round-limit"  # the bound on rounds (never reached with sane settings)


@dataclasses.dataclass(frozen=True)
class Convergence:
    """How the peers' answers were collected (the decision record's ``convergence``)."""

    rounds: int
    waited_s: float  # from the first request to the end of the last round
    wait_s: float  # the wait allowed (verdict.wait, capped by boot.timeout)
    stopped: Stop
    domain: int  # peers in the failure domain
    asked: int  # peers asked: the domain, or a random sample of it
    silent: tuple[str, ...] = ()  # asked, never answered
    offsets: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "waited_s": round(self.waited_s, 1),
            "wait_s": self.wait_s,
            "stopped": str(self.stopped),
            "domain": self.domain,
            "asked": self.asked,
            "silent": list(self.silent[:32]),
            "silent_count": len(self.silent),
        }


def decide(
    evidence: Evidence,
    peers: PeerResults | None,
    policy: Policy,
    witness: Mapping[str, str] | None = None,
    *,
    convergence: Convergence | None = None,
) -> Verdict:
    """The verdict from this host's evidence, its peers' results and the policy.

    ``peers`` is None when no peers are configured (a failure domain of one). Peers that
    were never asked (the query stopped early) count as unverified. ``witness``: peer id
    → recover.core.witness.WitnessClass, for peers the witness (etcd) knows about.
    ``convergence``: how the results were collected (rounds, a sample of a large domain).
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
        convergence=convergence,
    )


def _apply_witness(
    t: _Tally,
    own_since_reset: float | None,
    results: Sequence[PeerResult],
    witness: Mapping[str, str],
    window: float,
    offsets: Mapping[str, float] | None = None,
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
        and r.status.since_reset_s - own_since_reset - (offsets or {}).get(r.peer_id, 0.0) > window
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
    *,
    convergence: Convergence | None = None,
) -> Verdict:
    """:func:`decide` on plain values (``domain_size``: peers asked, self excluded; the
    whole domain is ``convergence.domain`` when a sample was asked)."""
    results = tuple(results)
    conv = convergence
    offsets = conv.offsets if conv is not None else None
    t, outcomes = _tally(own_since_reset, results, policy.window, offsets)
    witness_counts: dict[str, int] = {}
    witness_reasons: list[str] = []
    answered_same = t.same  # the reason line below counts answers; witnessed have their own
    if witness is not None:
        t, witness_counts, witness_reasons = _apply_witness(
            t, own_since_reset, results, witness, policy.window, offsets
        )
    asked = domain_size
    if conv is not None and conv.domain > asked:
        domain_size = conv.domain
    rule = Rule.of(domain_size, policy, asked)
    need = rule.need
    undecided = t.unknown + t.unverified
    kind = rule.kind(own, t.same, undecided)
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
    if rule.sampled:
        counts["sampled"] = asked
    if conv is not None:
        counts["rounds"] = conv.rounds
    reasons: list[str] = [f"local evidence: {own}"]
    if own == Reading.CLEAN:
        reasons.append("the previous shutdown was orderly: nothing to recover")
    elif domain_size == 0:
        reasons.append("no peers in this host's failure domain: correlation cannot be judged")
    elif rule.sampled:
        reasons.append(
            f"{answered_same} of {asked} peers sampled at random from {domain_size} went down "
            f"abnormally within {policy.window:g} s of this host's TPM reset (quorum {need} "
            f"of {domain_size}: correlated from {rule.corr} of the sample, isolated up to "
            f"{rule.iso}; each wrong at most {policy.sample_error:g} likely)"
        )
    else:
        reasons.append(
            f"{answered_same} of {domain_size} peers went down abnormally within "
            f"{policy.window:g} s of this host's TPM reset (quorum {need})"
        )
    if own != Reading.CLEAN and domain_size:
        reasons.extend(witness_reasons)
        if conv is not None:
            reasons.append(
                f"asked in {conv.rounds} round{'s' if conv.rounds != 1 else ''} over "
                f"{conv.waited_s:.0f} s (wait up to {conv.wait_s:g} s): "
                f"{_STOP_WHY[conv.stopped]}"
            )
        if conv is not None and conv.silent and conv.stopped is not Stop.SETTLED:
            reasons.append(
                f"{len(conv.silent)} peers never answered within the wait (in POST, powered "
                "off or cut off): undecided, never counted as fine"
            )
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
    return Verdict(kind, action, tuple(reasons), counts, conv)
