"""A network namespace a test made (``ip netns``), for guests whose network must not be
QEMU's user network: a persistent tap device QEMU attaches to inside it, and the
addresses its peer agents listen on. Nothing in it reaches the machine's own network
except what ``forward`` relays (a loopback port of the namespace to the same loopback
port outside, e.g. a swtpm); processes started in it are the test's to end (by PID)
before ``close``."""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import socket
import subprocess
import threading
from collections.abc import Sequence

CLONE_NEWNET = 0x40000000
#: The namespace's ephemeral ports (IPv4 and IPv6), disjoint from the default range.
EPHEMERAL = "20000 29999"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Netns:
    def __init__(self) -> None:
        self.name = f"hr{os.getpid()}-{secrets.token_hex(3)}"
        self._listeners: dict[int, socket.socket] = {}
        _ip("netns", "add", self.name)
        try:
            self.run("ip", "link", "set", "lo", "up")
            # Its own ephemeral ports below the machine's (32768-60999 by default):
            # ``forward`` binds, in here, loopback ports picked free *outside*
            # (testing/ports.py), and a swtpm restarted on a new port pair must not
            # find its port taken by a connection made in here (CI: EADDRINUSE when a
            # power-cut peer's swtpm came back on a port an agent's connection held).
            self.run("sysctl", "-q", "-w", f"net.ipv4.ip_local_port_range={EPHEMERAL}")
        except BaseException:
            self.close()
            raise

    def prefix(self) -> list[str]:
        """An argv prefix that runs a command inside the namespace (exec: same PID)."""
        return ["ip", "netns", "exec", self.name]

    def run(self, *argv: str) -> str:
        out = subprocess.run(
            [*self.prefix(), *argv], check=True, capture_output=True, text=True, timeout=30
        )
        return out.stdout

    def add_tap(self, name: str, addresses: Sequence[str]) -> None:
        """A persistent tap device ``name`` (QEMU: ``-netdev tap,ifname=NAME``), up, with
        ``addresses`` (CIDR; IPv6 without duplicate address detection: usable at once)."""
        self.run("ip", "tuntap", "add", "dev", name, "mode", "tap")
        self.run("ip", "link", "set", name, "up")
        for addr in addresses:
            v6 = ":" in addr
            self.run("ip", *(["-6"] if v6 else []), "addr", "add", addr, "dev", name,
                     *(["nodad"] if v6 else []))  # fmt: skip

    def tcp_socket(self, family: int = socket.AF_INET6) -> socket.socket:
        """A TCP socket that lives in the namespace (made by a thread that entered it:
        setns changes only the calling thread, and a socket keeps its namespace)."""
        made: list[socket.socket] = []
        failure: list[BaseException] = []

        def enter_and_make() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns")
                finally:
                    os.close(fd)
                made.append(socket.socket(family, socket.SOCK_STREAM))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                failure.append(e)

        t = threading.Thread(target=enter_and_make)  # ends in the namespace: never reused
        t.start()
        t.join()
        if failure:
            raise failure[0]
        return made[0]

    def forward(self, port: int) -> None:
        """Relay connections to 127.0.0.1:``port`` in the namespace to 127.0.0.1:``port``
        outside it, until ``close`` (once per port)."""
        if port in self._listeners:
            return
        lst = self.tcp_socket(socket.AF_INET)
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", port))
        lst.listen(16)
        self._listeners[port] = lst
        threading.Thread(target=self._accept, args=(lst, port), daemon=True).start()

    @staticmethod
    def _accept(lst: socket.socket, port: int) -> None:
        while True:
            try:
                inside, _ = lst.accept()
            except OSError:  # closed: the namespace is going
                return
            try:
                outside = socket.create_connection(("127.0.0.1", port), timeout=10)
            except OSError:
                inside.close()
                continue
            outside.settimeout(None)
            for a, b in ((inside, outside), (outside, inside)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def close(self) -> None:
        for lst in self._listeners.values():
            lst.close()
        self._listeners.clear()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Copy until either side closes; then close both (the other pipe ends too)."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
