"""Free loopback ports for the test and bench processes we start (swtpm, etcd, agents,
QEMU forwards), handed out once per process.

A port picked here is only *probably* free: it is released before the process that
will listen on it starts. Two pickers in one test (the fleet's agents, then an etcd
cluster) could be handed the same released port by the kernel, and then one listener
answers for the other (CI saw an agent's readiness probe answered by something else
while the agent itself could not bind). So every port handed out is remembered and
never handed out again in this process, whoever asks.
"""

from __future__ import annotations

import contextlib
import socket
import threading

_lock = threading.Lock()
_given: set[int] = set()
ATTEMPTS = 200


def _bind(stack: contextlib.ExitStack, port: int) -> int | None:
    s = stack.enter_context(socket.socket())
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        return None
    return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports on 127.0.0.1, none handed out before in this process.
    The sockets of the picks are held open until all ``n`` are picked."""
    with _lock, contextlib.ExitStack() as stack:
        picked: list[int] = []
        for _ in range(ATTEMPTS):
            port = _bind(stack, 0)
            if port is not None and port not in _given:
                picked.append(port)
                if len(picked) == n:
                    _given.update(picked)
                    return picked
        raise RuntimeError(f"no {n} free ports on 127.0.0.1 in {ATTEMPTS} tries")


def free_port() -> int:
    """One free port on 127.0.0.1 (see ``free_ports``)."""
    return free_ports(1)[0]


def free_port_pair() -> int:
    """A port P such that P and P+1 are free on 127.0.0.1 (swtpm: server and control),
    neither handed out before in this process."""
    with _lock:
        for _ in range(ATTEMPTS):
            with contextlib.ExitStack() as stack:
                port = _bind(stack, 0)
                if port is None or port >= 65535 or {port, port + 1} & _given:
                    continue
                if _bind(stack, port + 1) is None:
                    continue
                _given.update((port, port + 1))
                return port
        raise RuntimeError("no free port pair on 127.0.0.1")
