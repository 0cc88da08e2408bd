"""Peer protocol v2 (issue 10, items 1 and 2): batched answers, and the attacks on them;
no retry storms, a cheap reject path. Quotes are counted by the attestor (the "TPM"),
never inferred from timing; tests wait for events (testing.waiting)."""

from __future__ import annotations

import asyncio
import copy
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from testing.peersim import Fleet, SimPeer, SoftwareAttestor, entry, evidence_of
from testing.waiting import until

from recover.core.inventory import Inventory, parse
from recover.core.protocol import (
    Outcome,
    Quote,
    Rejected,
    make_request,
    request_qualifying_data,
    verify_reply,
)
from recover.peers.client import query_all
from recover.peers.http import http_post
from recover.peers.server import Limits, Request, Responder, StatusSource, serve_in_background

pytestmark = pytest.mark.integration

ME = "asker"


class GatedAttestor(SoftwareAttestor):
    """A TPM that is busy until the test opens the gate (quotes run off the loop)."""

    inline = False

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.waiting = 0

    def quote(self, qualifying_data: bytes, with_lock: bool = False) -> Quote:
        if with_lock:  # a reply: wait for the gate
            self.waiting += 1
            assert self.gate.wait(60), "the test never opened the gate"
        return super().quote(qualifying_data, with_lock)


class _Cfg:
    peers_listen = "127.0.0.1:0"
    peers_inventory = "/nonexistent"


REQUESTERS = [f"r{i}" for i in range(8)]


@pytest.fixture
def keys() -> dict[str, SoftwareAttestor]:
    return {r: SoftwareAttestor() for r in [ME, *REQUESTERS]}


def inventory(keys: dict[str, SoftwareAttestor], srv_att: Any, port: int = 1) -> Inventory:
    """The server's and ME's inventory: the other requesters sit in another failure
    domain (the server answers them; ME does not ask them)."""
    others = [entry(r, 9, a.pem, "rack-2" if r != ME else "rack-1") for r, a in keys.items()]
    return parse([*others, entry("srv", port, srv_att.pem)])


@pytest.fixture
def serve(keys: dict[str, SoftwareAttestor]) -> Iterator[Any]:
    """serve(attestor, **limits) -> (server, the client's inventory); stopped after."""
    stack: list[Any] = []

    def start(att: Any, **limits: Any) -> tuple[Any, Inventory]:
        status = StatusSource("srv", "rack-1", "boot", evidence_of("abnormal"), "boot-x")
        cm = serve_in_background(
            _Cfg(), att, status, inventory=inventory(keys, att), limits=Limits(**limits)
        )
        srv = cm.__enter__()
        stack.append(cm)
        return srv, inventory(keys, att, srv.port)

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


def request(att: SoftwareAttestor, who: str, nonce: bytes, version: int = 2) -> bytes:
    return make_request(who, nonce, att.quote(request_qualifying_data(nonce, who)), version)


def post_many(port: int, bodies: list[bytes], path: str = "/v2/status") -> list[tuple[int, dict]]:
    """POST every body concurrently (real HTTP); the decoded answers in order."""
    import json

    async def run() -> list[tuple[int, bytes]]:
        return await asyncio.gather(*(http_post("127.0.0.1", port, b, 30, path) for b in bodies))

    return [(code, json.loads(data)) for code, data in asyncio.run(run())]


# --- attacks on the batch binding (pure: the product's Responder and verifier) -----------


def batch(keys: dict[str, SoftwareAttestor], att: SoftwareAttestor, who: list[str], nonces: list):
    """One batch answered by a real Responder: its replies, in order."""
    status = StatusSource("srv", "rack-1", "boot", evidence_of("abnormal"), "b")
    responder = Responder(inventory(keys, att), att, status)
    reqs = [
        Request(2, w, n, keys[w].quote(request_qualifying_data(n, w)))
        for w, n in zip(who, nonces, strict=True)
    ]
    answers = responder.quote_batch(reqs)
    assert responder.quotes == 1 and all(code == 200 for code, _ in answers)
    return [reply for _, reply in answers]


