"""Receipts (docs/peer-protocol.md, "Receipts"): a requester whose reply verified tells
the answering host so, and that host stops waiting for it; nobody else can say so for
it. Real HTTP between the product's client and server; software attestors (the batch
binding and the tag are what is tested, not the TPM: tests/integration/test_peers_tpm.py
runs the rounds on swtpms)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from testing.waiting import until

from recover.core.protocol import RECEIPT_PATH, make_receipt, reply_signature
from recover.peers.client import query_all
from tests.integration.test_peers_v2 import ME, keys, post_many, request, serve

pytestmark = pytest.mark.integration
__all__ = ["keys", "serve"]  # fixtures


def send(port: int, body: bytes) -> tuple[int, dict[str, Any]]:
    return post_many(port, [body], RECEIPT_PATH)[0]


def test_a_verified_answer_is_receipted(keys: Any, serve: Any) -> None:
    from testing.peersim import SoftwareAttestor

    srv, inv = serve(SoftwareAttestor())
    res = query_all(inv, ME, keys[ME], deadline=10, timeout=5, retries=1)
    assert [r.outcome.value for r in res.results] == ["verified"]
    until(lambda: ME in srv.receipts, "the server recorded the receipt", timeout=30)
    assert srv.receipts[ME] >= srv.last_answer[ME]


def test_only_the_requester_can_receipt_its_answer(keys: Any, serve: Any) -> None:
    """r0 and r1 are answered in one batch: they share the quote's signature, never
    their nonces. Neither a wrong tag, nor another requester's, nor a request never
    made counts; the true receipt does, once."""
    from testing.peersim import SoftwareAttestor

    srv, _ = serve(SoftwareAttestor())
    n0, n1 = os.urandom(32), os.urandom(32)
    answers = post_many(srv.port, [request(keys["r0"], "r0", n0), request(keys["r1"], "r1", n1)])
    assert [code for code, _ in answers] == [200, 200]
    sig0, sig1 = (reply_signature(reply) for _, reply in answers)
    tries = {
        "random tag": json.dumps(
            {"version": 2, "requester": "r0", "nonce": n0.hex(), "tag": os.urandom(32).hex()}
        ).encode(),
        # r1 saw the shared signature but not r0's nonce: it can only guess one
        "r1 for r0": make_receipt("r0", os.urandom(32), sig1),
        "r0's nonce as r1": make_receipt("r1", n0, sig0),
        "no such request": make_receipt("r2", os.urandom(32), sig0),
        "not JSON": b"{",
        "version 1": json.dumps({"version": 1, "requester": "r0"}).encode(),
    }
    codes = {what: send(srv.port, body)[0] for what, body in tries.items()}
    assert codes == {
        "random tag": 403,
        "r1 for r0": 404,
        "r0's nonce as r1": 404,
        "no such request": 404,
        "not JSON": 400,
        "version 1": 400,
    }
    assert srv.receipts == {}
    code, reply = send(srv.port, make_receipt("r0", n0, sig0))
    assert (code, reply) == (200, {"version": 2, "received": True})
    assert set(srv.receipts) == {"r0"}
