"""One test VM: its own swtpm (persistent state), OVMF (own VARS copy), QEMU (TCG, or
KVM where it works), disks, and a serial console read line by line with timestamps.

Power semantics, as on real hardware:
  guest poweroff   the kernel sends TPM2_Shutdown, QEMU sends CMD_SHUTDOWN, swtpm exits
  power_cut()      kill -9 of QEMU (by PID); swtpm is killed too (its volatile state is
                   lost without TPM2_Shutdown; NV survives) and restarted on next boot
Every process here is started by us and ended by its PID.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from testing.netns import Netns
from testing.swtpm import die_with_parent

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")  # 2M: ~1.5 s faster than 4M under TCG
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")
#: Fixed so that PCR 0/2/4 stay the same on every boot of a VM.
MEMORY = "1024"
SMP = "1"
#: The guest sees its disks as /dev/disk/by-id/virtio-<serial>, whatever is missing.
DISK_SERIALS = ("hrnormal", "hrstore", "hrcontrol")
CMDLINE = (
    "console=ttyS0,115200 root=/dev/disk/by-id/virtio-hrnormal rootfstype=squashfs ro "
    "rd.retry=20 "
    "rd.shell=0 panic=-1 loglevel=6"
)


BUSYBOX = shutil.which("busybox") or "/usr/bin/busybox"


def accel() -> str:
    """TCG unless KVM really works (a real kvm_intel/kvm_amd, not e.g. kvm_pvm)."""
    forced = os.environ.get("HOST_RECOVER_ACCEL")
    if forced:
        return forced
    usable = os.access("/dev/kvm", os.R_OK | os.W_OK) and any(
        Path(f"/sys/module/{m}").exists() for m in ("kvm_intel", "kvm_amd")
    )
    return "kvm" if usable else "tcg"


class VmTpm:
    """swtpm for QEMU's tpm-emulator backend (control channel on a UNIX socket)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir.resolve()
        self.sock = self.state_dir.parent / "swtpm.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def manufacture(self) -> None:
        """A fresh TPM with only the sha256 PCR bank (small event log)."""
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self.state_dir.mkdir(parents=True)
        subprocess.run(
            [
                "swtpm_setup",
                "--tpm2",
                "--tpmstate",
                os.fspath(self.state_dir),
                "--pcr-banks",
                "sha256",
                "--createek",
                "--overwrite",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        self.proc = None
        self.sock.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                "swtpm",
                "socket",
                "--tpm2",
                "--tpmstate",
                f"dir={self.state_dir}",
                "--ctrl",
                f"type=unixio,path={self.sock}",
                "--log",
                f"file={self.state_dir.parent / 'swtpm.log'},level=1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        for _ in range(200):  # bounded: 10 s
            if self.sock.exists():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"swtpm exited with {self.proc.returncode}")
            time.sleep(0.05)
        raise RuntimeError("swtpm socket did not appear")

    def wait_exit(self, timeout: float = 10) -> bool:
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        self.proc = None
        return True

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None


@dataclasses.dataclass
class Console:
    """Serial console lines with their arrival time (seconds since QEMU start)."""

    lines: list[tuple[float, str]] = dataclasses.field(default_factory=list)
    cond: threading.Condition = dataclasses.field(default_factory=threading.Condition)
    closed: bool = False

    def find(self, pattern: str) -> tuple[float, str] | None:
        rx = re.compile(pattern)
        with self.cond:
            for t, line in self.lines:
                if rx.search(line):
                    return t, line
        return None

    def all(self, pattern: str) -> list[tuple[float, str]]:
        rx = re.compile(pattern)
        with self.cond:
            return [(t, line) for t, line in self.lines if rx.search(line)]

    def text(self) -> str:
        with self.cond:
            return "\n".join(line for _, line in self.lines)


class Vm:
    """A guest with persistent TPM and firmware state in ``workdir``."""

    def __init__(self, workdir: Path, kernel: Path, initrd: Path, disks: list[Path | None]) -> None:
        self.workdir = workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kernel, self.initrd, self.disks = kernel, initrd, disks
        self.cmdline = CMDLINE
        self.tpm = VmTpm(self.workdir / "tpmstate")
        self.vars = self.workdir / "OVMF_VARS.fd"
        self.guestfwd: list[tuple[str, int, int]] = []  # (guest ip, guest port, host port)
        self.hostfwd: list[tuple[int, int]] = []  # (host port, guest port)
        self.proc: subprocess.Popen[bytes] | None = None
        self.console = Console()
        self.boots = 0
        #: A FAT disk OVMF boots from (GRUB as /EFI/BOOT/BOOTX64.EFI) instead of the
        #: direct kernel boot; the command line is then GRUB's (harness.esp_disk).
        self.esp: Path | None = None
        #: Keep QEMU's stdin (the serial console's input) open for ``send``.
        self.interactive = False
        #: QEMU's TPM control socket when not swtpm's own: a testing.tpmrelay.QemuTpmRelay
        #: in between (real-TPM latency, transient return codes).
        self.tpm_path: Path | None = None
        #: A test-made network namespace (testing.netns) and the tap device in it: the
        #: guest's NIC is that tap instead of QEMU's user network (no guestfwd then).
        self.netns: Netns | None = None
        self.tap: str | None = None
        self._reader: threading.Thread | None = None
        self.t0 = 0.0

    def manufacture(self) -> None:
        self.tpm.manufacture()
        shutil.copyfile(OVMF_VARS, self.vars)

    def argv(self) -> list[str]:
        acc = accel()
        argv = [
            "qemu-system-x86_64",
            "-machine",
            "q35",
            "-accel",
            acc,
            "-m",
            MEMORY,
            "-smp",
            SMP,
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={self.vars}",
            "-chardev",
            f"socket,id=chrtpm,path={self.tpm_path or self.tpm.sock}",
            "-tpmdev",
            "emulator,id=tpm0,chardev=chrtpm",
            "-device",
            "tpm-crb,tpmdev=tpm0",
        ]
        if acc == "kvm":
            argv += ["-cpu", "host"]
        if self.esp is None:
            argv += ["-kernel", os.fspath(self.kernel), "-initrd", os.fspath(self.initrd)]
            argv += ["-append", self.cmdline]
        else:
            argv += ["-drive", f"if=none,id=hresp,file={self.esp},format=raw,readonly=on"]
            argv += ["-device", "virtio-blk-pci,drive=hresp,serial=hresp,bootindex=0"]
        for serial, disk in zip(DISK_SERIALS, self.disks, strict=True):
            if disk is None:  # e.g. the normal root disk is gone
                continue
            ro = ",readonly=on" if disk.suffix in (".squashfs", ".ctl") else ""
            argv += ["-drive", f"if=none,id={serial},file={disk},format=raw{ro}"]
            argv += ["-device", f"virtio-blk-pci,drive={serial},serial={serial}"]
        # Always the same NIC without option ROM: PCR 2 must not depend on the scenario.
        if self.tap is not None:
            assert self.netns is not None and not self.guestfwd and not self.hostfwd
            argv += ["-netdev", f"tap,id=n0,ifname={self.tap},script=no,downscript=no"]
            argv += ["-device", "virtio-net-pci,netdev=n0,romfile="]
            return [*self.netns.prefix(), *argv]
        net = "user,id=n0,restrict=on,ipv6=off"
        for ip, gport, hport in self.guestfwd:
            # cmd: is spawned per connection (tcp: would be one connection made at start)
            net += f",guestfwd=tcp:{ip}:{gport}-cmd:{BUSYBOX} nc 127.0.0.1 {hport}"
        for hport, gport in self.hostfwd:
            net += f",hostfwd=tcp:127.0.0.1:{hport}-:{gport}"
        argv += ["-netdev", net, "-device", "virtio-net-pci,netdev=n0,romfile="]
        return argv

    def start(self) -> None:
        assert self.proc is None, "already running"
        self.tpm.start()
        self.console = Console()
        self.boots += 1
        log = (self.workdir / f"console-{self.boots}.log").open("w")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv(),
            stdin=subprocess.PIPE if self.interactive else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            preexec_fn=die_with_parent,
        )
        self._reader = threading.Thread(target=self._read, args=(self.proc, log), daemon=True)
        self._reader.start()

    def _read(self, proc: subprocess.Popen[bytes], log: object) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n").replace("\r", "")
            t = time.monotonic() - self.t0
            log.write(f"[{t:7.2f}] {line}\n")  # type: ignore[attr-defined]
            log.flush()  # type: ignore[attr-defined]
            with self.console.cond:
                self.console.lines.append((t, line))
                self.console.cond.notify_all()
        with self.console.cond:
            self.console.closed = True
            self.console.cond.notify_all()
        log.close()  # type: ignore[attr-defined]

    def wait_for(self, pattern: str, timeout: float = 180) -> tuple[float, str]:
        """Wait for a console line matching ``pattern``; raise with the console tail."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self.console.cond:
            while True:
                for t, line in self.console.lines[seen:]:
                    if rx.search(line):
                        return t, line
                seen = len(self.console.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self.console.closed:
                    break
                self.console.cond.wait(timeout=min(left, 1.0))
        tail = "\n".join(line for _, line in self.console.lines[-40:])
        why = "QEMU exited" if self.console.closed else f"{timeout:.0f} s passed"
        raise TimeoutError(f"no console line /{pattern}/ ({why}); last lines:\n{tail}")

    def send(self, text: str) -> None:
        """Type ``text`` on the serial console (``interactive`` VMs only)."""
        assert self.proc is not None and self.proc.stdin is not None, "not interactive"
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def wait_exit(self, timeout: float = 120) -> int:
        """Wait for QEMU to exit (the guest powered off); the orderly swtpm exits too."""
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.power_cut()
            raise TimeoutError(f"guest did not power off within {timeout:.0f} s") from None
        if self._reader:
            self._reader.join(timeout=10)
        self.proc = None
        if not self.tpm.wait_exit(10):
            self.tpm.kill()
        return rc

    def power_cut(self) -> None:
        """kill -9 QEMU and its swtpm: no TPM2_Shutdown reaches the TPM."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            if self._reader:
                self._reader.join(timeout=10)
            self.proc = None
        self.tpm.kill()

    def close(self) -> None:
        self.power_cut()

    def save_state(self, dest: Path) -> None:
        """Keep the powered-off guest's TPM state and firmware variables in ``dest``
        (replaced): the disks are not part of it."""
        assert self.proc is None and not self.tpm.running
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        shutil.copytree(self.tpm.state_dir, dest / "tpmstate")
        shutil.copy2(self.vars, dest / "OVMF_VARS.fd")

    def restore_state(self, src: Path) -> None:
        """Power off (a running guest is cut) and bring back what :meth:`save_state` kept."""
        self.power_cut()
        if not src.is_dir():
            raise RuntimeError(f"no saved guest state {src.name!r} in {src.parent}")
        shutil.rmtree(self.tpm.state_dir)
        shutil.copytree(src / "tpmstate", self.tpm.state_dir)
        shutil.copy2(src / "OVMF_VARS.fd", self.vars)

    def boot(self, until: str, timeout: float = 240) -> Console:
        """Start, wait until the guest powers off, check ``until`` was printed."""
        self.start()
        try:
            self.wait_for(until, timeout)
            self.wait_exit(timeout)
        except BaseException:
            self.power_cut()
            raise
        return self.console
