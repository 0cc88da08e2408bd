"""Staggered boots and large domains in the pure verdict (docs/verdict.md): silent peers
stay pending while rounds remain, later rounds compare reset times at their own time, a
sampled domain is judged by an exact one-sided test whose error rate a seeded simulation
checks. No TPM, no sockets, no timing."""

from __future__ import annotations

import random

import pytest

from recover.core.evidence import Reading
from recover.core.protocol import Outcome, PeerResult, PeerStatus
from recover.core.verdict import (
    SAMPLE_MARGIN,
    SAMPLE_POWER,
    Convergence,
    Judge,
    Kind,
    Policy,
    Rule,
    Stop,
    decide_counts,
    hypergeom_pmf,
    sample_size,
    silent,
)
from recover.settings import Action

A, C, U = Reading.ABNORMAL, Reading.CLEAN, Reading.UNKNOWN
OWN = 30.0


def ok(i: int, summary: Reading = A, since: float = OWN + 5) -> PeerResult:
    st = PeerStatus(
        host_id=f"p{i}",
        boot_id="b",
        failure_domain="rack",
        role="boot",
        summary=summary,
        orderly=summary is C,
        since_reset_s=since,
        since_reset_source="tpm",
        clock={"clock": 1, "reset_count": 1, "restart_count": 0},
    )
    return PeerResult(f"p{i}", Outcome.VERIFIED, "", st, 1.0, 1)


def quiet(i: int, outcome: Outcome = Outcome.UNREACHABLE) -> PeerResult:
    return PeerResult(f"p{i}", outcome, "connection refused")


def conv(stopped: Stop, *, rounds: int = 3, silent_ids: tuple[str, ...] = (), **kw) -> Convergence:
    args = dict(rounds=rounds, waited_s=42.0, wait_s=240.0, stopped=stopped, domain=3, asked=3)
    args.update(kw)
    return Convergence(silent=silent_ids, **args)  # type: ignore[arg-type]


def test_silent_outcomes() -> None:
    assert silent(quiet(0)) and silent(quiet(0, Outcome.TIMEOUT))
    assert not silent(quiet(0, Outcome.FORGED)) and not silent(quiet(0, Outcome.REFUSED))
    assert not silent(ok(0))


def test_a_peer_in_post_is_pending_while_rounds_remain() -> None:
    """One peer abnormal, one still in POST (connection refused): in a single round the
    host would stop with 'undetermined' (policy: normal). With rounds left, it must not
    stop: the silent peer may still make it a correlated failure."""
    pol = Policy("50%")
    judge = Judge(A, OWN, Rule.of(2, pol), pol)
    stop = judge.round_stop(0.0, last=False)
    assert stop([ok(0)], 1) is False
    assert stop([ok(0), quiet(1)], 0) is False  # silent: pending for the next round
    assert judge.settled(1) is False
    # The last round: the silent peer is undecided, the kind cannot change any more.
    last = Judge(A, OWN, Rule.of(2, pol), pol).round_stop(0.0, last=True)
    assert last([ok(0), quiet(1)], 0) is True


def test_silent_peers_never_count_as_fine() -> None:
    pol = Policy("50%", on_undetermined=Action.HOLD)
    res = (ok(0), quiet(1), quiet(2, Outcome.TIMEOUT))
    c = conv(Stop.WINDOW, silent_ids=("p1", "p2"), rounds=14, waited_s=240.0)
    v = decide_counts(A, OWN, res, 3, pol, convergence=c)
    assert v.kind is Kind.UNDETERMINED and v.action is Action.HOLD
    text = "\n".join(v.reasons)
    assert "asked in 14 rounds over 240 s (wait up to 240 s): the wait ran out" in text
    assert "2 peers never answered within the wait" in text
    j = v.to_json()["convergence"]
    assert j["stopped"] == "window-closed" and j["rounds"] == 14 and j["silent"] == ["p1", "p2"]
    assert v.counts["rounds"] == 14


def test_a_late_answer_is_compared_at_its_own_round() -> None:
    """A peer that reset with this host but answers 200 s after the evidence was read
    reports since_reset ~ OWN + 200: same event, not 'outside the window'."""
    pol = Policy("50%", window=120)
    res = (ok(0), ok(1, since=OWN + 200))
    plain = decide_counts(A, OWN, res, 2, pol)
    assert plain.kind is Kind.ISOLATED  # without the round's offset: outside the window
    c = conv(Stop.ANSWERED, domain=2, asked=2, offsets={"p0": 0.0, "p1": 198.0})
    v = decide_counts(A, OWN, res, 2, pol, convergence=c)
    assert v.kind is Kind.CORRELATED, v.reasons
    judge = Judge(A, OWN, Rule.of(2, pol), pol)
    judge.add(res[0], 0.0)
    judge.add(res[1], 198.0)
    assert judge.same == 2 and judge.settled(0)


def test_judge_takes_each_peer_once() -> None:
    pol = Policy("3")
    judge = Judge(A, OWN, Rule.of(5, pol), pol)
    assert judge.add(quiet(0), 0.0) is False
    assert judge.add(ok(0), 5.0) is True
    assert judge.add(ok(0), 9.0) is False
    assert (judge.same, judge.undecided, judge.final) == (1, 0, {"p0": 5.0})


# --- large domains -----------------------------------------------------------------


def test_small_domains_are_never_sampled() -> None:
    assert sample_size(64, Policy("50%")) is None
    assert sample_size(10_000, Policy("50%", sample_above=0)) is None
    assert sample_size(1000, Policy("100%")) is None  # a sample can never show every peer
    n = sample_size(1000, Policy("50%"))
    assert n is not None and 2 <= n <= 500


