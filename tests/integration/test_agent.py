"""The status server under abuse: it answers with clear JSON errors and keeps serving."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testing.peersim import SoftwareAttestor, entry, evidence_of
from testing.waiting import until

from recover.core.inventory import parse
from recover.core.protocol import MAX_BODY, Outcome
from recover.errors import ConfigError
from recover.peers.client import query_all
from recover.peers.server import Limits, StatusSource, parse_listen, serve_in_background

ME = "asker"


class _Cfg:
    peers_listen = "127.0.0.1:0"
    peers_inventory = "/nonexistent"


@pytest.fixture
def agent() -> Iterator[tuple[Any, SoftwareAttestor, Any]]:
    asker, server_att = SoftwareAttestor(), SoftwareAttestor()
    inv_entries = [entry(ME, 9, asker.pem), entry("srv", 1, server_att.pem)]
    status = StatusSource("srv", "rack-1", "agent", evidence_of("abnormal"), "boot-x")
    limits = Limits(read_timeout=0.5, max_connections=8)
    with serve_in_background(
        _Cfg(), server_att, status, inventory=parse(inv_entries), limits=limits
    ) as srv:
        inv = parse([entry(ME, 9, asker.pem), entry("srv", srv.port, server_att.pem)])
        yield srv, asker, inv


def raw(port: int, data: bytes, *, shut: bool = True, timeout: float = 5) -> tuple[int, dict]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def post(port: int, body: bytes, path: str = "/v1/status") -> tuple[int, dict]:
    req = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    return raw(port, req)


def assert_still_serving(inv: Any, asker: SoftwareAttestor) -> None:
    res = query_all(inv, ME, asker, deadline=3, timeout=2, retries=0)
    assert res.results[0].outcome is Outcome.VERIFIED, res.results[0]
    st = res.results[0].status
    assert st is not None and st.host_id == "srv" and st.boot_id == "boot-x"


@pytest.mark.parametrize(
    "body,code,error",
    [
        (b"{not json", 400, "malformed"),
        (b"[1,2]", 400, "malformed"),
        (b'{"version": 3}', 400, "version"),
        (b'{"version": 1, "requester": 5, "nonce": "00"}', 400, "malformed"),
        (b'{"version": 1, "requester": "asker", "nonce": "zz"}', 400, "malformed"),
        (
            b'{"version": 1, "requester": "nobody", "nonce": "' + b"00" * 32 + b'"}',
            403,
            "unknown-requester",
        ),
        (
            b'{"version": 1, "requester": "asker", "nonce": "' + b"00" * 32 + b'", "quote": 1}',
            400,
            "malformed",
        ),
        (
            b'{"version": 1, "requester": "asker", "nonce": "'
            + b"00" * 32
            + b'", "quote": {"attest": "00", "signature": "00"}}',
            403,
            "forged",
        ),
    ],
)
def test_bad_requests_get_json_errors(agent: Any, body: bytes, code: int, error: str) -> None:
    srv, asker, inv = agent
    got_code, reply = post(srv.port, body)
    assert (got_code, reply["error"]["code"]) == (code, error), reply
    assert reply["error"]["message"]
    assert_still_serving(inv, asker)


def test_oversized_wrong_path_and_framing(agent: Any) -> None:
    srv, asker, inv = agent
    big = f"POST /v1/status HTTP/1.1\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode()
    assert raw(srv.port, big)[0] == 413
    assert post(srv.port, b"{}", path="/v2/other")[0] == 404
    assert raw(srv.port, b"GET /v1/status HTTP/1.1\r\nContent-Length: 0\r\n\r\n")[0] == 404
    assert raw(srv.port, b"POST /v1/status HTTP/1.1\r\n\r\n")[1]["error"]["code"] == "malformed"
    assert raw(srv.port, b"POST /v1/status HTTP/1.1\r\nContent-Length: 10\r\n\r\n{")[0] == 400
    assert raw(srv.port, b"\x00\xff garbage\r\n\r\n")[0] == 400
    assert raw(srv.port, b"POST / HTTP/1.1\r\n" + b"X: y\r\n" * 20000)[0] == 431
    assert_still_serving(inv, asker)


def test_expect_100_continue_and_duplicate_lengths(agent: Any) -> None:
    srv, asker, inv = agent
    body = b"{not json"
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(
            b"POST /v1/status HTTP/1.1\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        assert b" 400 " in s.recv(1000).split(b"\r\n")[0]
    dup = b"POST /v1/status HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"
    assert raw(srv.port, dup)[1]["error"]["message"] == "bad Content-Length"
    assert_still_serving(inv, asker)


def test_slow_clients_time_out_and_connections_are_capped(agent: Any) -> None:
    srv, asker, inv = agent
    # The server ends a half-sent request at its read timeout (raw() gives up after 5 s).
    code, reply = raw(srv.port, b"POST /v1/status HTTP/1.1\r\nContent-Le", shut=False)
    assert code == 408 and reply["error"]["code"] == "timeout"
    assert "whole request within 0.5 s" in reply["error"]["message"], reply
    # Fill every connection slot with slow clients; the next one is told to come back.
    slow = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(8)]
    try:
        until(lambda: srv.active == 8, "the server holds the 8 slow connections")
        code, reply = raw(srv.port, b"", shut=False)
        assert code == 503 and reply["error"]["code"] == "busy"
    finally:
        for s in slow:
            s.close()
    until(lambda: srv.active == 0, "the slow connections are over")
    assert_still_serving(inv, asker)


def test_concurrent_requests_are_all_answered(agent: Any) -> None:
    srv, asker, inv = agent
    results: list[Any] = []

    def one() -> None:
        results.append(query_all(inv, ME, asker, deadline=5, timeout=3, retries=2))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 6 and all(r.verified == 1 for r in results)


def test_listen_address_parsing() -> None:
    assert parse_listen("0.0.0.0:7469") == ("0.0.0.0", 7469)
    assert parse_listen("[::1]:80") == ("::1", 80)
    assert parse_listen(":0") == ("0.0.0.0", 0)
    with pytest.raises(ConfigError):
        parse_listen("nope")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)
_request = st.fixed_dictionaries(
    {},
    optional={
        "version": st.sampled_from([1, 2, "1", None]),
        "requester": st.sampled_from(["asker", "srv", "x", 5]),
        "nonce": st.sampled_from(["00" * 32, "zz", "", None]),
        "quote": _json
        | st.fixed_dictionaries({"attest": st.text(max_size=8), "signature": st.text(max_size=8)}),
        "pcrs": _json,
    },
)


@settings(max_examples=150, deadline=None)
@given(body=_request | _json)
def test_responder_never_crashes(body: Any) -> None:
    """Any JSON gets a 4xx JSON error (never a traceback, never a status)."""
    from recover.peers.server import Responder

    asker, att = _FUZZ
    inv = parse([entry(ME, 9, asker.pem), entry("srv", 1, att.pem)])
    status = StatusSource("srv", "rack-1", "agent", evidence_of("clean"), "b")
    code, reply = Responder(inv, att, status).handle(json.dumps(body).encode())
    assert code in (400, 403) and set(reply) == {"version", "error"}
    assert reply["error"]["message"]


@settings(max_examples=150, deadline=None)
@given(
    reply=_json
    | st.fixed_dictionaries(
        {"version": st.just(1), "nonce": st.just("00" * 32), "status": _json, "quote": _json}
    )
)
def test_client_never_believes_garbage(reply: Any) -> None:
    from recover.core.protocol import Rejected, verify_reply

    asker, att = _FUZZ
    peer = parse([entry("srv", 1, att.pem)]).peers[0]
    with pytest.raises(Rejected):
        verify_reply(peer, bytes(32), reply, {"srv"})


_FUZZ = (SoftwareAttestor(), SoftwareAttestor())


def test_a_bug_in_a_handler_is_a_500_and_the_server_goes_on() -> None:
    class Broken:
        inline = True

        def clock(self) -> dict[str, int]:
            raise RuntimeError("boom")

        def quote(self, qualifying_data: bytes, with_lock: bool = False) -> Any:
            raise AssertionError

    asker = SoftwareAttestor()
    inv = parse([entry(ME, 9, asker.pem), entry("srv", 1, asker.pem)])
    status = StatusSource("srv", "rack-1", "agent", evidence_of("clean"), "b")
    with serve_in_background(_Cfg(), Broken(), status, inventory=inv) as srv:  # type: ignore[arg-type]
        inv2 = parse([entry(ME, 9, asker.pem), entry("srv", srv.port, asker.pem)])
        for _ in range(2):
            res = query_all(inv2, ME, asker, deadline=3, timeout=2, retries=0)
            assert res.results[0].outcome is Outcome.REFUSED
            assert "HTTP 500: RuntimeError: boom" in res.results[0].reason
