"""decide.may_still_ask: after its own round, the boot payload keeps answering only the
peers that may still ask it (pure: no TPM, no network)."""

from __future__ import annotations

from recover.boot.gather import may_still_ask, still_answering
from recover.core.evidence import Reading
from recover.core.protocol import Outcome, PeerResult, PeerResults, PeerStatus

DOMAIN = {"a", "b", "c", "d", "e"}


def status(peer: str, role: str, asking: bool | None = None) -> PeerStatus:
    return PeerStatus(
        host_id=peer,
        boot_id="b",
        failure_domain="rack-1",
        role=role,
        summary=Reading.ABNORMAL,
        orderly=False,
        since_reset_s=3.0,
        since_reset_source="tpm",
        clock={"clock": 1, "reset_count": 1, "restart_count": 0},
        asking=asking,
    )


def results(*rs: PeerResult) -> PeerResults:
    return PeerResults(tuple(rs), len(DOMAIN))


def test_verified_agents_are_not_waited_for() -> None:
    got = may_still_ask(
        DOMAIN,
        results(
            PeerResult("a", Outcome.VERIFIED, status=status("a", "agent")),
            PeerResult("b", Outcome.VERIFIED, status=status("b", "boot")),
            PeerResult("c", Outcome.TIMEOUT, "no answer"),
            PeerResult("d", Outcome.SKIPPED, "verdict settled"),
            PeerResult("e", Outcome.REFUSED, "HTTP 403: PCR mismatch"),
        ),
    )
    # only the attested agent is settled; a booting peer, a silent one, a skipped one and
    # one whose reply was not believed may still ask
    assert got == {"b", "c", "d", "e"}


def test_all_agents_nothing_to_wait_for() -> None:
    rs = results(*(PeerResult(p, Outcome.VERIFIED, status=status(p, "agent")) for p in DOMAIN))
    assert may_still_ask(DOMAIN, rs) == set()


def test_unverified_agent_claim_is_not_believed() -> None:
    # a status that says "agent" but did not verify (e.g. a bad quote) settles nothing
    rs = results(PeerResult("a", Outcome.FORGED, "signature", status("a", "agent")))
    assert may_still_ask(DOMAIN, rs) == DOMAIN


def test_a_payload_that_has_decided_is_not_waited_for() -> None:
    got = may_still_ask(
        DOMAIN,
        results(
            PeerResult("a", Outcome.VERIFIED, status=status("a", "boot", asking=False)),
            PeerResult("b", Outcome.VERIFIED, status=status("b", "boot", asking=True)),
            PeerResult("c", Outcome.VERIFIED, status=status("c", "boot")),  # older: not said
            PeerResult("d", Outcome.FORGED, "signature", status("d", "boot", asking=False)),
            PeerResult("e", Outcome.VERIFIED, status=status("e", "agent", asking=True)),
        ),
    )
    # a's rounds are over; b still asks; c does not say; d's claim did not verify; e is
    # an agent whatever it says
    assert got == {"b", "c", "d"}


def left(now: float, last: dict[str, float], booting: frozenset[str] = frozenset()) -> set[str]:
    # rounds ended at t=100; peers.timeout 1.5 s, peers.deadline 5 s; PAUSE_MAX is 15 s
    return still_answering(now, 100.0, {"a", "b"}, set(booting), last, timeout=1.5, deadline=5)


def test_an_answered_peer_is_answered_until_quiet_for_a_round_and_a_pause() -> None:
    # 'a' was answered at t=99: its answer may have been lost; it retries within its
    # round (which ends at most peers.deadline, 5 s, after it began) and asks again in
    # its next round, up to 15 s later. 'b' has not asked and is not known to be
    # booting: one timeout.
    assert left(100.0, {"a": 99.0}) == {"a", "b"}
    assert left(101.6, {"a": 99.0}) == {"a"}
    assert left(118.9, {"a": 99.0}) == {"a"}
    assert left(119.0, {"a": 99.0}) == set()


def test_a_peer_that_asks_again_restarts_its_quiet_time() -> None:
    assert left(119.0, {"a": 110.0, "b": 99.0}) == {"a"}
    assert left(130.0, {"a": 110.0, "b": 99.0}) == set()


def test_a_booting_peer_that_has_not_asked_gets_its_round() -> None:
    assert left(104.9, {"a": 99.0}, frozenset({"b"})) == {"a", "b"}
    assert left(105.0, {"a": 99.0}, frozenset({"b"})) == {"a"}


def test_requesters_outside_may_ask_are_ignored() -> None:
    # an attested agent (not in may-ask) that asked anyway keeps nobody waiting
    assert left(101.6, {"z": 101.0}) == set()


def test_a_receipt_after_the_last_answer_ends_the_wait_for_that_peer() -> None:
    """A receipt says the peer verified our answer (it never asks again): no quiet time.
    A receipt older than the peer's last request does not count (it asked again, so it
    did not get that answer)."""

    def with_receipts(now: float, last: dict[str, float], got: dict[str, float]) -> set[str]:
        return still_answering(
            now, 100.0, {"a", "b"}, set(), last, timeout=1.5, deadline=5, receipts=got
        )

    assert with_receipts(100.0, {"a": 99.0, "b": 99.5}, {"a": 99.2}) == {"b"}
    assert with_receipts(100.0, {"a": 99.5}, {"a": 99.2}) == {"a", "b"}  # asked again
    assert with_receipts(101.6, {"a": 99.0, "b": 99.5}, {"a": 99.2, "b": 99.6}) == set()
