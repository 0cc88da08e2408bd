"""The pace of answer quotes (issue 10: at most 5 quotes per host per round): pure logic
of ``recover.peers.server.next_quote_at``, no TPM, no clock."""

from __future__ import annotations

import pytest

from recover.peers.server import Limits, next_quote_at

L = Limits()  # pace 0.2 s, cap 1.5 s, window 10 s


def test_a_quiet_host_quotes_at_once() -> None:
    assert next_quote_at([], 100.0, L) == 100.0
    # its last answer quote is older than the window: quiet again
    assert next_quote_at([80.0, 89.9], 100.0, L) == 100.0


@pytest.mark.parametrize(
    ("starts", "at"),
    [
        ([100.0], 100.2),  # 1 recent quote: 0.2 s after its start
        ([100.0, 100.2], 101.0),  # 2: 0.8 s
        ([100.0, 100.2, 101.0], 102.5),  # 3: 1.8 s, capped at 1.5 s
        ([100.0, 100.2, 101.0, 102.5], 104.0),  # 4: the cap
    ],
)
def test_the_gap_grows_with_recent_quotes_up_to_the_cap(starts: list[float], at: float) -> None:
    assert next_quote_at(starts, starts[-1], L) == pytest.approx(at)


def test_a_gap_already_spent_costs_nothing() -> None:
    # the TPM took longer than the gap: the next batch goes as soon as it is free
    assert next_quote_at([100.0, 100.2], 103.0, L) == 103.0


def test_only_the_window_counts() -> None:
    # 3 quotes long ago and 1 recent: the gap of 1 recent quote
    assert next_quote_at([80.0, 81.0, 82.0, 99.0], 99.0, L) == pytest.approx(99.2)


def test_pace_zero_is_greedy() -> None:
    assert next_quote_at([100.0, 100.1, 100.2], 100.2, Limits(pace=0)) == 100.2


def test_the_cap_bounds_every_wait() -> None:
    starts: list[float] = []
    now = 0.0
    for _ in range(50):  # a host asked without pause, its TPM instant
        at = next_quote_at(starts, now, L)
        assert at - now <= L.pace_cap
        starts.append(at)
        now = at
