"""Table-driven tests of the pure verdict (no TPM, no sockets, no cryptography)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from recover.core.evidence import Evidence, Reading, Signal, Strength
from recover.core.protocol import Outcome, PeerResult, PeerResults, PeerStatus
from recover.core.verdict import Action, Kind, Mode, Policy, decide, decide_counts, settled

A, C, U = Reading.ABNORMAL, Reading.CLEAN, Reading.UNKNOWN
OWN_RESET = 30.0


def peer(
    i: int, summary: Reading = A, since: float = OWN_RESET + 5, role: str = "boot"
) -> PeerResult:
    st = PeerStatus(
        host_id=f"p{i}",
        boot_id="b",
        failure_domain="rack",
        role=role,
        summary=summary,
        orderly=summary is C,
        since_reset_s=since,
        since_reset_source="tpm",
        clock={"clock": 1, "reset_count": 1, "restart_count": 0},
    )
    return PeerResult(f"p{i}", Outcome.VERIFIED, "", st, 1.0, 1)


def bad(i: int, outcome: Outcome = Outcome.TIMEOUT) -> PeerResult:
    return PeerResult(f"p{i}", outcome, "x")


def peers(*spec: str) -> tuple[PeerResult, ...]:
    """a: abnormal in window, c: clean, u: unknown summary, o: abnormal outside the
    window, x: unverified (timeout), f: forged, g: abnormal in the window but answered by
    the peer's normal OS (role agent), h: unknown, answered by the normal OS."""
    out = []
    for i, ch in enumerate(spec):
        out.append(
            {
                "a": lambda i: peer(i, A),
                "c": lambda i: peer(i, C),
                "u": lambda i: peer(i, U),
                "o": lambda i: peer(i, A, since=OWN_RESET + 10_000),
                "x": lambda i: bad(i),
                "f": lambda i: bad(i, Outcome.FORGED),
                "g": lambda i: peer(i, A, role="agent"),
                "h": lambda i: peer(i, U, role="agent"),
            }[ch](i)
        )
    return tuple(out)


CASES = [
    # own, peers, quorum, on_isolated, on_undetermined, mode -> kind, action
    (C, "aaa", "50%", "normal", "normal", "auto", Kind.CLEAN, Action.NORMAL),
    (C, "", "1", "recover", "recover", "auto", Kind.CLEAN, Action.NORMAL),
    (A, "aaa", "50%", "normal", "normal", "auto", Kind.CORRELATED, Action.RECOVER),
    (A, "aacc", "50%", "normal", "normal", "auto", Kind.CORRELATED, Action.RECOVER),
    (A, "accc", "50%", "normal", "normal", "auto", Kind.ISOLATED, Action.NORMAL),
    (A, "accc", "50%", "hold", "normal", "auto", Kind.ISOLATED, Action.HOLD),
    (A, "accc", "50%", "recover", "normal", "auto", Kind.ISOLATED, Action.RECOVER),
    (A, "ccc", "1", "normal", "normal", "auto", Kind.ISOLATED, Action.NORMAL),
    (A, "acxx", "50%", "normal", "hold", "auto", Kind.UNDETERMINED, Action.HOLD),
    (A, "acxx", "50%", "normal", "recover", "auto", Kind.UNDETERMINED, Action.RECOVER),
    (A, "acxx", "50%", "normal", "normal", "auto", Kind.UNDETERMINED, Action.NORMAL),
    (A, "xxxx", "50%", "normal", "hold", "auto", Kind.UNDETERMINED, Action.HOLD),
    (A, "ffff", "1", "normal", "hold", "auto", Kind.UNDETERMINED, Action.HOLD),
    (A, "aauc", "3", "normal", "hold", "auto", Kind.UNDETERMINED, Action.HOLD),
    (A, "aacc", "3", "hold", "normal", "auto", Kind.ISOLATED, Action.HOLD),
    (A, "aaac", "3", "normal", "normal", "auto", Kind.CORRELATED, Action.RECOVER),
    (A, "oooc", "50%", "normal", "normal", "auto", Kind.ISOLATED, Action.NORMAL),
    (A, "ooaa", "50%", "normal", "normal", "auto", Kind.CORRELATED, Action.RECOVER),
    (A, "aaaa", "100%", "normal", "normal", "auto", Kind.CORRELATED, Action.RECOVER),
    (A, "aaax", "100%", "normal", "hold", "auto", Kind.UNDETERMINED, Action.HOLD),
    # A quorum larger than the domain can never be reached: undetermined (as for a host
    # alone), no longer isolated (it was: "no quorum can be reached" held vacuously, although
    # both peers went down too).
    (A, "aa", "5", "hold", "normal", "auto", Kind.UNDETERMINED, Action.NORMAL),
    (A, "cc", "5", "hold", "hold", "auto", Kind.UNDETERMINED, Action.HOLD),
    # Percentage quorums need at least 2 abnormal peers (issue 9: one compromised peer
    # must not decide). Domain of 2 at 50%: needed was 1, now 2.
    (A, "aa", "50%", "normal", "normal", "auto", Kind.CORRELATED, Action.RECOVER),
    (A, "ac", "50%", "normal", "normal", "auto", Kind.ISOLATED, Action.NORMAL),  # was correlated
    (A, "ax", "50%", "normal", "hold", "auto", Kind.UNDETERMINED, Action.HOLD),  # was correlated
    # Domain of 1 at a percentage: never reachable → undetermined (was correlated/isolated).
    (A, "a", "50%", "normal", "hold", "auto", Kind.UNDETERMINED, Action.HOLD),
    (A, "c", "100%", "normal", "hold", "auto", Kind.UNDETERMINED, Action.HOLD),
    # A count quorum stays as configured: 1 abnormal peer of 1 decides if the operator says so.
    (A, "a", "1", "normal", "normal", "auto", Kind.CORRELATED, Action.RECOVER),
    # Answers from a peer's normal OS (role agent) count as unaffected, whatever they say.
    (A, "gg", "50%", "normal", "hold", "auto", Kind.ISOLATED, Action.NORMAL),
    (A, "agg", "50%", "normal", "hold", "auto", Kind.ISOLATED, Action.NORMAL),
    (A, "aag", "50%", "normal", "hold", "auto", Kind.CORRELATED, Action.RECOVER),
    (A, "g", "1", "hold", "normal", "auto", Kind.ISOLATED, Action.HOLD),
    (A, "hh", "1", "hold", "normal", "auto", Kind.ISOLATED, Action.HOLD),  # unknown → unaffected
    (A, "", "50%", "recover", "hold", "auto", Kind.UNDETERMINED, Action.HOLD),  # alone
    (U, "aaa", "50%", "normal", "normal", "auto", Kind.CORRELATED, Action.RECOVER),
    (U, "ccc", "50%", "recover", "hold", "auto", Kind.UNDETERMINED, Action.HOLD),
    (U, "", "1", "recover", "normal", "auto", Kind.UNDETERMINED, Action.NORMAL),
    (A, "ccc", "50%", "normal", "normal", "force", Kind.ISOLATED, Action.RECOVER),
    (C, "", "50%", "normal", "normal", "force", Kind.CLEAN, Action.RECOVER),
    (A, "aaa", "50%", "normal", "normal", "never", Kind.CORRELATED, Action.NORMAL),
]


