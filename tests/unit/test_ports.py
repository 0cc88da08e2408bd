"""testing.ports: a port is handed out once per process, whoever asks."""

from __future__ import annotations

from typing import Any

import pytest

from testing import ports


def test_no_port_is_handed_out_twice() -> None:
    seen: list[int] = []
    for _ in range(50):
        seen += ports.free_ports(3)
        seen.append(ports.free_port())
        p = ports.free_port_pair()
        seen += [p, p + 1]
    assert len(seen) == len(set(seen))


def test_a_port_the_kernel_hands_back_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel may give a just-released port again (CI: an etcd member listened on
    an agent's port); the registry refuses it and asks again."""
    first = ports.free_port()
    real = ports._bind
    calls = {"n": 0}

    def bind(stack: Any, port: int) -> int | None:
        calls["n"] += 1
        if port == 0 and calls["n"] <= 3:
            return first  # as if the kernel handed it back three times
        return real(stack, port)

    monkeypatch.setattr(ports, "_bind", bind)
    again = ports.free_port()
    # all three hand-backs refused; more real picks may be refused too when the kernel
    # returns a port this process handed out before (CI: the suite had many by then)
    assert again != first and calls["n"] >= 4
    pair = ports.free_port_pair()
    assert {pair, pair + 1}.isdisjoint({first, again})