def check(keys: Any, att: SoftwareAttestor, reply: dict, who: str, nonce: bytes) -> Any:
    peer = inventory(keys, att).get("srv")
    assert peer is not None
    return verify_reply(peer, nonce, reply, {"srv", *keys}, requester=who)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 8])
def test_every_reply_of_a_batch_verifies_for_its_requester(keys: Any, size: int) -> None:
    att = SoftwareAttestor()
    who = REQUESTERS[:size]
    nonces = [bytes([i]) * 32 for i in range(size)]
    replies = batch(keys, att, who, nonces)
    assert len({r["quote"]["signature"] for r in replies}) == 1  # one quote for all
    for w, n, r in zip(who, nonces, replies, strict=True):
        assert check(keys, att, r, w, n).host_id == "srv"


def _expect(outcome: Outcome, call: Any) -> str:
    with pytest.raises(Rejected) as e:
        call()
    assert e.value.outcome is outcome, e.value.reason
    return e.value.reason


def test_a_path_from_another_batch_is_refused(keys: Any) -> None:
    att = SoftwareAttestor()
    n = bytes(range(32))
    a = batch(keys, att, ["r0", "r1", "r2"], [n, b"\x01" * 32, b"\x02" * 32])[0]
    b = batch(keys, att, ["r0", "r3", "r4"], [n, b"\x03" * 32, b"\x04" * 32])[0]
    assert check(keys, att, a, "r0", n) and check(keys, att, b, "r0", n)
    mixed = copy.deepcopy(a)
    mixed["batch"] = b["batch"]  # a's quote, b's path (same index, same size)
    assert "not over this nonce" in _expect(
        Outcome.REPLAYED, lambda: check(keys, att, mixed, "r0", n)
    )


def test_a_swapped_leaf_is_refused(keys: Any) -> None:
    """Another requester's path, or our path at another index, proves no leaf of ours."""
    att = SoftwareAttestor()
    nonces = [bytes([i]) * 32 for i in range(5)]
    replies = batch(keys, att, REQUESTERS[:5], nonces)
    mine = replies[2]
    for other in (0, 1, 3, 4):
        swapped = copy.deepcopy(mine)
        swapped["batch"] = replies[other]["batch"]
        _expect(Outcome.REPLAYED, lambda s=swapped: check(keys, att, s, "r2", nonces[2]))
        moved = copy.deepcopy(mine)
        moved["batch"]["index"] = other
        with pytest.raises(Rejected) as e:
            check(keys, att, moved, "r2", nonces[2])
        assert e.value.outcome in (Outcome.REPLAYED, Outcome.MALFORMED), e.value.reason


def test_a_leaf_replayed_under_another_requester_is_refused(keys: Any) -> None:
    """r1 (a peer of the inventory, with its own AK) asks with r0's nonce: its reply
    answers r0's nonce, but its leaf binds r1, so it proves nothing to r0. (v1 bound the
    nonce only; v2 binds the requester too.)"""
    att = SoftwareAttestor()
    n = bytes(range(32))
    r0, r1 = batch(keys, att, ["r0", "r1"], [n, n])
    assert check(keys, att, r1, "r1", n)
    assert r1["nonce"] == n.hex()
    _expect(Outcome.REPLAYED, lambda: check(keys, att, r1, "r0", n))
    assert check(keys, att, r0, "r0", n)


def test_an_odd_batch_and_a_lie_about_its_size(keys: Any) -> None:
    att = SoftwareAttestor()
    nonces = [bytes([i]) * 32 for i in range(3)]
    replies = batch(keys, att, REQUESTERS[:3], nonces)
    last = replies[2]
    assert last["batch"]["size"] == 3 and len(last["batch"]["path"]) == 1
    assert check(keys, att, last, "r2", nonces[2])
    for size, index in ((4, 2), (2, 1), (4, 3)):
        lie = copy.deepcopy(last)
        lie["batch"].update(size=size, index=index)
        with pytest.raises(Rejected) as e:
            check(keys, att, lie, "r2", nonces[2])
        assert e.value.outcome in (Outcome.REPLAYED, Outcome.MALFORMED), e.value.reason