@pytest.mark.parametrize("own,spec,quorum,iso,und,mode,kind,action", CASES)
def test_verdict_table(
    own: Reading,
    spec: str,
    quorum: str,
    iso: str,
    und: str,
    mode: str,
    kind: Kind,
    action: Action,
) -> None:
    policy = Policy(quorum, 120.0, Action(iso), Action(und), Mode(mode))
    res = peers(*spec)
    v = decide_counts(own, OWN_RESET, res, len(res), policy)
    assert (v.kind, v.action) == (kind, action), v.reasons
    assert v.reasons and all(isinstance(r, str) and r for r in v.reasons)
    assert v.counts["domain"] == len(res)
    assert v.counts["same_event"] + v.counts["unknown"] + v.counts["unaffected"] + v.counts[
        "unverified"
    ] == len(res)
    if mode != "auto":
        assert f"boot.mode={mode}" in v.reasons[0]


@pytest.mark.parametrize(
    "quorum,domain,need",
    [("50%", 4, 2), ("50%", 5, 3), ("1%", 200, 2), ("100%", 3, 3), ("3", 10, 3),
     ("30%", 10, 3),
     # percentages need at least 2 (issue 9); these were 1 before:
     ("50%", 0, 2), ("33%", 3, 2), ("50%", 1, 2), ("50%", 2, 2), ("1%", 10, 2),
     # a count stays as configured:
     ("1", 1, 1), ("1", 0, 1)],
)  # fmt: skip
def test_quorum_needed(quorum: str, domain: int, need: int) -> None:
    assert Policy(quorum).needed(domain) == need


@pytest.mark.parametrize("bad", ["0", "-1", "0%", "101%", "abc"])
def test_bad_quorum_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        Policy(bad)


def test_window_decides_same_event() -> None:
    pol = Policy("1", window=60)
    inside = decide_counts(A, 100.0, (peer(0, A, since=155.0),), 1, pol)
    outside = decide_counts(A, 100.0, (peer(0, A, since=165.0),), 1, pol)
    assert inside.kind is Kind.CORRELATED
    assert outside.kind is Kind.ISOLATED
    assert outside.counts["outside_window"] == 1


