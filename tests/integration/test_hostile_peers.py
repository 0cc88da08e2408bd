"""One bad peer never aborts the round (issue 10, item 3): whatever a peer sends back —
deeply nested JSON, huge numbers, NaN, bytes that are not JSON at all — the client
ends the round with that peer's outcome, and the other peers still count. Real HTTP over
loopback; the replies come from a raw server that answers every request with the bytes
the test chooses."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testing.peersim import Fleet, SimPeer, SoftwareAttestor, entry

from recover.core.inventory import parse
from recover.core.protocol import Outcome
from recover.peers.client import query_all


class RawPeer:
    """Answers every HTTP request with ``self.body`` (status 200), then closes;
    ``@NONCE@`` in the body becomes the request's nonce, so that a reply gets past the
    nonce check into the deeper checks."""

    def __init__(self) -> None:
        self.body = b"{}"
        self.make: Callable[[bytes], bytes] | None = None  # request body -> reply body
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    request = b""
                    while b'"nonce"' not in request or not request.rstrip().endswith(b"}"):
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        request += chunk
                    found = re.search(rb'"nonce":"([0-9a-f]*)"', request)
                    body = self.body.replace(b"@NONCE@", found.group(1) if found else b"")
                    if self.make is not None:
                        body = self.make(request.partition(b"\r\n\r\n")[2])
                    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n"
                    conn.sendall(head.encode() + b"Connection: close\r\n\r\n" + body)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


# Asked once per test case, hundreds of rounds in a few seconds: paced, its answers would
# soon wait up to 1.5 s, past this client's 1 s timeout (the pace: test_peers_v2.py).
HONEST = SimPeer("honest", paced=False)


@pytest.fixture(scope="module")
def round_with_a_hostile_peer() -> Iterator[tuple[RawPeer, object]]:
    att = SoftwareAttestor()
    raw = RawPeer()
    me = entry("self", 9, att.pem)
    with Fleet([HONEST], [me]) as fleet:
        inv = parse([me, *fleet.entries, entry("hostile", raw.port, att.pem)])

        def ask() -> dict[str, Outcome]:
            res = query_all(inv, "self", att, deadline=3.0, timeout=1.0, retries=0)
            return {r.peer_id: r.outcome for r in res.results}

        try:
            yield raw, ask
        finally:
            raw.close()


_STATUS = (
    b'"host_id": "hostile", "boot_id": "b", "failure_domain": "rack-1", "role": "boot", '
    b'"summary": "abnormal", "since_reset_source": "tpm", '
    b'"clock": {"clock": 1, "reset_count": 1, "restart_count": 0}'
)
HOSTILE = [
    b"[" * 30_000 + b"]" * 30_000,  # RecursionError in json.loads (within the size cap)
    # float() of a 400-digit integer: OverflowError in the status checks
    b'{"version": 1, "nonce": "@NONCE@", "status": {'
    + _STATUS
    + b', "since_reset_s": 1'
    + b"0" * 400
    + b'}, "quote": {}}',
    b'{"version": 1, "nonce": "@NONCE@", "status": {'
    + _STATUS
    + b', "since_reset_s": NaN}, "quote": {}}',
    b'{"version": 1, "nonce": "@NONCE@", "status": {'
    + _STATUS
    + b', "since_reset_s": 1e999}, "quote": {}}',
    b"\xff\xfe not even text",
    b"",
]


@pytest.mark.parametrize("body", HOSTILE, ids=range(len(HOSTILE)))
def test_a_hostile_reply_is_that_peers_outcome(round_with_a_hostile_peer, body: bytes) -> None:
    raw, ask = round_with_a_hostile_peer
    raw.body = body
    outcomes = ask()  # must not raise: the round ends with a verdict's worth of results
    assert outcomes["honest"] is Outcome.VERIFIED
    assert outcomes["hostile"] in (Outcome.MALFORMED, Outcome.REPLAYED, Outcome.UNKNOWN_HOST)


@settings(max_examples=60, deadline=None)
@given(
    body=st.binary(max_size=512)
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    ).map(lambda obj: __import__("json").dumps(obj).encode())
)
def test_no_reply_aborts_the_round(round_with_a_hostile_peer, body: bytes) -> None:
    raw, ask = round_with_a_hostile_peer
    raw.body = body
    outcomes = ask()
    assert outcomes["honest"] is Outcome.VERIFIED
    assert outcomes["hostile"] is not Outcome.VERIFIED


# --- v2: mutations of a VALID batched reply (issue 10, item 3) ---------------------------
#
# The replies above are garbage from the start; these start from a reply the product's own
# Responder made for the client's real request (a batch with its audit path and quote) and
# change one thing in it, so the fuzz reaches the batch, path, quote and clock checks.
# Properties: the round always ends with a PeerResults (never raises), the honest peer
# still counts, and whatever the hostile peer is believed to say is exactly what it signed.

_hostile_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["00" * 32, "zz", "ff" * 31, "", "abnormal", "boot", "agent", "tpm"])
    | st.integers(0, 5000),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)


def _paths(obj: Any, at: tuple = ()) -> list[tuple]:
    out = [at]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*at, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*at, i))
    return out


_plans = st.tuples(
    st.integers(0, 10**6),
    st.sampled_from(["replace", "delete", "add"]),
    _hostile_values,
    st.text(max_size=6),
)


def _mutate(reply: dict, plan: tuple) -> dict:
    """One change (``plan``, drawn in the test): replace a value, delete a key or an
    item, or add a key (to an object) or an item (anywhere else)."""
    import copy

    which, op, value, key = plan
    out = copy.deepcopy(reply)
    paths = _paths(out)[1:]
    at = paths[which % len(paths)]
    parent = out
    for k in at[:-1]:
        parent = parent[k]
    if op == "replace":
        parent[at[-1]] = value
    elif op == "delete":
        del parent[at[-1]]
    elif isinstance(parent[at[-1]], dict):
        parent[at[-1]][key] = value
    else:
        parent[at[-1]] = [parent[at[-1]], value]
    return out


class _V2Maker:
    """Makes the hostile peer's VALID v2 reply to a request, then hands it to a mutator."""

    def __init__(self, requester_pem: str, decided: threading.Event | None = None) -> None:
        from testing.peersim import evidence_of

        from recover.peers.server import Responder, StatusSource

        self.att = SoftwareAttestor()
        inv = parse([entry("self", 9, requester_pem), entry("hostile", 1, self.att.pem)])
        status = StatusSource(
            "hostile", "rack-1", "boot", evidence_of("abnormal"), "b", decided=decided
        )
        self.responder = Responder(inv, self.att, status)
        self.mutate: Callable[[dict], bytes] = lambda r: json.dumps(r).encode()
        self.signed: list[dict] = []

    def __call__(self, request: bytes) -> bytes:
        from recover.peers.server import Request

        req = self.responder.parse(request, 2)
        if not isinstance(req, Request):
            return json.dumps(req[1]).encode()
        code, reply = self.responder.quote_batch([req])[0]
        self.signed.append(reply["status"])
        return self.mutate(reply)


