"""The witness's pure parts: heartbeat records and their attacks (software-signed quotes,
the product's verifier), the classification on the revision clock, and how witnessed
peers combine with answered ones in the verdict (docs/witness.md, docs/verdict.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from testing.peersim import BAD_PCRS, SoftwareAttestor, entry

from recover.core.evidence import Reading
from recover.core.inventory import parse
from recover.core.protocol import Outcome, PeerResult, PeerStatus, Rejected, canonical_json
from recover.core.verdict import Kind, Policy, decide_counts
from recover.core.witness import (
    Entry,
    Heartbeat,
    WitnessClass,
    alive_key,
    heartbeat_key,
    make_record,
    qualifying_data,
    verify_record,
    view,
    window_revisions,
)
from recover.peers.witness import decision_summary, prefix_end

ATT = SoftwareAttestor()
OTHER = SoftwareAttestor()
INV = parse([entry("me", 1, ATT.pem), entry("p1", 2, OTHER.pem)])
P1 = INV.get("p1")


def status(host: str = "p1", rev_read: int = 1000, prev_rev: int = 900, **kw: Any) -> dict:
    att = OTHER if host == "p1" else ATT
    return {
        "version": 1,
        "host_id": host,
        "failure_domain": "rack-1",
        "boot_id": "b",
        "role": "agent",
        "summary": "clean",
        "seq": 5,
        "rev_read": rev_read,
        "prev_rev": prev_rev,
        "interval_s": 30.0,
        "time": 1.7e9,
        "since_reset_s": 100.0,
        "clock": {
            k: v for k, v in att.clock().items() if k in ("clock", "reset_count", "restart_count")
        },
        "decision": None,
        **kw,
    }


def record(st: dict, att: SoftwareAttestor = OTHER) -> bytes:
    return make_record(st, att.quote(qualifying_data(st)))


def test_a_genuine_heartbeat_verifies() -> None:
    hb = verify_record(P1, record(status()), 1001)
    assert (hb.host_id, hb.rev_read, hb.span) == ("p1", 1000, 100)


def _altered(field: str, value: Any) -> bytes:
    rec = json.loads(record(status()))
    rec["status"][field] = value
    return canonical_json(rec)


@pytest.mark.parametrize(
    "raw,mod_rev,outcome",
    [
        (record(status(), att=ATT), 1001, Outcome.FORGED),  # signed by another host's AK
        (_altered("rev_read", 5000), 5001, Outcome.REPLAYED),  # moved on the clock
        (_altered("summary", "abnormal"), 1001, Outcome.REPLAYED),  # status altered
        (record(status()), 1500, Outcome.REPLAYED),  # an old record written again later
        (record(status()), 1000, Outcome.REPLAYED),  # written before it was made
        (record(status(host="me"), att=ATT), 1001, Outcome.UNKNOWN_HOST),  # under p1's key
        (record(status(failure_domain="rack-9")), 1001, Outcome.UNKNOWN_HOST),
        (record(status(prev_rev=0)), 1001, Outcome.MALFORMED),
        (b"{not json", 1001, Outcome.MALFORMED),
        (b"x" * 20000, 1001, Outcome.MALFORMED),
    ],
)
def test_what_etcd_cannot_forge(raw: bytes, mod_rev: int, outcome: Outcome) -> None:
    with pytest.raises(Rejected) as e:
        verify_record(P1, raw, mod_rev)
    assert e.value.outcome is outcome, e.value.reason


def test_a_heartbeat_from_unexpected_pcrs_is_refused() -> None:
    bad = SoftwareAttestor(key=OTHER.key, pcrs=BAD_PCRS)
    st = status()
    with pytest.raises(Rejected) as e:
        verify_record(P1, make_record(st, bad.quote(qualifying_data(st))), 1001)
    assert e.value.outcome is Outcome.UNEXPECTED_PCRS


def hb(rev: int, span: int = 10, interval: float = 30.0) -> Heartbeat:
    return Heartbeat("h", "rack-1", "b", 1, rev, rev - span, interval, "clean", 0.0, None, rev + 1)


@pytest.mark.parametrize(
    "peer_rev,alive,expected",
    [
        (1000, False, WitnessClass.SAME),
        (1000 + 50, False, WitnessClass.SAME),  # window 120 s at 10 revs/30 s ≈ 50 revs
        (1000 - 50, False, WitnessClass.SAME),
        (1000 + 500, False, WitnessClass.LATER),
        (1000 - 500, False, WitnessClass.EARLIER),
        (1000 + 500, True, WitnessClass.ALIVE),
        (1000 + 5, True, WitnessClass.PENDING),  # lease not yet expired: may just have stopped
    ],
)
def test_classification_on_the_revision_clock(
    peer_rev: int, alive: bool, expected: WitnessClass
) -> None:
    from recover.core.witness import classify

    anchor = hb(1000)
    assert window_revisions(anchor, 120.0) == 51
    assert classify(anchor, Entry(hb(peer_rev), "", alive), 120.0) is expected


def test_view_without_own_heartbeat_has_no_anchor() -> None:
    key = heartbeat_key("/hr", "rack-1", "p1")
    kvs = {key: (record(status()), 1001), alive_key("/hr", "rack-1", "p1"): (b"p1", 10)}
    v = view("me", (P1,), INV.get("me"), kvs, "/hr", "rack-1", 120.0, 2000)  # type: ignore[arg-type]
    assert v.classes == {"p1": WitnessClass.NO_ANCHOR}
    assert "no heartbeat of this host" in v.anchor_problem
    assert v.entries["p1"].alive and v.entries["p1"].heartbeat is not None


def test_view_with_anchor() -> None:
    kvs = {
        heartbeat_key("/hr", "rack-1", "me"): (record(status("me", 990, 890), att=ATT), 991),
        heartbeat_key("/hr", "rack-1", "p1"): (record(status()), 1001),
    }
    v = view("me", (P1,), INV.get("me"), kvs, "/hr", "rack-1", 120.0, 2000)  # type: ignore[arg-type]
    assert v.classes == {"p1": WitnessClass.SAME} and v.anchor is not None
    assert v.to_json()["peers"]["p1"]["class"] == "same"


def test_key_segments_and_range_end() -> None:
    with pytest.raises(ValueError):
        heartbeat_key("/hr", "rack/1", "h")
    with pytest.raises(ValueError):
        heartbeat_key("/hr", "rack-1", "")
    assert prefix_end(b"/hr/rack-1/") == b"/hr/rack-10"
    assert prefix_end(b"a\xff") == b"b"


def test_decision_summary_is_bounded() -> None:
    rec = {"action": "recover", "verdict": {"kind": "correlated-failure", "reasons": ["x"] * 50}}
    s = decision_summary(rec)
    assert s is not None and s["kind"] == "correlated-failure" and len(s["reasons"]) == 12
    assert decision_summary(None) is None and decision_summary({"verdict": 5}) is not None


# --- the verdict with witnessed peers ---------------------------------------------------

OWN = 30.0


def answered(i: int, summary: Reading, since: float, role: str = "boot") -> PeerResult:
    st = PeerStatus(
        f"p{i}",
        "b",
        "rack",
        role,
        summary,
        False,
        since,
        "tpm",
        {"clock": 1, "reset_count": 1, "restart_count": 0},
    )
    return PeerResult(f"p{i}", Outcome.VERIFIED, "", st, 1.0, 1)


def silent(i: int) -> PeerResult:
    return PeerResult(f"p{i}", Outcome.UNREACHABLE, "connection refused")


POLICY = Policy(quorum="50%", window=120.0)


@pytest.mark.parametrize(
    "results,witness,kind,witnessed",
    [
        # all peers still off: the witness alone decides
        ((silent(1), silent(2), silent(3)), {"p1": "same", "p2": "same", "p3": "same"}, Kind.CORRELATED, 3),
        # without the witness: as today
        ((silent(1), silent(2), silent(3)), None, Kind.UNDETERMINED, 0),
        # the witness knows nothing useful (absent, pending, unverified)
        ((silent(1), silent(2), silent(3)), {"p1": "absent", "p2": "pending", "p3": "unverified"}, Kind.UNDETERMINED, 0),
        # one witnessed + one answered abnormal reach the quorum of 2
        ((answered(1, Reading.ABNORMAL, OWN + 3), silent(2), silent(3)), {"p2": "same"}, Kind.CORRELATED, 1),
        # the witness shows the others alive or stopped at another time: isolated
        ((silent(1), silent(2), silent(3)), {"p1": "alive", "p2": "earlier", "p3": "later"}, Kind.ISOLATED, 0),
        # an answered peer wins over the witness (it answered from its normal OS)
        ((answered(1, Reading.CLEAN, OWN + 3, "agent"), silent(2), silent(3)), {"p1": "same"}, Kind.UNDETERMINED, 0),
        # contradiction: the witness says p1 stopped with us, p1 attests it has been up
        # for an hour: the witness is ignored altogether
        ((answered(1, Reading.CLEAN, OWN + 3600, "agent"), silent(2), silent(3)), {"p1": "same", "p2": "same", "p3": "same"}, Kind.UNDETERMINED, 0),
    ],
)  # fmt: skip
def test_witnessed_and_answered_combine(
    results: tuple[PeerResult, ...], witness: dict | None, kind: Kind, witnessed: int
) -> None:
    v = decide_counts(Reading.ABNORMAL, OWN, results, 3, POLICY, witness)
    assert v.kind is kind, v.reasons
    assert v.counts.get("witnessed", 0) == witnessed
    if witness is not None and v.counts.get("witness_contradicted"):
        assert any(r.startswith("witness ignored") for r in v.reasons)


def test_witness_never_makes_a_clean_host_recover() -> None:
    v = decide_counts(
        Reading.CLEAN, OWN, (silent(1), silent(2)), 2, POLICY, {"p1": "same", "p2": "same"}
    )
    assert v.kind is Kind.CLEAN


def test_reason_lines_keep_answered_and_witnessed_apart() -> None:
    v = decide_counts(
        Reading.ABNORMAL, OWN, (silent(1), silent(2)), 2, POLICY, {"p1": "same", "p2": "same"}
    )
    assert v.kind is Kind.CORRELATED and v.counts["same_event"] == 2
    assert v.reasons[1].startswith("0 of 2 peers went down abnormally"), v.reasons
    assert "same event (witnessed): p1, p2" in v.reasons[2]


def test_a_heartbeat_from_an_older_boot_is_no_anchor() -> None:
    """The anchor must come from the boot that went down (its TPM decision record's boot
    id): a heartbeat of an older boot would place this host's loss too early."""
    kvs = {
        heartbeat_key("/hr", "rack-1", "me"): (record(status("me", 990, 890), att=ATT), 991),
        heartbeat_key("/hr", "rack-1", "p1"): (record(status()), 1001),
    }
    me = INV.get("me")
    v = view("me", (P1,), me, kvs, "/hr", "rack-1", 120.0, 2000, "b")  # type: ignore[arg-type]
    assert v.classes == {"p1": WitnessClass.SAME}  # status() says boot_id "b"
    v = view("me", (P1,), me, kvs, "/hr", "rack-1", 120.0, 2000, "0123abcd")  # type: ignore[arg-type]
    assert v.classes == {"p1": WitnessClass.NO_ANCHOR} and "stale" in v.anchor_problem


@pytest.mark.parametrize("mod_rev,ok", [(1001, True), (1007, True), (1008, False)])
def test_replay_bound_is_twice_a_beat(mod_rev: int, ok: bool) -> None:
    """A beat saw 3 revisions (prev_rev 997 → rev_read 1000): the write may follow the
    read by up to 2 × 3 + 1 (a slow quote, jitter); beyond that it is a replay."""
    raw = record(status(rev_read=1000, prev_rev=997))
    if ok:
        assert verify_record(P1, raw, mod_rev).span == 3
    else:
        with pytest.raises(Rejected) as e:
            verify_record(P1, raw, mod_rev)
        assert e.value.outcome is Outcome.REPLAYED