def test_normal_os_answers_are_counted_and_said() -> None:
    v = decide_counts(A, OWN_RESET, peers("a", "g", "g"), 3, Policy("50%"))
    assert v.kind is Kind.ISOLATED
    assert (v.counts["same_event"], v.counts["unaffected"], v.counts["normal_os"]) == (1, 2, 2)
    assert any("normal OS" in r for r in v.reasons)


def test_unknown_own_reset_time_is_said() -> None:
    v = decide_counts(A, None, peers("a", "a"), 2, Policy("2"))
    assert v.kind is Kind.CORRELATED
    assert any("time since TPM reset is unknown" in r for r in v.reasons)


@pytest.mark.parametrize(
    "own,spec,pending,quorum,expect",
    [
        (C, "", 10, "50%", True),  # clean: peers cannot matter
        (A, "aa", 2, "2", True),  # quorum reached
        (A, "a", 3, "2", False),  # the next answer may decide
        (A, "cccc", 1, "50%", True),  # 0 + 1 pending < 3: isolated whatever comes
        (A, "ccc", 2, "50%", True),  # need 3 of 5: at most 2 more
        (A, "ccc", 3, "50%", False),  # need 3 of 6: 3 pending could make it
        (A, "xxx", 2, "50%", True),  # undetermined whatever comes
        (A, "xxx", 3, "50%", False),  # undetermined now, could become correlated
        (A, "xcc", 1, "2", False),  # isolated if fine, undetermined if not
    ],
)
def test_settled(own: Reading, spec: str, pending: int, quorum: str, expect: bool) -> None:
    res = peers(*spec)
    pol = Policy(quorum)
    assert settled(own, OWN_RESET, res, pending, len(res) + pending, pol) is expect


def test_settled_matches_every_completion() -> None:
    """settled() is exact: if it says True, every way the pending peers answer gives the
    same kind; if False, two completions differ."""
    import itertools

    for pol in (Policy("3"), Policy("50%")):  # percentages: at least 2 (issue 9)
        for spec in ("", "a", "aa", "c", "cc", "ac", "x", "ax", "cx", "g", "ag"):
            done = peers(*spec)
            for pending in range(0, 4):
                domain = len(done) + pending
                kinds = set()
                for fill in itertools.product("acxg", repeat=pending):
                    allres = done + tuple(_one(f, 9 + k) for k, f in enumerate(fill))
                    kinds.add(decide_counts(A, OWN_RESET, allres, domain, pol).kind)
                assert settled(A, OWN_RESET, done, pending, domain, pol) is (len(kinds) == 1), (
                    pol.quorum,
                    spec,
                    pending,
                    kinds,
                )


def _one(ch: str, i: int) -> PeerResult:
    return {"a": peer(i, A), "c": peer(i, C), "x": bad(i), "g": peer(i, A, role="agent")}[ch]


def test_decide_takes_evidence_and_results() -> None:
    ev = Evidence((Signal("orderly_bit", False, A, Strength.STRONG, "x"),), None, OWN_RESET, 0.0)
    res = PeerResults(peers("a", "a", "c"), 3)
    v = decide(ev, res, Policy("50%"))
    assert v.kind is Kind.CORRELATED and v.action is Action.RECOVER
    assert decide(ev, None, Policy("50%")).kind is Kind.UNDETERMINED
    j = v.to_json()
    assert j["kind"] == "correlated-failure" and j["action"] == "recover"


def test_policy_from_config() -> None:
    from recover import config

    cfg = config.load(
        None,
        {
            "verdict.quorum": "3",
            "verdict.on_isolated": "hold",
            "verdict.on_undetermined": "recover",
            "boot.mode": "force",
        },
        env={},
    )
    p = Policy.from_config(cfg)
    assert (p.quorum, p.on_isolated, p.on_undetermined, p.mode) == (
        "3",
        Action.HOLD,
        Action.RECOVER,
        Mode.FORCE,
    )


def test_verdict_module_is_pure() -> None:
    code = (
        "import sys, recover.core.verdict, recover.core.plan, recover.boot.gather;"
        "bad = [m for m in ('socket', 'asyncio', 'cryptography', 'tpm2_pytss', 'ssl')"
        " if m in sys.modules]; print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_early_stop_is_settled_incrementally() -> None:
    from recover.core.verdict import EarlyStop

    pol = Policy("3")
    spec = "cxacaaucx"
    res = peers(*spec)
    stop = EarlyStop(A, OWN_RESET, len(res) + 2, pol)
    for k in range(len(res) + 1):
        pending = len(res) + 2 - k
        assert stop(res[:k], pending) is settled(A, OWN_RESET, res[:k], pending, len(res) + 2, pol)
    assert EarlyStop(C, None, 5, pol)((), 5) is True