@pytest.fixture(scope="module")
def round_with_a_mutating_peer() -> Iterator[tuple[_V2Maker, Any]]:
    att = SoftwareAttestor()
    raw = RawPeer()
    maker = _V2Maker(att.pem)
    raw.make = maker
    me = entry("self", 9, att.pem)
    with Fleet([HONEST], [me]) as fleet:
        inv = parse([me, *fleet.entries, entry("hostile", raw.port, maker.att.pem)])

        def ask() -> Any:
            return query_all(inv, "self", att, deadline=3.0, timeout=1.0, retries=0)

        try:
            yield maker, ask
        finally:
            raw.close()


def _believed_only_as_signed(res: Any, maker: _V2Maker) -> None:
    from recover.core.protocol import PeerResults

    assert isinstance(res, PeerResults)
    got = {r.peer_id: r for r in res.results}
    assert got["honest"].outcome is Outcome.VERIFIED
    hostile = got["hostile"]
    if hostile.outcome is Outcome.VERIFIED:  # e.g. an unknown top-level key was added
        assert hostile.status is not None
        assert hostile.status.to_json() == maker.signed[-1], "believed an unsigned status"


@settings(max_examples=40, deadline=None)
@given(plan=_plans)
def test_a_mutated_v2_reply_never_aborts_the_round(round_with_a_mutating_peer, plan) -> None:
    maker, ask = round_with_a_mutating_peer
    maker.mutate = lambda reply: json.dumps(_mutate(reply, plan)).encode()
    _believed_only_as_signed(ask(), maker)