@pytest.mark.parametrize(
    "change,words",
    [
        ({"batch": None}, "batch must be an object"),
        ({"batch": {"size": True, "index": 0, "path": []}}, "batch.size"),
        ({"batch": {"size": 1, "index": -1, "path": []}}, "leaf -1"),
        ({"batch": {"size": 5000, "index": 0, "path": []}}, "tree of 5000"),
        ({"batch": {"size": 2, "index": 0, "path": ["zz"]}}, "hex"),
        ({"batch": {"size": 2, "index": 0, "path": ["00" * 32] * 13}}, "<= 12"),
        ({"batch": {"size": 2, "index": 0, "path": []}}, "shorter"),
        ({"version": True}, "not a v1 or v2 reply"),
    ],
)
def test_malformed_batches(keys: Any, change: dict, words: str) -> None:
    att = SoftwareAttestor()
    n = bytes(32)
    reply = batch(keys, att, ["r0"], [n])[0]
    reply.update(change)
    assert words in _expect(Outcome.MALFORMED, lambda: check(keys, att, reply, "r0", n))


def test_a_v2_reply_is_not_checked_without_the_requester(keys: Any) -> None:
    att = SoftwareAttestor()
    n = bytes(32)
    reply = batch(keys, att, ["r0"], [n])[0]
    peer = inventory(keys, att).get("srv")
    assert peer is not None
    _expect(Outcome.MALFORMED, lambda: verify_reply(peer, n, reply, {"srv"}))


# --- the server: batching, joining, the nonce cache, busy, connection caps -------------


def test_200_replays_cost_one_quote(serve: Any, keys: Any) -> None:
    """The attack of the security review: one captured request replayed 200 times
    (50 at once, then 150 one by one) makes ONE quote; every replay gets the same
    answer. Its requester's quote is verified once, too."""
    att = SoftwareAttestor()
    srv, _ = serve(att, max_per_source=64)
    body = request(keys["r0"], "r0", bytes(range(32)))
    first = post_many(srv.port, [body] * 50)
    rest = [post_many(srv.port, [body])[0] for _ in range(150)]
    answers = first + rest
    assert all(code == 200 for code, _ in answers), answers[0]
    assert len({str(a) for _, a in answers}) == 1
    assert att.quotes == 1, att.quotes
    r = srv.responder
    assert (r.quotes, r.cache_hits + r.joined) == (1, 199)
    assert len(r._verified) == 1


def test_a_retry_joins_the_pending_answer_and_one_quote_answers_the_queue(
    serve: Any, keys: Any
) -> None:
    """While the TPM quotes for the first request, 5 other requesters ask (3 times
    each, as a client that times out and retries): when the TPM is free, ONE quote
    answers all of them."""
    att = GatedAttestor()
    srv, _ = serve(att, max_per_source=64)
    first = request(keys["r0"], "r0", b"\x00" * 32)
    others = [request(keys[w], w, bytes([i + 1]) * 32) for i, w in enumerate(REQUESTERS[1:6])]
    out: dict[str, Any] = {}  # by name: the threads may end in either order
    t0 = threading.Thread(target=lambda: out.update(first=post_many(srv.port, [first])))
    t0.start()
    until(lambda: att.waiting == 1, "the TPM quotes for the first request")
    t = threading.Thread(target=lambda: out.update(others=post_many(srv.port, others * 3)))
    t.start()
    until(lambda: len(srv.responder._queue) == 5, "5 requests queued")
    until(lambda: srv.responder.joined == 10, "the retries joined")
    att.gate.set()
    t0.join(30)
    t.join(30)
    answers = out["first"] + out["others"]
    assert all(code == 200 for code, _ in answers)
    assert srv.responder.quotes == 2 and srv.responder.batches == 2
    assert [a["batch"]["size"] for _, a in out["first"]] == [1]
    assert {a["batch"]["size"] for _, a in out["others"]} == {5}
    peer = inventory(keys, att).get("srv")
    assert peer is not None
    for i, w in enumerate(REQUESTERS[1:6]):
        st = verify_reply(peer, bytes([i + 1]) * 32, answers[1 + i][1], set(keys), requester=w)
        assert st.host_id == "srv"


