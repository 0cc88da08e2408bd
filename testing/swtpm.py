"""A real software TPM (swtpm) for tests: start, power-cycle, power-cut, stop.

Every swtpm is started by us and ended by its PID; nothing else is ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from testing.ports import free_port_pair

#: How many port pairs ``SwTpm.start`` tries when swtpm finds one taken.
BIND_ATTEMPTS = 5


class PortTaken(RuntimeError):
    """swtpm could not bind its port pair: something took a port after it was picked."""


def die_with_parent() -> None:
    """``preexec_fn``: the child is SIGKILLed when the process that started it dies, so a
    test run or demo that crashes never leaves a QEMU, swtpm or agent behind."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class SwTpm:
    """One swtpm process on loopback with persistent state in ``state_dir``."""

    def __init__(
        self, state_dir: str | os.PathLike[str] | None = None, extra_args: tuple[str, ...] = ()
    ) -> None:
        """``extra_args`` are appended to swtpm's argv (e.g. ``("--log", "file=F,level=20")``)."""
        self.extra_args = tuple(extra_args)
        self._own_dir = state_dir is None
        self.state_dir = Path(state_dir or tempfile.mkdtemp(prefix="swtpm-")).resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for tpm2-tools and our CLI against this TPM."""
        return {
            **os.environ,
            "TPM2TOOLS_TCTI": self.tcti,
            "HOST_RECOVER_TCTI": self.tcti,
            "TSS2_LOG": "all+none",
        }

    def start(self) -> SwTpm:
        """Power on (and TPM2_Startup(CLEAR), sent by swtpm itself).

        The port pair is picked free, then released for swtpm to bind: in between, a
        connection made by another process can be given one of the two ports as its
        source port (Linux hands connect() the even ports, and the control port P+1 of
        an odd P is even). swtpm then exits with "Address already in use": start again
        on a new pair, a bounded number of times."""
        assert self.proc is None, "already running"
        for attempt in range(1, BIND_ATTEMPTS + 1):
            try:
                return self._start_once()
            except PortTaken:
                if attempt == BIND_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self) -> SwTpm:
        self.port = free_port_pair()
        argv = [
            shutil.which("swtpm") or "swtpm",
            "socket",
            "--tpm2",
            "--tpmstate",
            f"dir={self.state_dir}",
            "--server",
            f"type=tcp,port={self.port},bindaddr=127.0.0.1",
            "--ctrl",
            f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
            "--flags",
            "not-need-init,startup-clear",
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=die_with_parent
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                self._reap()
                if "Address already in use" in err:
                    raise PortTaken(f"swtpm on {self.port}/{self.port + 1}: {err.strip()}")
                raise RuntimeError(f"swtpm exited: {err.strip()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn,
            ):
                self._ping(conn)
                return self
            time.sleep(0.02)
        self.kill()
        raise RuntimeError("swtpm did not come up within 10 s")

    @staticmethod
    def _ping(conn: socket.socket) -> None:
        """One TPM2_GetRandom round trip: swtpm has finished its Startup and committed
        its state, so a power cut right after start() is a power cut of a started TPM."""
        conn.sendall(bytes.fromhex("80010000000c0000017b0008"))
        want, got = 10, b""
        while len(got) < want:
            chunk = conn.recv(want - len(got))
            if not chunk:
                raise OSError("swtpm closed the connection")
            got += chunk
            if len(got) >= 6:
                want = int.from_bytes(got[2:6], "big")

    def unread_bytes(self) -> int:
        """Bytes clients sent to this swtpm (server or control port) that it has not read:
        a client is waiting for an answer, e.g. while the swtpm is stopped (SIGSTOP)."""
        ports = {self.port, self.port + 1}
        total = 0
        with open("/proc/net/tcp", encoding="ascii") as f:
            next(f)  # the header
            for line in f:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port in ports and fields[3] == "01":  # TCP_ESTABLISHED
                    total += int(fields[4].split(":")[1], 16)  # rx_queue
        return total

    def _ctrl(self, *args: str) -> None:
        subprocess.run(
            ["swtpm_ioctl", "--tcp", f"127.0.0.1:{self.port + 1}", *args],
            check=True,
            capture_output=True,
            timeout=10,
        )

    def shutdown_orderly(self) -> None:
        """TPM2_Shutdown(CLEAR) as the kernel sends it on poweroff, then power off."""
        subprocess.run(
            ["tpm2_shutdown", "--clear"], env=self.env, check=True, capture_output=True, timeout=10
        )
        self.stop()

    def stop(self) -> None:
        """Power off through the control channel (no TPM2_Shutdown unless sent before)."""
        if self.proc is None:
            return
        try:
            self._ctrl("-s")
            self.proc.wait(timeout=10)
        except (subprocess.SubprocessError, OSError):
            self.kill()
        self._reap()

    def kill(self) -> None:
        """Power cut: SIGKILL our swtpm; volatile state is lost, NV is kept."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._reap()

    def _reap(self) -> None:
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def power_cut_and_restart(self) -> SwTpm:
        self.kill()
        return self.start()

    def reboot_orderly(self) -> SwTpm:
        self.shutdown_orderly()
        return self.start()

    def close(self) -> None:
        self.kill()
        if self._own_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> SwTpm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