@settings(max_examples=40, deadline=None)
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
       cut=st.none() | st.integers(0, 10**6))  # fmt: skip
def test_a_corrupted_v2_reply_never_aborts_the_round(round_with_a_mutating_peer, flips, cut):
    maker, ask = round_with_a_mutating_peer

    def corrupt(reply: dict) -> bytes:
        body = bytearray(json.dumps(reply).encode())
        for at, value in flips:
            body[at % len(body)] = value
        return bytes(body[: cut % (len(body) + 1)] if cut is not None else body)

    maker.mutate = corrupt
    _believed_only_as_signed(ask(), maker)


@settings(max_examples=300, deadline=None)
@given(plan=_plans)
def test_verify_reply_raises_only_rejected_for_a_mutated_v2_reply(plan) -> None:
    """The same mutations straight into the verifier (no network: many more cases),
    through the client's bounded JSON reader as on the wire."""
    from recover.core.protocol import Rejected, make_request, request_qualifying_data, verify_reply
    from recover.peers.client import loads_bounded

    me, maker = _PURE
    nonce = bytes(range(32))
    reply = json.loads(
        maker(make_request("self", nonce, me.quote(request_qualifying_data(nonce, "self"))))
    )
    peer = parse([entry("hostile", 1, maker.att.pem)]).peers[0]
    wire = json.dumps(_mutate(reply, plan)).encode()
    try:
        obj = loads_bounded(wire)
    except ValueError:
        return
    try:
        status = verify_reply(peer, nonce, obj, {"hostile", "self"}, requester="self")
    except Rejected:
        return
    assert status.to_json() == reply["status"], "believed an unsigned status"


_PURE_ME = SoftwareAttestor()
_PURE = (_PURE_ME, _V2Maker(_PURE_ME.pem))


def test_asking_is_believed_only_as_signed() -> None:
    """A payload still in its rounds says ``asking: true``; a man in the middle who turns
    it into ``false`` (so that this host would stop answering that peer at once) breaks
    the quote's binding: the edited reply is not believed. Once the payload has decided
    it says ``false`` itself."""
    from recover.core.protocol import Rejected, make_request, request_qualifying_data, verify_reply

    me, decided = SoftwareAttestor(), threading.Event()
    maker = _V2Maker(me.pem, decided)
    peer = parse([entry("hostile", 1, maker.att.pem)]).peers[0]

    def reply() -> tuple[bytes, dict]:
        nonce = os.urandom(32)
        req = make_request("self", nonce, me.quote(request_qualifying_data(nonce, "self")))
        return nonce, json.loads(maker(req))

    nonce, r = reply()
    assert verify_reply(peer, nonce, r, {"hostile", "self"}, requester="self").asking is True
    r["status"]["asking"] = False
    with pytest.raises(Rejected):
        verify_reply(peer, nonce, r, {"hostile", "self"}, requester="self")
    decided.set()
    nonce, r = reply()
    assert verify_reply(peer, nonce, r, {"hostile", "self"}, requester="self").asking is False
