"""testing/waiting.py: a wait ends at the event (or names what did not happen), and a
call that hangs fails instead of hanging the run."""

from __future__ import annotations

import threading

import pytest

from testing.waiting import returns, until


def test_until_returns_the_first_truthy_value() -> None:
    values = iter([0, None, "", 7, 8])
    assert until(lambda: next(values), "a value") == 7


def test_until_names_what_did_not_happen() -> None:
    with pytest.raises(TimeoutError, match="the flag is set"):
        until(lambda: False, "the flag is set", timeout=0.05)


def test_returns_hands_back_result_and_exception() -> None:
    assert returns(lambda: 42, "the answer") == 42
    with pytest.raises(KeyError):
        returns(lambda: {}["x"], "a lookup")


def test_returns_fails_on_a_call_that_never_returns() -> None:
    release = threading.Event()
    try:
        with pytest.raises(AssertionError, match="a blocked call did not return"):
            returns(release.wait, "a blocked call", within=0.05)
    finally:
        release.set()
