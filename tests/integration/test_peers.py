"""Peer protocol v1 on loopback with simulated peers (software-signed, real verifier).

Every misbehaving peer is a separate server in one child process (tests/peersim.py);
the client is the product's recover.peers.query_all.
"""

from __future__ import annotations

import pytest

from testing.peersim import BAD_PCRS, Fleet, SimPeer, SoftwareAttestor, entry
from testing.waiting import returns

from recover.core.evidence import Reading
from recover.core.inventory import Inventory
from recover.core.protocol import (
    Outcome,
    PeerResults,
    canonical_json,
    reply_qualifying_data,
    request_qualifying_data,
)
from recover.core.verdict import Kind, Policy, decide_counts, settled
from recover.peers.client import query_all

pytestmark = pytest.mark.integration

ME = "self"


def me_entry(att: SoftwareAttestor) -> dict:
    return entry(ME, 9, att.pem)


def ask(inv: Inventory, att: SoftwareAttestor, **kw: object) -> PeerResults:
    args: dict = {"deadline": 3.0, "timeout": 1.0, "retries": 1}
    args.update(kw)
    return query_all(inv, ME, att, **args)


def by_id(res: PeerResults) -> dict[str, tuple[Outcome, str]]:
    return {r.peer_id: (r.outcome, r.reason) for r in res.results}


