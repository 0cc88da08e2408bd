"""Bounded waits for an observable event: tests wait for events, benchmarks measure time.

``until`` polls a condition (a file appears, a socket holds data, a counter reaches a
value, a process exits) and raises when it does not hold within a generous bound;
``returns`` runs a call that must come back at all, so a hang fails the test with a
message instead of hanging the run. Neither says how fast anything is: the bounds are
guards against hangs, sized for a loaded 2-core machine, never assertions on duration.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def until(condition: Callable[[], T], what: str, timeout: float = 60.0, poll: float = 0.02) -> T:
    """The first truthy value of ``condition()``; TimeoutError naming ``what`` if none
    comes within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: did not happen within {timeout:g} s")
        time.sleep(poll)


def returns(call: Callable[[], T], what: str, within: float = 120.0) -> T:
    """``call()``'s result (or its exception); AssertionError if it has not returned
    within ``within`` seconds (the thread is left behind as a daemon)."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            error.append(e)

    thread = threading.Thread(target=run, name=f"returns: {what}", daemon=True)
    thread.start()
    thread.join(within)
    if thread.is_alive():
        raise AssertionError(f"{what} did not return within {within:g} s (hung)")
    if error:
        raise error[0]
    return result[0]
