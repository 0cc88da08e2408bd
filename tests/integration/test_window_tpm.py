"""Staggered boots through the boot's own gather.run (serving while it asks), with
peers backed by real swtpms and `host-recover agent` processes: a peer that leaves POST
after this host's first round is waited for; peers that never come up end the wait
undetermined, never isolated."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from testing.waiting import returns

from recover.core.verdict import Stop
from tests.integration.test_peers_tpm import Host, boot, fleet, run_self, write_inventory

pytestmark = [pytest.mark.tpm, pytest.mark.integration]

__all__ = ["fleet"]  # the fixture, shared with test_peers_tpm


class OnLine(logging.Handler):
    """Runs ``action`` (in a thread) the first time a log line contains ``text``."""

    def __init__(self, text: str, action: Any) -> None:
        super().__init__(logging.INFO)
        self.text, self.action, self.fired = text, action, threading.Event()
        self.thread: threading.Thread | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if not self.fired.is_set() and self.text in record.getMessage():
            self.fired.set()
            self.thread = threading.Thread(target=self.action)
            self.thread.start()


def test_a_peer_leaving_post_late_is_waited_for(fleet: dict[str, Host]) -> None:
    boot(fleet, cut=set(fleet))
    write_inventory(fleet)
    fleet["p1"].start_agent(role="boot")  # p2 and p3 are still in POST
    late = OnLine("peers round 1:", lambda: fleet["p2"].start_agent(role="boot"))
    logger = logging.getLogger("recover.peers.rounds")
    logger.addHandler(late)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        d = returns(lambda: run_self(fleet), "the payload's rounds end", within=300)
    finally:
        logger.removeHandler(late)
        logger.setLevel(old)
        if late.thread is not None:
            late.thread.join(30)
    assert late.fired.is_set(), "a first round with silent peers"
    assert str(d.verdict.kind) == "correlated-failure", d.verdict.reasons
    conv = d.convergence
    assert conv is not None and conv.rounds >= 2 and conv.stopped is Stop.SETTLED, conv
    rec = d.to_json()["verdict"]["convergence"]
    assert rec["rounds"] == conv.rounds and rec["stopped"] == "settled"
    assert any("rounds over" in r for r in d.verdict.reasons), d.verdict.reasons


def test_peers_that_stay_dark_end_the_wait_undetermined(fleet: dict[str, Host]) -> None:
    boot(fleet, cut=set(fleet))
    write_inventory(fleet)
    d = returns(lambda: run_self(fleet, verdict_wait=8.0), "the wait ends", within=120)
    assert str(d.verdict.kind) == "undetermined", d.verdict.reasons
    conv = d.convergence
    assert conv is not None and conv.stopped is Stop.WINDOW and conv.rounds >= 2, conv
    assert set(conv.silent) == {"p1", "p2", "p3"}
    assert any("3 peers never answered within the wait" in r for r in d.verdict.reasons)
