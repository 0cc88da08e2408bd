"""One bad peer never aborts the round (issue 10, item 3): whatever a peer sends back —
deeply nested JSON, huge numbers, NaN, bytes that are not JSON at all — the client
ends the round with that peer's outcome, and the other peers still count. Real HTTP over
loopback; the replies come from a raw server that answers every request with the bytes
the test chooses."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator

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
                    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n"
                    conn.sendall(head.encode() + b"Connection: close\r\n\r\n" + body)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture(scope="module")
def round_with_a_hostile_peer() -> Iterator[tuple[RawPeer, object]]:
    att = SoftwareAttestor()
    raw = RawPeer()
    me = entry("self", 9, att.pem)
    with Fleet([SimPeer("honest")], [me]) as fleet:
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