def test_requests_arriving_during_the_pace_share_one_quote(serve: Any, keys: Any) -> None:
    """A quiet host answers its first request at once; the next batch waits for the pace
    (next_quote_at), and what arrives meanwhile is answered by that batch's one quote.
    The pace's wait is held open by the test (an event, not a clock)."""
    att = SoftwareAttestor()
    srv, _ = serve(att, max_per_source=64)
    r = srv.responder
    gate = threading.Event()
    delays: list[float] = []

    async def gated(seconds: float) -> None:
        delays.append(seconds)
        while not gate.is_set():
            await asyncio.sleep(0.01)

    r._sleep = gated
    first = post_many(srv.port, [request(keys["r0"], "r0", b"\x00" * 32)])
    assert first[0][0] == 200 and (r.quotes, delays) == (1, [])
    bodies = [request(keys[w], w, bytes([i + 1]) * 32) for i, w in enumerate(("r1", "r2"))]
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.extend(post_many(srv.port, bodies)))
    t.start()
    until(lambda: len(delays) == 1 and len(r._queue) == 2, "two requests wait for the pace")
    assert 0 < delays[0] <= Limits().pace
    assert r.quotes == 1, "nothing is quoted while the pace holds"
    gate.set()
    t.join(30)
    assert [code for code, _ in out] == [200, 200]
    assert (r.quotes, r.batches, r.paced) == (2, 2, 1)
    assert {a["batch"]["size"] for _, a in out} == {2}


