"""Staggered boots on loopback: the product's round loop (recover.peers.rounds) against
real HTTP status servers, one of which comes up only after the first round (a peer
still in POST), and against peers that never come up. Simulated peers sign in
software (testing.peersim); the verifier and the verdict are the product's."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from testing.peersim import Fleet, SimPeer, SoftwareAttestor, entry, evidence_of
from testing.ports import free_port
from testing.waiting import returns

from recover.core.evidence import Reading
from recover.core.inventory import Inventory, parse
from recover.core.protocol import Outcome, PeerResults
from recover.core.verdict import Judge, Kind, Policy, Rule, Stop, decide_counts
from recover.peers.rounds import converge_async
from recover.peers.server import Limits, Responder, Server, StatusSource

pytestmark = pytest.mark.integration

ME = "self"
OWN_SINCE = 20.0  # peersim peers report 20 s since their reset (plus elapsed time)


def run_rounds(
    inv: Inventory,
    att: SoftwareAttestor,
    pol: Policy,
    wait: float,
    on_round: Any = None,
    servers: list[Server] | None = None,
    sample: int | None = None,
) -> tuple[PeerResults, Any]:
    """The product's rounds over ``inv``'s domain (or a random ``sample`` of it)."""
    from recover.peers.rounds import choose_sample

    domain = inv.domain_peers(ME)
    peers = choose_sample(domain, sample)
    judge = Judge(Reading.ABNORMAL, OWN_SINCE, Rule.of(len(domain), pol, len(peers)), pol)

    async def main() -> tuple[PeerResults, Any]:
        loop = asyncio.get_running_loop()
        try:
            return await converge_async(
                peers,
                {p.id for p in inv},
                ME,
                att,
                judge,
                deadline=2.0 if sample is None else 10.0,
                timeout=1.0 if sample is None else 5.0,
                retries=1,
                wait=wait,
                origin=loop.time(),
                domain=len(domain),
                clock=loop.time,
                on_round=on_round,
            )
        finally:
            for srv in servers or ():
                if srv.server is not None:
                    srv.server.close()
                    await srv.server.wait_closed()

    return returns(lambda: asyncio.run(main()), "the rounds end", within=wait + 120)


def test_a_peer_leaving_post_late_is_waited_for() -> None:
    """Two peers, quorum 50% (2 needed): one is up, the other's server starts only once
    the first round has ended. One round alone would end undetermined (policy normal);
    the rounds wait for it, and the verdict is a correlated failure."""
    att = SoftwareAttestor()
    me = entry(ME, 9, att.pem)
    late_att = SoftwareAttestor()
    late_port = free_port()
    servers: list[Server] = []
    with Fleet([SimPeer("early")], [me]) as fleet:
        inv = parse([me, *fleet.entries, entry("late", late_port, late_att.pem)])
        status = StatusSource("late", "rack-1", "boot", evidence_of("abnormal"), "sim")
        late = Server(Responder(inv, late_att, status), Limits(read_timeout=2.0))

        def on_round(n: int, res: PeerResults) -> None:
            if n == 1:  # the late peer leaves POST: its payload starts answering
                servers.append(late)
                asyncio.ensure_future(late.start("127.0.0.1", late_port))

        res, conv = run_rounds(inv, att, Policy("50%"), 120.0, on_round, servers)
    got = {r.peer_id: r.outcome for r in res.results}
    assert got == {"early": Outcome.VERIFIED, "late": Outcome.VERIFIED}, res.results
    assert conv.rounds >= 2 and conv.stopped in (Stop.SETTLED, Stop.ANSWERED), conv
    assert conv.offsets["late"] > conv.offsets["early"]
    v = decide_counts(Reading.ABNORMAL, OWN_SINCE, res.results, 2, Policy("50%"), convergence=conv)
    assert v.kind is Kind.CORRELATED, v.reasons
    assert v.to_json()["convergence"]["rounds"] == conv.rounds


def test_peers_that_never_come_up_end_the_wait_undetermined() -> None:
    att = SoftwareAttestor()
    me = entry(ME, 9, att.pem)
    with Fleet(
        [SimPeer("up"), SimPeer("dark-1", behaviour="down"), SimPeer("dark-2", behaviour="down")],
        [me],
    ) as fleet:
        inv = fleet.inventory(me)
        pol = Policy("50%")
        res, conv = run_rounds(inv, att, pol, wait=4.0)
    assert conv.stopped is Stop.WINDOW and conv.rounds >= 2, conv
    assert set(conv.silent) == {"dark-1", "dark-2"}
    v = decide_counts(Reading.ABNORMAL, OWN_SINCE, res.results, 3, pol, convergence=conv)
    assert v.kind is Kind.UNDETERMINED  # never isolated: the dark peers may be down too
    assert any("2 peers never answered within the wait" in r for r in v.reasons), v.reasons


def test_an_isolated_failure_is_settled_in_the_first_round() -> None:
    """Peers that are up and fine settle the verdict at once: no waiting."""
    att = SoftwareAttestor()
    me = entry(ME, 9, att.pem)
    sims = [SimPeer(f"fine-{i}", summary="clean") for i in range(3)]
    with Fleet(sims, [me]) as fleet:
        res, conv = run_rounds(fleet.inventory(me), att, Policy("50%"), wait=120.0)
    assert conv.rounds == 1 and conv.stopped in (Stop.SETTLED, Stop.ANSWERED), conv
    v = decide_counts(Reading.ABNORMAL, OWN_SINCE, res.results, 3, Policy("50%"), convergence=conv)
    assert v.kind is Kind.ISOLATED


def test_a_large_domain_is_judged_from_a_random_sample() -> None:
    """100 peers, verdict.sample_above 64: a cryptographically random sample is asked
    (never the peers outside it), and the verdict says the sampling rule."""
    from recover.core.verdict import sample_size
    from recover.peers.rounds import choose_sample

    att = SoftwareAttestor()
    me = entry(ME, 9, att.pem)
    pol = Policy("50%", sample_above=64)
    n = sample_size(100, pol)
    assert n is not None and n < 100
    with Fleet([SimPeer(f"p{i:03d}") for i in range(100)], [me]) as fleet:
        inv = fleet.inventory(me)
        domain = inv.domain_peers(ME)
        res, conv = run_rounds(inv, att, pol, 60.0, sample=n)
    assert (conv.domain, conv.asked) == (100, n)
    assert len({r.peer_id for r in res.results}) <= n
    v = decide_counts(Reading.ABNORMAL, OWN_SINCE, res.results, n, pol, convergence=conv)
    assert v.kind is Kind.CORRELATED, v.reasons
    assert v.counts["sampled"] == n and v.counts["domain"] == 100
    assert any("sampled at random from 100" in r for r in v.reasons), v.reasons
    # Another draw is another sample (cryptographically random, not a fixed subset).
    draws = {frozenset(p.id for p in choose_sample(domain, n)) for _ in range(5)}
    assert len(draws) > 1


@pytest.mark.parametrize("keep_late", [True, False])
def test_a_settled_round_leaves_its_silent_query_running_until_the_session_ends(
    keep_late: bool,
) -> None:
    """Quorum 2 of 3: two abnormal answers settle the verdict while the third peer
    (accepts, never answers) is still asked. In a payload's session (keep_late) that
    query stays out, bounded by its own timeout, for the answer wait; leaving the session
    cancels it without waiting out that timeout (here ten minutes). Without keep_late
    (``host-recover decide`` without serving) the round cancels it itself."""
    from recover.peers.rounds import Session

    att = SoftwareAttestor()
    me = entry(ME, 9, att.pem)
    sims = [SimPeer("a"), SimPeer("b"), SimPeer("quiet", behaviour="silent")]
    with Fleet(sims, [me]) as fleet:
        inv = fleet.inventory(me)
        pol = Policy("2")
        judge = Judge(Reading.ABNORMAL, OWN_SINCE, Rule.of(3, pol, 3), pol)

        def run() -> tuple[Any, int, int, list]:
            with Session(keep_late=keep_late) as session:
                res, conv = session.converge(
                    inv,
                    ME,
                    att,
                    judge,
                    deadline=600.0,
                    timeout=600.0,
                    retries=0,
                    wait=600.0,
                    origin=0.0,
                )
                out = session.still_out()
                session.sleep(0.2)
                return conv, out, session.still_out(), session.late()

        conv, out, still, late = returns(run, "the session ends", within=300)
    assert conv.stopped is Stop.SETTLED, conv
    assert (out, still, late) == ((1, 1, []) if keep_late else (0, 0, []))
