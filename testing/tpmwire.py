"""A loopback TCP relay in front of swtpm that timestamps the TPM traffic of one run.

It listens on a port pair like swtpm's (server, control), forwards both to swtpm and
records two instants on the server side: when the TCTI connected (for a payload:
interpreter, imports and ESAPI init done) and when the first command's bytes arrived,
with that command's code (bench/coldstart.py times the payload's cold start with it).
Given the client's ``pid``, it also reads the client's CPU time at the first command,
before forwarding it: the client waits for the answer then, so that is exactly its CPU
from exec to the first command, a figure the other jobs of a shared machine barely move.
Every loop is bounded; the threads are daemons and end with ``close()``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

from testing.ports import free_port_pair

#: Command codes a payload sends first, by name (TPM 2.0 Part 2, TPM_CC).
CC_NAMES = {0x17A: "GetCapability", 0x173: "ReadPublic", 0x16E: "NV_Read", 0x144: "Startup"}
MAX_CONNECTIONS = 100_000  # bound of the relay's accept loop
MAX_READS = 10_000_000  # bound of one relayed connection


def command_name(code: int) -> str:
    """``GetCapability`` for 0x17a; the hex code for the others."""
    return CC_NAMES.get(code, hex(code))


def cpu_ns(pid: int) -> int | None:
    """CPU time of process ``pid``, all its threads, in ns (/proc/PID/task/*/schedstat:
    nanosecond run times, where /proc/PID/stat counts 10 ms ticks); None if it is gone."""
    total = 0
    try:
        with os.scandir(f"/proc/{pid}/task") as tasks:
            for t in tasks:
                with open(f"/proc/{pid}/task/{t.name}/schedstat", encoding="ascii") as f:
                    total += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total


class Relay:
    """Loopback TCP relay in front of swtpm's server and control ports."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port_pair()
        self.connected: float | None = None
        self.first: tuple[float, int] | None = None  # (monotonic time, command code)
        self.pid: int | None = None  # the client process, for first_cpu_ns
        self.first_cpu_ns: int | None = None  # its CPU time at the first command
        self._closed = threading.Event()
        self._listeners: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        for off in (0, 1):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", self.port + off))
            s.listen(16)
            s.settimeout(0.2)
            self._listeners.append(s)
            t = threading.Thread(target=self._accept, args=(s, off), daemon=True)
            t.start()
            self._threads.append(t)

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def arm(self) -> None:
        """Forget the last run's timestamps."""
        self.connected = None
        self.first = None
        self.pid = None
        self.first_cpu_ns = None

    def _accept(self, lsock: socket.socket, off: int) -> None:
        for _ in range(MAX_CONNECTIONS):
            if self._closed.is_set():
                return
            try:
                conn, _ = lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if off == 0 and self.connected is None:
                self.connected = time.monotonic()
            try:
                up = socket.create_connection(("127.0.0.1", self.target_port + off), timeout=10)
            except OSError:
                conn.close()
                continue
            pair = [conn, up]
            for src, dst, watch in ((conn, up, off == 0), (up, conn, False)):
                threading.Thread(
                    target=self._pump, args=(src, dst, watch, pair), daemon=True
                ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, watch: bool, pair: list) -> None:
        src.settimeout(120)
        try:
            for _ in range(MAX_READS):
                data = src.recv(65536)
                if not data:
                    break
                if watch and self.first is None:
                    code = int.from_bytes(data[6:10], "big") if len(data) >= 10 else 0
                    self.first = (time.monotonic(), code)
                    if self.pid is not None:
                        self.first_cpu_ns = cpu_ns(self.pid)
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        pair.pop()
        if not pair:  # the second direction to finish closes both sockets
            src.close()
            dst.close()

    def close(self) -> None:
        self._closed.set()
        for s in self._listeners:
            s.close()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