def test_a_full_queue_says_busy_and_the_client_waits(serve: Any, keys: Any) -> None:
    att = GatedAttestor()
    srv, inv = serve(att, max_pending=1, max_per_source=64, retry_after=0.1)
    # the TPM is busy with r0's request; r1's fills the queue
    bodies = [request(keys[w], w, bytes([i]) * 32) for i, w in enumerate(("r0", "r1"))]
    held: list[Any] = []
    t = threading.Thread(target=lambda: held.append(post_many(srv.port, bodies[:1])))
    t.start()
    until(lambda: att.waiting == 1, "the TPM quotes for r0")
    t2 = threading.Thread(target=lambda: held.append(post_many(srv.port, bodies[1:])))
    t2.start()
    until(lambda: len(srv.responder._queue) == 1, "the queue is full")
    # A third request is refused before any TPM work, with a Retry-After.
    with socket.create_connection(("127.0.0.1", srv.port)) as s:
        body = request(keys["r2"], "r2", b"\x09" * 32)
        s.sendall(b"POST /v2/status HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        head = s.recv(65536).split(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in head, head
    # A client round meanwhile: the peer is busy, not unreachable, and the client keeps
    # asking; the gate opens once the server has said busy to it.
    opener = threading.Thread(
        target=lambda: (until(lambda: srv.responder.busy >= 2, "busy said"), att.gate.set())
    )
    opener.start()
    res = query_all(inv, ME, keys[ME], deadline=20, timeout=10, retries=0)
    opener.join(30)
    t.join(30)
    t2.join(30)
    (r,) = res.results
    assert r.outcome is Outcome.VERIFIED and r.attempts >= 2, r
    assert all(code == 200 for code, _ in held[0] + held[1])


def test_busy_until_the_deadline_is_busy_not_unreachable(serve: Any, keys: Any) -> None:
    att = GatedAttestor()
    srv, inv = serve(att, max_pending=1, max_per_source=64, retry_after=0.05)
    bodies = [request(keys[w], w, bytes([i]) * 32) for i, w in enumerate(("r0", "r1"))]
    t = threading.Thread(target=lambda: post_many(srv.port, bodies[:1]))
    t.start()
    until(lambda: att.waiting == 1, "the TPM quotes for r0")
    t2 = threading.Thread(target=lambda: post_many(srv.port, bodies[1:]))
    t2.start()
    until(lambda: len(srv.responder._queue) == 1, "the queue is full")
    try:
        res = query_all(inv, ME, keys[ME], deadline=4.0, timeout=1.0, retries=0)
        (r,) = res.results
        assert r.outcome is Outcome.BUSY and "HTTP 503" in r.reason, r
        assert r.attempts >= 2  # it kept asking, without counting retries
    finally:
        att.gate.set()
        t.join(30)
        t2.join(30)


def test_rejected_requests_cost_no_quote(serve: Any, keys: Any) -> None:
    att = SoftwareAttestor()
    srv, _ = serve(att)
    n = bytes(32)
    stranger = SoftwareAttestor()
    forged = request(stranger, "r0", n)  # r0's name, another key
    wrong_nonce = make_request("r1", n, keys["r1"].quote(request_qualifying_data(b"x" * 32, "r1")))
    answers = post_many(srv.port, [forged, wrong_nonce, b"{}", b"[" * 5000 + b"]" * 5000])
    assert [c for c, _ in answers] == [403, 403, 400, 400], answers
    assert att.quotes == 0 and srv.responder.quotes == 0


def test_idle_connections_do_not_starve_a_peer(serve: Any, keys: Any) -> None:
    """256 idle connections from one address, then 256 more from 256 others: a peer
    asking from its own address is answered, and the idle ones are let go at the header
    deadline."""
    att = SoftwareAttestor()
    srv, inv = serve(att, header_timeout=10.0, read_timeout=10.0)
    idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(256)]
    try:
        for i in range(256):
            s = socket.socket()
            s.bind((f"127.0.1.{i % 250 + 1}" if i < 250 else f"127.0.2.{i}", 0))
            s.connect(("127.0.0.1", srv.port))
            idle.append(s)
        until(lambda: srv.active >= 16 + 256, "the idle connections are held")
        assert srv.by_source["127.0.0.1"] == 16  # the rest from there were told busy
        res = query_all(inv, ME, keys[ME], deadline=10, timeout=5, retries=0, source="127.0.0.7")
        assert res.results[0].outcome is Outcome.VERIFIED, res.results[0]
        until(lambda: srv.active == 0, "the idle connections were let go")
    finally:
        for s in idle:
            s.close()


# --- compatibility with v1 ------------------------------------------------------------


def test_a_v1_client_gets_a_v1_reply_from_a_v2_server(serve: Any, keys: Any) -> None:
    att = SoftwareAttestor()
    srv, inv = serve(att)
    res = query_all(inv, ME, keys[ME], deadline=5, timeout=2, retries=0, version=1)
    assert res.results[0].outcome is Outcome.VERIFIED
    code, reply = post_many(srv.port, [request(keys["r0"], "r0", bytes(32), 1)], "/v1/status")[0]
    assert code == 200 and reply["version"] == 1 and "batch" not in reply
    # v1 on the v2 path (and v2 on the v1 path) is refused: the path names the version
    code, reply = post_many(srv.port, [request(keys["r0"], "r0", bytes(32), 1)])[0]
    assert code == 400 and reply["error"]["code"] == "version"


def test_a_v2_client_falls_back_to_v1_for_a_v1_peer(keys: Any) -> None:
    att = keys[ME]
    me = entry(ME, 9, att.pem)
    with Fleet([SimPeer("old-wire", behaviour="v1"), SimPeer("new")], [me]) as fleet:
        res = query_all(fleet.inventory(me), ME, att, deadline=5, timeout=2, retries=0)
    got = {r.peer_id: r for r in res.results}
    assert got["old-wire"].outcome is Outcome.VERIFIED and got["old-wire"].attempts == 2
    assert got["new"].outcome is Outcome.VERIFIED and got["new"].attempts == 1
    assert att.quotes == 1  # the request's one quote served both versions