def test_canonical_json_and_qualifying_data() -> None:
    assert canonical_json({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":1}'.encode()
    n = bytes(32)
    assert request_qualifying_data(n, "a") != request_qualifying_data(n, "b")
    assert reply_qualifying_data({"x": 1}, n) != reply_qualifying_data({"x": 2}, n)
    assert len(reply_qualifying_data({}, n)) == 32


def test_every_misbehaviour_is_counted_never_believed() -> None:
    att = SoftwareAttestor()
    sims = [
        SimPeer("ok-1"),
        SimPeer("ok-2", summary="clean"),
        SimPeer("forged", behaviour="forged"),
        SimPeer("replay", behaviour="replay"),
        SimPeer("intruder", behaviour="intruder"),
        SimPeer("badpcrs", behaviour="badpcrs"),
        SimPeer("silent", behaviour="silent"),
        SimPeer("down", behaviour="down"),
        SimPeer("garbage", behaviour="garbage"),
    ]
    with Fleet(sims, [me_entry(att)]) as fleet:
        inv = fleet.inventory(me_entry(att))
        # A round that ends at all (a guard against a hang, not a timing): see below.
        first = returns(lambda: ask(inv, att, deadline=2.0, timeout=0.5), "a 2 s round")
        second = returns(lambda: ask(inv, att, deadline=2.0, timeout=0.5), "a 2 s round")
    r1, r2 = by_id(first), by_id(second)
    assert r1["ok-1"][0] is Outcome.VERIFIED and r1["ok-2"][0] is Outcome.VERIFIED
    assert r1["replay"][0] is Outcome.VERIFIED  # its first answer is genuine
    assert r2["replay"][0] is Outcome.REPLAYED, r2["replay"]
    assert r2["ok-1"][0] is Outcome.VERIFIED
    for r in (r1, r2):
        assert r["forged"][0] is Outcome.FORGED, r["forged"]
        assert r["intruder"] == (Outcome.UNKNOWN_HOST, r["intruder"][1])
        assert "intruder-intruder" in r["intruder"][1]
        assert r["badpcrs"][0] is Outcome.UNEXPECTED_PCRS, r["badpcrs"]
        assert "sha256:9" in r["badpcrs"][1]
        assert r["silent"][0] is Outcome.TIMEOUT
        assert r["down"][0] is Outcome.UNREACHABLE
        assert r["garbage"][0] is Outcome.MALFORMED
    statuses = {r.peer_id: r.status for r in first.results if r.status}
    assert set(statuses) == {"ok-1", "ok-2", "replay"}
    assert statuses["ok-1"].summary is Reading.ABNORMAL
    assert statuses["ok-2"].summary is Reading.CLEAN
    assert 19 < statuses["ok-1"].since_reset_s < 60
    # Retries are bounded: a silent peer is asked 1 + retries times, each attempt ending at
    # its own timeout, then given up (not waited for until the deadline). A refused
    # connection (a peer still booting) is retried until the deadline.
    assert r1["silent"][1].startswith("no answer within"), r1["silent"]
    attempts = {r.peer_id: r.attempts for r in first.results}
    assert attempts["silent"] == 2 and attempts["ok-1"] == 1
    assert 5 < attempts["down"] < 40, attempts


def test_requester_with_unexpected_pcrs_is_refused() -> None:
    honest = SoftwareAttestor()
    liar = SoftwareAttestor(key=honest.key, pcrs=BAD_PCRS)  # same AK, other boot state
    with Fleet([SimPeer("p1"), SimPeer("p2")], [me_entry(honest)]) as fleet:
        inv = fleet.inventory(me_entry(honest))
        res = ask(inv, liar)
        ok = ask(inv, honest)
    assert [r.outcome for r in res.results] == [Outcome.REFUSED] * 2
    assert all("403" in r.reason and "PCR" in r.reason for r in res.results), res.results
    assert ok.verified == 2


def test_unknown_requester_is_refused() -> None:
    att, stranger = SoftwareAttestor(), SoftwareAttestor()
    with Fleet([SimPeer("p1")], [me_entry(att)]) as fleet:
        inv = fleet.inventory(me_entry(stranger))  # we claim "self" with another key
        res = ask(inv, stranger)
    assert res.results[0].outcome is Outcome.REFUSED
    assert "forged" in res.results[0].reason or "signature" in res.results[0].reason


def test_scale_200_peers_tenth_silent_decides_at_deadline() -> None:
    att = SoftwareAttestor()
    sims = [SimPeer(f"p{i:03d}", behaviour="silent" if i % 10 == 0 else "ok") for i in range(200)]
    with Fleet(sims, [me_entry(att)]) as fleet:
        inv = fleet.inventory(me_entry(att))
        # 6 attempts of 0.5 s do not fit in the 2 s deadline: the deadline ends the round.
        kw = {"deadline": 2.0, "timeout": 0.5, "retries": 5}
        res = returns(lambda: ask(inv, att, **kw), "the 200-peer round")
        # With early stopping the verdict comes as soon as the quorum is reached.
        pol = Policy("50%")

        def stop(done: tuple, pending: int) -> bool:
            return settled(Reading.ABNORMAL, 20.0, done, pending, 200, pol)

        early = returns(lambda: ask(inv, att, stop_early=stop, **kw), "the early-stopping round")
    assert res.verified == 180 and res.count(Outcome.TIMEOUT) == 20
    silent = [r for r in res.results if r.outcome is Outcome.TIMEOUT]
    assert not res.stopped_early and all(r.attempts < 6 for r in silent), silent[:3]
    v = decide_counts(Reading.ABNORMAL, 20.0, res.results, res.domain_size, pol)
    assert v.kind is Kind.CORRELATED
    assert early.stopped_early and early.verified >= 100
    assert early.count(Outcome.SKIPPED) > 0
    assert decide_counts(Reading.ABNORMAL, 20.0, early.results, 200, pol).kind is Kind.CORRELATED
    # The same round, stopped early: it ended before the deadline, which alone ends the
    # silent peers (their attempts do not fit in it), so none of them timed out.
    assert early.count(Outcome.TIMEOUT) == 0, [r for r in early.results if r.reason][:3]


def test_other_failure_domains_are_not_asked() -> None:
    att = SoftwareAttestor()
    sims = [SimPeer("a1"), SimPeer("b1", domain="rack-2"), SimPeer("b2", domain="rack-2")]
    with Fleet(sims, [me_entry(att)]) as fleet:
        res = ask(fleet.inventory(me_entry(att)), att)
    assert [r.peer_id for r in res.results] == ["a1"] and res.domain_size == 1


def _reply(att: SoftwareAttestor, nonce: bytes, **status_changes: object) -> dict:
    """A reply as recover.peers.server.Responder builds it, optionally with a lying status."""
    from testing.peersim import evidence_of

    from recover.core.inventory import pcrs_to_json
    from recover.peers.server import StatusSource

    status = StatusSource("p1", "rack-1", "boot", evidence_of("abnormal"), "b").build(att.clock())
    status.update(status_changes)
    q = att.quote(reply_qualifying_data(status, nonce), with_lock=True)
    return {
        "version": 1,
        "nonce": nonce.hex(),
        "status": status,
        "quote": q.to_json(),
        "pcrs": pcrs_to_json(q.pcrs),
    }


def _flip(hexsig: str) -> str:
    """Change the last byte of a DER signature (s's low byte)."""
    return hexsig[:-2] + f"{int(hexsig[-2:], 16) ^ 1:02x}"


@pytest.mark.parametrize(
    "mutate,outcome,words",
    [
        (lambda r: None, Outcome.VERIFIED, ""),
        (lambda r: r.update(nonce="00" * 32), Outcome.REPLAYED, "another nonce"),
        (lambda r: r["status"].update(summary="clean"), Outcome.REPLAYED, "nonce and status"),
        (lambda r: r["status"].update(since_reset_s=1e6), Outcome.REPLAYED, "nonce and status"),
        (lambda r: r["quote"].update(signature=_flip(r["quote"]["signature"])),
         Outcome.FORGED, "signature"),
        (lambda r: r["status"].pop("boot_id"), Outcome.MALFORMED, "status.boot_id"),
        (lambda r: r["status"].update(summary="fine"), Outcome.MALFORMED, "summary"),
        (lambda r: r["status"].update(host_id="p2"), Outcome.UNKNOWN_HOST, "asked 'p1'"),
        (lambda r: r.update(version=3), Outcome.MALFORMED, "not a v1 or v2"),
        (lambda r: r.update(quote="x"), Outcome.MALFORMED, "quote"),
        (lambda r: r["status"].update(role="root"), Outcome.MALFORMED, "status.role"),
        # The lock PCR's reported value must be the quoted one; it must be reported.
        (lambda r: r["pcrs"]["sha256"].update({"15": "11" * 32}), Outcome.UNEXPECTED_PCRS,
         "lock PCR value"),
        (lambda r: r["pcrs"]["sha256"].pop("15"), Outcome.UNEXPECTED_PCRS, "does not report"),
    ],
)  # fmt: skip
def test_verify_reply_table(mutate: object, outcome: Outcome, words: str) -> None:
    from recover.core.inventory import parse
    from recover.core.protocol import Rejected, verify_reply

    att = SoftwareAttestor()
    nonce = bytes(range(32))
    peer = parse([entry("p1", 1, att.pem), entry("p2", 2, att.pem)]).peers[0]
    reply = _reply(att, nonce)
    mutate(reply)  # type: ignore[operator]
    if outcome is Outcome.VERIFIED:
        assert verify_reply(peer, nonce, reply, {"p1", "p2"}).host_id == "p1"
        return
    with pytest.raises(Rejected) as e:
        verify_reply(peer, nonce, reply, {"p1", "p2"})
    assert e.value.outcome is outcome and words in e.value.reason, e.value.reason


@pytest.mark.parametrize(
    "changes,words",
    [
        ({"clock": {"clock": 5_000_000, "reset_count": 8, "restart_count": 0}}, "reset/restart"),
        ({"clock": {"clock": 1, "reset_count": 7, "restart_count": 0}}, "signed clock"),
        ({"since_reset_s": 9_000_000.0}, "exceeds the signed TPM clock"),
    ],
)
def test_status_must_agree_with_the_signed_clock(changes: dict, words: str) -> None:
    """A signed status whose clock claims contradict the quote's clockInfo is refused."""
    from recover.core.inventory import parse
    from recover.core.protocol import Rejected, verify_reply

    att = SoftwareAttestor(reset_count=7)
    nonce = bytes(32)
    peer = parse([entry("p1", 1, att.pem)]).peers[0]
    with pytest.raises(Rejected) as e:
        verify_reply(peer, nonce, _reply(att, nonce, **changes), {"p1"})
    assert e.value.outcome is Outcome.INCONSISTENT and words in e.value.reason


@pytest.mark.parametrize(
    "kind,role,outcome,words",
    [
        # the peer's payload: lock PCR quoted at its reset value
        ("payload", "boot", Outcome.VERIFIED, ""),
        ("payload", "agent", Outcome.VERIFIED, ""),
        # its normal OS (lock PCR extended): "boot" is a lie, "agent" the truth
        ("normal-os", "boot", Outcome.ROLE_MISMATCH, "its normal OS answered"),
        ("normal-os", "agent", Outcome.VERIFIED, ""),
        # root in the normal OS reports a zero lock PCR its quote does not show
        ("lying-value", "boot", Outcome.UNEXPECTED_PCRS, "lock PCR value"),
        # an older peer whose quote does not cover the lock PCR: its role is not attested
        ("old", "boot", Outcome.ROLE_MISMATCH, "does not cover lock PCR 15"),
        ("old", "agent", Outcome.VERIFIED, ""),
    ],
)
def test_only_a_quote_with_the_lock_pcr_at_reset_may_say_boot(
    kind: str, role: str, outcome: Outcome, words: str
) -> None:
    """Issue 9: the AK quotes at any time, so root in a peer's normal OS can run its own
    responder. The quote covers the lock PCR; "boot" needs it at reset."""
    from testing.peersim import LOCK_EXTENDED, LOCK_RESET

    from recover.core.inventory import parse
    from recover.core.protocol import Rejected, verify_reply

    att = SoftwareAttestor(
        lock_value={"payload": LOCK_RESET, "old": None}.get(kind, LOCK_EXTENDED),
        report_lock=LOCK_RESET if kind == "lying-value" else None,
    )
    nonce = bytes(range(32))
    peer = parse([entry("p1", 1, att.pem)]).peers[0]
    reply = _reply(att, nonce, role=role)
    if outcome is Outcome.VERIFIED:
        assert verify_reply(peer, nonce, reply, {"p1"}).role == role
        return
    with pytest.raises(Rejected) as e:
        verify_reply(peer, nonce, reply, {"p1"})
    assert e.value.outcome is outcome and words in e.value.reason, e.value.reason


@pytest.mark.parametrize(
    "sims,kind",
    [
        # A domain of 2, quorum 50%: one peer whose normal OS claims "boot, abnormal" used
        # to decide alone (needed was 1). Now it is not believed, and 2 are needed anyway.
        ([SimPeer("liar", behaviour="liar"), SimPeer("fine", summary="clean")], Kind.ISOLATED),
        ([SimPeer("liar", behaviour="liar"), SimPeer("down", summary="abnormal")],
         Kind.UNDETERMINED),
        ([SimPeer("liar", behaviour="liar"), SimPeer("liar2", behaviour="liar-lockvalue")],
         Kind.UNDETERMINED),
        # An honest agent saying abnormal (its payload ran already) counts as unaffected.
        ([SimPeer("agent", behaviour="agent"), SimPeer("down", summary="abnormal")],
         Kind.ISOLATED),
        ([SimPeer("old", behaviour="old"), SimPeer("down", summary="abnormal")],
         Kind.UNDETERMINED),
        # Two peers in their payloads, both down: correlated.
        ([SimPeer("down1"), SimPeer("down2")], Kind.CORRELATED),
    ],
)  # fmt: skip
def test_a_lying_peer_does_not_make_a_correlated_failure(sims: list, kind: Kind) -> None:
    att = SoftwareAttestor()
    with Fleet(sims, [me_entry(att)]) as fleet:
        res = ask(fleet.inventory(me_entry(att)), att)
    liars = [r for r in res.results if r.peer_id.startswith("liar") or r.peer_id == "old"]
    assert all(r.outcome is not Outcome.VERIFIED for r in liars), by_id(res)
    v = decide_counts(Reading.ABNORMAL, 25.0, res.results, res.domain_size, Policy("50%"))
    assert v.kind is kind, (v.reasons, by_id(res))
    assert v.counts["needed"] == 2


def test_lock_pcr_bank_order_does_not_matter() -> None:
    """The quoter adds the lock PCR to the first bank of its tpm.pcrs; an inventory that
    lists the banks in another order still verifies it (and still sees it at reset)."""
    import hashlib

    from testing.peersim import GOOD_PCRS

    from recover.core.inventory import parse
    from recover.core.protocol import verify_reply

    sha1 = {0: hashlib.sha1(b"pcr0").digest()}
    att = SoftwareAttestor(pcrs={**GOOD_PCRS, "sha1": sha1}, selection="sha256:0,2,4,7,9+sha1:0")
    nonce = bytes(range(32))
    peer = parse([entry("p1", 1, att.pem, pcrs={"sha1": sha1, **GOOD_PCRS})]).peers[0]
    assert next(iter(peer.pcrs)) == "sha1"
    assert verify_reply(peer, nonce, _reply(att, nonce), {"p1"}).role == "boot"
