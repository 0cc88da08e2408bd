"""A real etcd (Debian's etcd-server 3.4) for tests and benchmarks: one member or a
3-member cluster on loopback, free ports, a temporary data directory each.

Every etcd is started by us and ended by its PID (SIGTERM, then SIGKILL); nothing else
is ever signalled. ``client_urls`` are what ``witness.endpoints`` takes (host:port).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from testing.ports import free_ports
from testing.swtpm import die_with_parent

#: Attempts to start a cluster: another process may still take a picked port before
#: etcd binds it (then etcd exits with "address already in use" and fresh ports are tried).
START_ATTEMPTS = 3


class EtcdMember:
    """One etcd process."""

    def __init__(
        self, name: str, data_dir: Path, client_port: int, peer_port: int, metrics_port: int
    ) -> None:
        self.name = name
        self.data_dir = data_dir
        self.client_port = client_port
        self.peer_port = peer_port
        self.metrics_port = metrics_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"{name}.log"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self, initial_cluster: str, token: str, state: str = "new") -> None:
        assert self.proc is None, "already running"
        argv = [
            shutil.which("etcd") or "/usr/bin/etcd",
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            f"http://{self.endpoint}",
            "--advertise-client-urls",
            f"http://{self.endpoint}",
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            initial_cluster,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            token,
            "--listen-metrics-urls",
            f"http://127.0.0.1:{self.metrics_port}",
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=subprocess.DEVNULL,
                stderr=log,
                preexec_fn=die_with_parent,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def healthy(self) -> bool:
        """One range request answered (the member has a leader and serves reads)."""
        try:
            req = urllib.request.Request(
                f"http://{self.endpoint}/v3/kv/range",
                data=json.dumps({"key": "AA=="}).encode(),
                method="POST",
            )
            with urllib.request.urlopen(req, timeout=2) as r:  # noqa: S310 - loopback
                return bool(json.loads(r.read()).get("header"))
        except (OSError, ValueError):
            return False


class Etcd:
    """An etcd cluster of ``members`` (1 or 3) on loopback."""

    def __init__(self, members: int = 1, base: str | os.PathLike[str] | None = None) -> None:
        self._own = base is None
        self.base = Path(base or tempfile.mkdtemp(prefix="etcd-")).resolve()
        self.n = members
        self.members: list[EtcdMember] = []
        self._pick_ports()

    def _pick_ports(self) -> None:
        ports = free_ports(3 * self.n)
        self.members = [
            EtcdMember(f"m{i}", self.base / f"m{i}", *ports[3 * i : 3 * i + 3])
            for i in range(self.n)
        ]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def endpoints_setting(self) -> str:
        """The value of ``witness.endpoints``."""
        return ",".join(self.endpoints)

    def start(self, timeout: float = 60.0) -> Etcd:
        for attempt in range(1, START_ATTEMPTS + 1):
            cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
            token = f"hr-{os.getpid()}-{self.members[0].client_port}"
            for m in self.members:
                m.start(cluster, token)
            deadline = time.monotonic() + timeout
            while not all(m.healthy() for m in self.members):
                dead = [m.name for m in self.members if not m.running()]
                if dead or time.monotonic() > deadline:
                    logs = self.log_tail()
                    self.stop()
                    if "address already in use" in logs and attempt < START_ATTEMPTS:
                        break  # a port was taken meanwhile: fresh ports, fresh data
                    raise RuntimeError(f"etcd did not come up (dead: {dead}):\n{logs}")
                time.sleep(0.1)
            else:
                return self
            for m in self.members:
                shutil.rmtree(m.data_dir, ignore_errors=True)
                m.log.unlink(missing_ok=True)
            self._pick_ports()
        raise AssertionError("unreachable: the last attempt returns or raises")

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    def log_tail(self, chars: int = 2000) -> str:
        """The end of every member's log, for failure messages."""
        return "\n".join(
            f"--- etcd {m.name} log ---\n" + m.log.read_text(errors="replace")[-chars:]
            for m in self.members
            if m.log.exists()
        )

    def close(self) -> None:
        self.stop()
        if self._own:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Etcd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def running(members: int = 1) -> Iterator[Etcd]:
    with Etcd(members) as etcd:
        yield etcd


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
