"""A failure domain of QEMU guests, each in its own boot payload asking the others.

Unlike ``testing.qemu.lab`` (one guest, peers as host-side agents), every host here is a
guest with its own swtpm, its own provisioning and its own inventory entry; nothing runs
host-recover on the host side. The guests reach each other only through the host's
loopback: user networking with restrict=on, each guest's status port forwarded from
127.0.0.1:P_i (hostfwd), and in every guest one guestfwd per peer mapping the peer's
inventory address 10.0.2.10N:7469 to 127.0.0.1:P_j.

The circle and how it is cut: each guest's measured initramfs carries its inventory, and
the inventory carries the peers' expected PCRs, which would follow their initramfs (PCR 9
measures its bytes, PCR 4 its size). The guests therefore select ``GUEST_PCRS`` (0, 2, 7:
firmware, option ROMs, Secure Boot state), which are the same for guests booted with the
same QEMU arguments and do not depend on the initramfs; provisioning then needs
``--allow-unbound`` (a lab-only weakening: the seal does not bind the initramfs). Setup:

 1. per guest: configuration (its ``peers.host_id``) with an empty inventory → initramfs
 2. all guests boot together with control=provision: each provisions its own TPM, makes
    its recovery image and credential, prints its inventory entry (HR-ATTEST)
 3. the inventory of all entries (addresses rewritten to the guest-side 10.0.2.10N)
    → every guest's initramfs is rebuilt; each guest's state is saved "provisioned"
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from testing.ports import free_port
from testing.qemu import harness
from testing.qemu import vm as vmmod
from testing.qemu.lab import HOST_IP, PEER_PORT

GUEST_PCRS = "sha256:0,2,7"


class QuietForwardVm(vmmod.Vm):
    """A Vm whose guestfwd helper keeps its errors to itself. libslirp gives the helper
    (busybox nc) the forwarded socket as stdin, stdout and stderr, so while a peer's
    QEMU is not running yet, nc's "can't connect" text would reach the asking guest as
    its "reply" (malformed) instead of the closed connection a dark peer gives."""

    def argv(self) -> list[str]:
        out = []
        for arg in super().argv():
            for _ip, _gport, hport in self.guestfwd:
                plain = f"-cmd:{vmmod.BUSYBOX} nc 127.0.0.1 {hport}"
                quiet = f"-cmd:/bin/sh -c 'exec {vmmod.BUSYBOX} nc 127.0.0.1 {hport} 2>/dev/null'"
                arg = arg.replace(plain + ",", quiet + ",")
                if arg.endswith(plain):
                    arg = arg[: -len(plain)] + quiet
            out.append(arg)
        return out


class Guest:
    """One host of the domain: its VM, disks, configuration and inventory entry."""

    def __init__(self, workdir: Path, name: str, index: int) -> None:
        self.name, self.index = name, index
        self.dir = workdir / name
        self.ip = f"10.0.2.{101 + index}"  # how the other guests address it
        self.port = free_port()  # 127.0.0.1:port → this guest's status port
        self.confdir = self.dir / "conf"
        self.credential = secrets.token_hex(32)
        self.control = self.dir / "control.ctl"
        self.vm: vmmod.Vm | None = None
        self.entry: dict[str, Any] | None = None
        self.extra = {
            "hrargs": f"--set peers.host_id={name} --set tpm.pcrs={GUEST_PCRS}",
            "provargs": "--allow-unbound",
        }

    def write_config(self, entries: Sequence[dict[str, Any]], settings: str) -> None:
        self.confdir.mkdir(parents=True, exist_ok=True)
        (self.confdir / "host-recover.conf").write_text(
            f"[tpm]\npcrs = {GUEST_PCRS}\n"
            "[store]\n"
            "device = /dev/disk/by-label/HRSTORE\n"
            "image = recovery.hri\n"
            "credentials = credentials.hrc\n"
            "[peers]\n"
            f"host_id = {self.name}\n"
            "inventory = /etc/host-recover/peers.json\n"
            f"listen = 0.0.0.0:{PEER_PORT}\n" + settings
        )
        inv = {"version": 1, "peers": list(entries)}
        (self.confdir / "peers.json").write_text(json.dumps(inv, indent=1, sort_keys=True) + "\n")

    # --- boots --------------------------------------------------------------------------

    def start(self, action: str) -> str:
        """Power on with ``action`` for the root that comes up; returns the challenge."""
        assert self.vm is not None
        challenge = secrets.token_hex(16)
        harness.control_disk(self.control, action, challenge, self.extra)
        self.vm.start()
        return challenge

    def wait_done(self, timeout: float) -> None:
        assert self.vm is not None
        self.vm.wait_for(r"^HR-GUEST-DONE|Kernel panic|Boot has failed", timeout)

    def record(self) -> dict[str, Any] | None:
        assert self.vm is not None
        rec = self.vm.console.find(r"^HR-(NORMAL|RECOVERY)-RECORD ")
        return json.loads(rec[1].split(" ", 1)[1]) if rec else None

    def root(self) -> str:
        assert self.vm is not None
        if self.vm.console.find(r"^HR-RECOVERY-ROOT up"):
            return "recovery"
        return "normal" if self.vm.console.find(r"^HR-NORMAL-ROOT up") else "none"

    # --- saved states (as testing.qemu.lab.Lab) -------------------------------------------

    def save(self, name: str) -> None:
        assert self.vm is not None
        self.vm.save_state(self.dir / "states" / name)

    def restore(self, name: str) -> None:
        assert self.vm is not None
        self.vm.restore_state(self.dir / "states" / name)


class DomainLab:
    """``n`` guests of one failure domain (quorum 50%: a guest needs every other one of a
    3-guest domain to call a correlated failure)."""

    def __init__(self, workdir: Path, n: int = 3, *, wait: float = 900, boot_timeout: float = 1200):
        self.dir = workdir.resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.guests = [Guest(self.dir, f"g{i + 1}", i) for i in range(n)]
        # Generous: three TCG guests share the machine's cores; the late guest's firmware,
        # kernel and payload must all fit in the early guests' wait.
        self.settings = (
            "deadline = 20\n"
            "timeout = 5\n"
            "[verdict]\n"
            "quorum = 50%\n"
            "on_isolated = normal\n"
            f"wait = {wait:g}\n"
            "[boot]\n"
            "on_error = boot-normal\n"
            f"timeout = {boot_timeout:g}\n"
        )
        self.art: harness.Artefacts | None = None

    def _build(self, g: Guest, entries: Sequence[dict[str, Any]]) -> Path:
        g.write_config(entries, self.settings)
        self.art = harness.build_all(g.confdir)
        return self.art.initramfs

    def setup(self, timeout: float = 1800) -> None:
        for g in self.guests:
            shutil.rmtree(g.dir, ignore_errors=True)
            initrd = self._build(g, [])
            assert self.art is not None
            store = harness.store_disk(
                g.dir / "store.img",
                {
                    "plain.squashfs": self.art.recovery_root,
                    "service-hmac.in": g.credential.encode(),
                },
            )
            harness.control_disk(g.control, "provision", "-", g.extra)
            g.vm = QuietForwardVm(
                g.dir / "vm",
                self.art.kernel.vmlinuz,
                initrd,
                [self.art.normal_root, store, g.control],
            )
            g.vm.cmdline += f" ip={HOST_IP}"
            g.vm.hostfwd.append((g.port, PEER_PORT))
            for other in self.guests:
                if other is not g:
                    g.vm.guestfwd.append((other.ip, PEER_PORT, other.port))
            g.vm.manufacture()
        self.together(lambda g: g.start("provision"), timeout)
        for g in self.guests:
            assert g.vm is not None
            g.vm.wait_exit(timeout)
            line = g.vm.console.find(r"^HR-ATTEST ")
            if line is None or g.vm.console.find(r"^HR-PROVISIONED rc=0") is None:
                raise RuntimeError(f"{g.name}: provisioning failed:\n{g.vm.console.text()[-3000:]}")
            entry = json.loads(line[1][len("HR-ATTEST ") :])
            entry["address"] = f"{g.ip}:{PEER_PORT}"
            g.entry = entry
        entries = [g.entry for g in self.guests if g.entry is not None]
        for g in self.guests:
            assert g.vm is not None
            g.vm.initrd = self._build(g, entries)
            g.save("provisioned")

    def together(self, start: Callable[[Guest], object], timeout: float) -> None:
        """Start every guest at once, wait until each has printed HR-GUEST-DONE."""
        for g in self.guests:
            start(g)
        errors: list[BaseException] = []

        def wait(g: Guest) -> None:
            try:
                g.wait_done(timeout)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=wait, args=(g,)) for g in self.guests]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def restore(self, state: str) -> None:
        for g in self.guests:
            g.restore(state)

    def power_cut(self) -> None:
        """The whole domain loses power at once."""
        for g in self.guests:
            assert g.vm is not None
            g.vm.power_cut()

    def close(self) -> None:
        for g in self.guests:
            if g.vm is not None:
                with contextlib.suppress(Exception):
                    g.vm.close()


@contextlib.contextmanager
def domain_lab(workdir: Path, n: int = 3) -> Iterator[DomainLab]:
    lab = DomainLab(workdir, n)
    try:
        lab.setup()
        yield lab
    finally:
        lab.close()