def test_an_unsampled_rule_is_the_exact_table() -> None:
    pol = Policy("50%")
    for domain in range(0, 12):
        rule = Rule.of(domain, pol)
        for same in range(domain + 1):
            for undecided in range(domain - same + 1):
                from recover.core.verdict import _kind

                assert rule.kind(A, same, undecided) == _kind(
                    A, same, undecided, pol.needed(domain), domain
                )


def test_hypergeometric_pmf_sums_to_one() -> None:
    for d, m, n in ((10, 3, 4), (1000, 499, 75), (200, 200, 58), (200, 0, 58)):
        assert abs(sum(hypergeom_pmf(d, m, n)) - 1) < 1e-9


def _simulate(domain: int, down: int, n: int, rule: Rule, trials: int, seed: int) -> dict:
    rng = random.Random(seed)
    kinds = {Kind.CORRELATED: 0, Kind.ISOLATED: 0, Kind.UNDETERMINED: 0}
    for _ in range(trials):
        same = sum(1 for i in rng.sample(range(domain), n) if i < down)
        kinds[rule.kind(A, same, 0)] += 1
    return {k: v / trials for k, v in kinds.items()}


@pytest.mark.parametrize(("domain", "quorum"), [(1000, "50%"), (200, "30%"), (100, "75%")])
def test_sampled_error_rates_by_simulation(domain: int, quorum: str) -> None:
    """The stated rule (docs/verdict.md): a sampled verdict says correlated-failure with
    probability <= sample_error when fewer than the quorum went down, isolated-failure
    with probability <= sample_error when the quorum did; and the sample size gives >=
    SAMPLE_POWER in the clear cases. Checked by seeded simulation (deterministic),
    allowing 4 standard errors of the simulation itself."""
    pol = Policy(quorum)
    n = sample_size(domain, pol)
    assert n is not None
    rule = Rule.of(domain, pol, n)
    need, alpha, trials = rule.need, pol.sample_error, 20_000
    tol = 4 * (alpha * (1 - alpha) / trials) ** 0.5

    worst_below = _simulate(domain, need - 1, n, rule, trials, seed=1)
    assert worst_below[Kind.CORRELATED] <= alpha + tol, worst_below
    exact = sum(hypergeom_pmf(domain, need - 1, n)[rule.corr :])
    assert abs(worst_below[Kind.CORRELATED] - exact) <= tol + 1e-12  # the math is right
    assert exact <= alpha

    worst_at = _simulate(domain, need, n, rule, trials, seed=2)
    assert worst_at[Kind.ISOLATED] <= alpha + tol, worst_at

    margin = -(-int(SAMPLE_MARGIN * domain * 1000) // 1000)
    clear_down = _simulate(domain, min(domain, need + margin), n, rule, trials, seed=3)
    assert clear_down[Kind.CORRELATED] >= SAMPLE_POWER - tol, clear_down
    clear_fine = _simulate(domain, max(0, need - margin), n, rule, trials, seed=4)
    assert clear_fine[Kind.ISOLATED] >= SAMPLE_POWER - tol, clear_fine
    everyone = _simulate(domain, domain, n, rule, 200, seed=5)
    assert everyone[Kind.CORRELATED] == 1.0  # the power outage itself


def test_sampled_verdict_says_its_rule() -> None:
    pol = Policy("50%")
    n = sample_size(1000, pol)
    assert n is not None
    res = tuple(ok(i) for i in range(n))
    c = conv(Stop.SETTLED, domain=1000, asked=n, rounds=1)
    v = decide_counts(A, OWN, res, n, pol, convergence=c)
    assert v.kind is Kind.CORRELATED and v.counts["sampled"] == n and v.counts["domain"] == 1000
    assert f"{n} of {n} peers sampled at random from 1000" in v.reasons[1]
    # A sample with too many silent peers decides nothing.
    res = tuple(ok(i) for i in range(n // 3)) + tuple(quiet(i) for i in range(n // 3, n))
    assert decide_counts(A, OWN, res, n, pol, convergence=c).kind is Kind.UNDETERMINED


def test_the_wait_fits_the_payload_watchdog() -> None:
    """verdict.wait is capped at boot.timeout minus the reserve for unseal, image and
    lock; the dry run (decide) asks once."""
    from recover import config
    from recover.boot.gather import BOOT_RESERVE, peer_wait

    cfg = config.load(None, {"verdict.wait": "240", "boot.timeout": "300"}, env={})
    pol = Policy.from_config(cfg)
    assert pol.wait == 240 and pol.sample_above == 64 and pol.sample_error == 0.01
    assert peer_wait(cfg, pol, serve=True) == min(240, 300 - BOOT_RESERVE)
    short = cfg.replace(boot_timeout=100.0)
    assert peer_wait(short, pol, serve=True) == 100 - BOOT_RESERVE
    assert peer_wait(cfg, pol, serve=False) == 0.0
    tiny = cfg.replace(boot_timeout=30.0)
    assert peer_wait(tiny, pol, serve=True) == 0.0  # one round, never a negative wait


@pytest.mark.parametrize(
    ("key", "bad"),
    [("verdict.wait", "-1"), ("verdict.sample_error", "0.5"), ("verdict.sample_above", "-3")],
)
def test_bad_window_settings_are_refused(key: str, bad: str) -> None:
    from recover import config
    from recover.errors import ConfigError

    with pytest.raises(ConfigError):
        config.load(None, {key: bad}, env={})
