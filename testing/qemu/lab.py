"""The lab: one host VM plus its failure domain's peers, run as host-side agents.

A peer that "lost power" answers as its boot payload would (``agent --role boot`` on a
just power-cycled swtpm, lock PCR at reset); the others as their normal OS (``agent``).

Peers are ``host-recover agent`` processes, each with its own swtpm (testing/swtpm.py,
TCP on 127.0.0.1), reached from the guest through QEMU user networking (restrict=on,
explicit guestfwd 10.0.2.10N:7469 → 127.0.0.1:PORT). Nothing listens beyond loopback.

Setup order (``Lab.setup``):
 1. peers: provision their TPMs, ``attest`` → inventory entries (guest-side addresses)
    (``--no-owner-auth`` here and in the guest: the lab's TPMs are throwaway)
 2. host configuration + peers inventory → baked into the initramfs (measured, PCR 9)
 3. store disk (HRSTORE) with the plain recovery squashfs and the service credential
 4. first boot, normal root, control=provision: the guest provisions its own TPM (PCRs
    are those of this very boot chain), encrypts the image and stores the credential
    with it, and prints its inventory entry (HR-ATTEST) → the peers learn the host
 5. agents start; the host's state is saved as "provisioned"

Tests do not depend on each other's leftovers: ``save_host``/``restore_host`` keep and
bring back the host's TPM and firmware state (e.g. "provisioned": shut down orderly
after the provisioning boot), and ``prepare`` sets a boot's preconditions from one of
them: the host in a saved state, the first N peers just power-cut, the others up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from testing.netns import Netns
from testing.ports import free_port
from testing.qemu import harness
from testing.qemu import vm as vmmod
from testing.swtpm import SwTpm, die_with_parent

HOST_CLI = [sys.executable, "-m", "recover"]
#: The guest's network for the peer query, as dracut's ip= (docs/boot.md#network): QEMU's
#: user network serves DHCP (10.0.2.15, gateway 10.0.2.2); a static form of the same.
HOST_IP = "dhcp"
HOST_IP_STATIC = "10.0.2.15::10.0.2.2:255.255.255.0::eth0:none"
PEER_PORT = 7469
#: A lab in a test-made network namespace (Lab(netns=...)): IPv6 on the guest's tap.
TAP = "hrtap0"
NETNS_PREFIX = "fd00:6::"
NETNS_GATEWAY = NETNS_PREFIX + "1"
HOST_IP_V6 = f"[{NETNS_PREFIX}15]::[{NETNS_GATEWAY}]:64::eth0:none"


def _peer_ip(i: int, netns: Netns | None) -> str:
    return f"{NETNS_PREFIX}{101 + i}" if netns is not None else f"10.0.2.{101 + i}"


def cli(*args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    proc = subprocess.run(
        [*HOST_CLI, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"host-recover {' '.join(args)}: rc={proc.returncode} {proc.stderr}")
    return proc.stdout


def _host(ip: str) -> str:
    """An address as the host part of host:port (IPv6 in brackets)."""
    return f"[{ip}]" if ":" in ip else ip


class PeerAgent:
    """A peer host: its swtpm and its ``host-recover agent`` on 127.0.0.1 (the guest
    reaches it through a guestfwd) or, with ``netns``, on ``guest_ip`` in that test-made
    namespace (the guest reaches it over its tap)."""

    def __init__(
        self, workdir: Path, peer_id: str, guest_ip: str, netns: Netns | None = None
    ) -> None:
        self.dir = workdir / peer_id
        shutil.rmtree(self.dir, ignore_errors=True)  # a fresh TPM every lab
        self.dir.mkdir(parents=True)
        self.id, self.guest_ip, self.netns = peer_id, guest_ip, netns
        self.tpm = SwTpm(self.dir / "tpmstate")
        self.port = PEER_PORT if netns else free_port()
        self.conf = self.dir / "host-recover.conf"
        self.inventory = self.dir / "peers.json"
        listen = f"{_host(guest_ip)}:{PEER_PORT}" if netns else f"127.0.0.1:{self.port}"
        self.conf.write_text(
            f"[peers]\nhost_id = {peer_id}\ninventory = {self.inventory}\nlisten = {listen}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.was_cut = False  # lost power since its last orderly reboot

    def env(self) -> dict[str, str]:
        return {**self.tpm.env, "HOST_RECOVER_CONFIG": os.fspath(self.conf)}

    def provision(self) -> dict[str, object]:
        self.tpm.start()
        # host swtpm: no event log; a throwaway lab TPM: no owner auth
        cli("provision", "--no-owner-auth", "--allow-unbound", env=self.env())
        entry = cli(
            "attest",
            "--address",
            f"{_host(self.guest_ip)}:{PEER_PORT}",
            "--failure-domain",
            "rack-1",
            env=self.env(),
        )
        return dict(json.loads(entry))

    def start_agent(self) -> None:
        """A peer that lost power is back in its boot payload, asking and answering while
        its TPM's lock PCR is at reset: stand in for it with ``agent --role boot`` (its
        swtpm was just power-cycled, nothing extended the lock PCR). Only such answers
        vote (docs/peer-protocol.md#role); a peer rebooted orderly runs its normal OS
        (role agent: counted unaffected)."""
        if self.tpm.proc is None:
            self.tpm.start()
        if self.netns is not None:  # its swtpm, on loopback outside (server and control)
            self.netns.forward(self.tpm.port)
            self.netns.forward(self.tpm.port + 1)
        log = (self.dir / "agent.log").open("ab")
        role = "boot" if self.was_cut else "agent"
        self.proc = subprocess.Popen(
            [*(self.netns.prefix() if self.netns else []), *HOST_CLI, "agent", "--role", role],
            env=self.env(),
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        log.close()
        for _ in range(300):  # bounded: 30 s
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent {self.id} exited; see {self.dir / 'agent.log'}")
            try:
                if self.netns is not None:  # on its address in the namespace
                    with self.netns.tcp_socket() as s:
                        s.settimeout(0.2)
                        s.connect((self.guest_ip, self.port))
                    return
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"agent {self.id} did not listen")

    def stop_agent(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def power_cut(self) -> None:
        """The peer loses power too: agent and TPM die without TPM2_Shutdown."""
        self.stop_agent(signal.SIGKILL)
        self.tpm.power_cut_and_restart()
        self.was_cut = True
        self.start_agent()

    def clean_reboot(self) -> None:
        """An orderly reboot of the peer (TPM2_Shutdown, then power on)."""
        self.stop_agent()
        self.tpm.reboot_orderly()
        self.was_cut = False
        self.start_agent()

    def close(self) -> None:
        self.stop_agent(signal.SIGKILL)
        self.tpm.kill()


@dataclasses.dataclass(frozen=True)
class BootResult:
    console: vmmod.Console
    record: dict[str, object] | None
    root: str  # "normal" | "recovery" | "none"
    proof_ok: bool | None  # the recovery service's HMAC over the challenge checked out
    phases: dict[str, float]  # seconds since QEMU start
    lock_pcr: str | None  # PCR 15 (sha256) as the booted root saw it, hex


class Lab:
    def __init__(
        self,
        workdir: Path,
        n_peers: int = 3,
        init: str = "shell",
        *,
        grub: bool = False,
        tpm_pcrs: str | None = None,
        control_extra: dict[str, str] | None = None,
        host_conf_extra: str = "",
        guestfwd: list[tuple[str, int, int]] | None = None,
        recovery_root: Path | None = None,
        master: bytes | None = None,
        ip: str = HOST_IP,
        netns: Netns | None = None,
        cmdline_extra: str = "",
    ) -> None:
        """``grub``: OVMF boots GRUB (harness.grub_efi) instead of the kernel directly;
        ``tpm_pcrs``: baked into the host's configuration; ``control_extra``: lines for
        the guest's control disk on every boot (qemu-env/guest-normal-init.sh);
        ``host_conf_extra``: appended to the host's (measured) configuration;
        ``guestfwd``: more (guest ip, guest port, host port) forwards (e.g. a witness);
        ``recovery_root``: the plain recovery image to provision (default: the lab's);
        ``master``: the master secret the guest seals (default: a random one of its own),
        so the host can make recovery images for it; ``ip``: the kernel's ``ip=``
        (dracut's network, for the peer query); ``netns``: the guest's NIC is a tap in
        that namespace, where the peers listen on IPv6 (NETNS_PREFIX) instead of behind
        QEMU's user network; the tap has NETNS_GATEWAY; ``cmdline_extra``: more kernel
        arguments on every boot (measured: the lab's PCR values include them)."""
        self.dir = workdir.resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.init = init
        self.grub = grub
        self.tpm_pcrs = tpm_pcrs
        self.control_extra = dict(control_extra or {})
        self.host_conf_extra = host_conf_extra
        self.extra_guestfwd = list(guestfwd or [])
        self.control_attachment = b""  # after the control block (harness.control_disk)
        self.recovery_root = recovery_root
        self.master = master
        if master is not None:  # the provisioning boot seals it (the store carries it)
            self.control_extra["masterfrom"] = "/mnt/store/master.in"
        self.ip = ip
        self.cmdline_extra = cmdline_extra
        self.provision_result: BootResult | None = None
        self.netns = netns
        self.peers = [
            PeerAgent(self.dir, f"peer{i + 1}", _peer_ip(i, netns), netns) for i in range(n_peers)
        ]
        if netns is not None:
            netns.add_tap(TAP, [f"{NETNS_GATEWAY}/64", *(f"{p.guest_ip}/64" for p in self.peers)])
        self.credential = secrets.token_hex(32)
        self.confdir = self.dir / "conf"
        self.vm: vmmod.Vm | None = None
        self.art: harness.Artefacts | None = None
        self.host_entry: dict[str, object] | None = None

    # --- setup --------------------------------------------------------------------------

    def write_host_config(self, peer_entries: list[dict[str, object]]) -> None:
        self.confdir.mkdir(parents=True, exist_ok=True)
        tpm = f"[tpm]\npcrs = {self.tpm_pcrs}\n" if self.tpm_pcrs else ""
        (self.confdir / "host-recover.conf").write_text(
            tpm + "[store]\n"
            "device = /dev/disk/by-label/HRSTORE\n"
            "image = recovery.hri\n"
            "credentials = credentials.hrc\n"
            "[peers]\n"
            "host_id = host\n"
            "inventory = /etc/host-recover/peers.json\n"
            f"listen = 0.0.0.0:{PEER_PORT}\n"
            "deadline = 20\n"
            "timeout = 5\n"
            "[verdict]\n"
            "quorum = 50%\n"
            "on_isolated = normal\n"
            "[boot]\n"
            "on_error = boot-normal\n" + self.host_conf_extra
        )
        inv = {"version": 1, "peers": peer_entries}
        (self.confdir / "peers.json").write_text(json.dumps(inv, indent=1, sort_keys=True) + "\n")

    def setup(self) -> None:
        shutil.rmtree(self.dir / "states", ignore_errors=True)  # saved by an earlier lab
        entries = [p.provision() for p in self.peers]
        self.write_host_config(entries)
        self.art = harness.build_all(self.confdir, init=self.init)
        plain = self.recovery_root or self.art.recovery_root
        files: dict[str, Path | bytes] = {
            "plain.squashfs": plain,
            "service-hmac.in": self.credential.encode(),
        }
        if self.master is not None:
            files["master.in"] = self.master
        # room for the plain image and the container made from it
        size_mb = max(96, (plain.stat().st_size >> 19) + 64)
        store = harness.store_disk(self.dir / "store.img", files, size_mb=size_mb)
        self.control = self.dir / "control.ctl"
        harness.control_disk(self.control, "provision", "-", self.control_extra)
        self.vm = vmmod.Vm(
            self.dir / "host",
            self.art.kernel.vmlinuz,
            self.art.initramfs,
            [self.art.normal_root, store, self.control],
        )
        self.vm.cmdline += f" ip={self.ip}"
        if self.cmdline_extra:
            self.vm.cmdline += f" {self.cmdline_extra}"
        if self.netns is not None:
            self.vm.netns, self.vm.tap = self.netns, TAP
        else:
            for p in self.peers:
                self.vm.guestfwd.append((p.guest_ip, PEER_PORT, p.port))
            self.vm.guestfwd.extend(self.extra_guestfwd)
        if self.grub:  # GRUB's configuration holds the command line (+ grubenv's extra)
            efi = harness.grub_efi(self.vm.cmdline)
            self.vm.esp = harness.esp_disk(
                self.dir / "esp.img", efi, self.art.kernel.vmlinuz, self.art.initramfs
            )
        self.vm.manufacture()
        res = self.provision_result = self.boot("provision")
        line = res.console.find(r"^HR-ATTEST ")
        if line is None or res.console.find(r"^HR-PROVISIONED rc=0") is None:
            raise RuntimeError("provisioning boot failed:\n" + res.console.text()[-3000:])
        self.host_entry = json.loads(line[1][len("HR-ATTEST ") :])
        for p in self.peers:
            inv = {"version": 1, "peers": [*entries, self.host_entry]}
            p.inventory.write_text(json.dumps(inv, indent=1) + "\n")
            p.tpm.reboot_orderly()  # the peers were up and shut down cleanly before
            p.start_agent()
        self.save_host("provisioned")  # powered off orderly after provisioning

    # --- saved host states and a boot's preconditions -------------------------------------

    def save_host(self, name: str) -> None:
        """Keep the host's state (TPM state directory, firmware variables) as ``name``;
        the host must be powered off. The store and control disks are not written by
        boots (the payload mounts the store read-only) and are not part of it."""
        assert self.vm is not None
        self.vm.save_state(self.dir / "states" / name)

    def restore_host(self, name: str) -> None:
        """Power the host off (a held guest is cut) and bring back saved state ``name``."""
        assert self.vm is not None
        self.vm.restore_state(self.dir / "states" / name)

    def prepare(self, host: str, peers_cut: int = 0) -> None:
        """A boot's preconditions: the host in saved state ``host``, the first
        ``peers_cut`` peers lose power now (as in an outage with the host), the others
        are up since an orderly reboot (rebooted if they were cut before)."""
        self.restore_host(host)
        for i, p in enumerate(self.peers):
            if i < peers_cut:
                p.power_cut()
            elif p.was_cut:
                p.clean_reboot()

    # --- boots --------------------------------------------------------------------------

    def boot(
        self,
        action: str = "poweroff",
        *,
        extra_cmdline: str = "",
        store: Path | None = None,
        normal_root: bool = True,
        initrd: Path | None = None,
        until: str | None = None,
        timeout: float = 300,
        ip: str | None = None,
    ) -> BootResult:
        """Boot once; ``action`` for the root that comes up (poweroff | hold | provision).
        With hold (or ``until``: return once a console line matches) the guest stays up:
        call ``power_cut``. ``extra_cmdline``, ``store``, ``initrd`` and
        ``normal_root=False`` (the normal root disk is gone) change this boot only; so
        does ``ip`` (this boot's ``ip=`` instead of the lab's: PCR 9 moves with it)."""
        assert self.vm is not None
        challenge = secrets.token_hex(16)
        harness.control_disk(
            self.control, action, challenge, self.control_extra, self.control_attachment
        )
        base_cmdline, base_disks, base_initrd = self.vm.cmdline, list(self.vm.disks), self.vm.initrd
        if ip is not None:
            assert self.vm.esp is None, "GRUB's configuration holds the command line"
            self.vm.cmdline = self.vm.cmdline.replace(f" ip={self.ip}", f" ip={ip}")
        if initrd is not None:
            assert self.vm.esp is None, "GRUB boots the initrd on its ESP"
            self.vm.initrd = initrd
        if self.vm.esp is not None:  # this boot's extra arguments, as if typed at GRUB's menu
            harness.set_grubenv(self.vm.esp, extra_cmdline)
        elif extra_cmdline:
            self.vm.cmdline += " " + extra_cmdline
        if store is not None:
            self.vm.disks[1] = store
        if not normal_root:
            self.vm.disks[0] = None
        try:
            self.vm.start()
            self.vm.wait_for(until or r"^HR-GUEST-DONE|Kernel panic|Boot has failed", timeout)
            if action != "hold" and until is None:
                self.vm.wait_exit(timeout)
        except BaseException:
            self.vm.power_cut()
            raise
        finally:
            self.vm.cmdline, self.vm.disks, self.vm.initrd = base_cmdline, base_disks, base_initrd
        return self._result(challenge)

    def tampered_initrd(self) -> Path:
        """The initramfs with 4 zero bytes appended: it still boots (the kernel skips
        zero padding), but PCR 9 measures different bytes."""
        assert self.vm is not None
        out = self.dir / "initrd-tampered.img"
        out.write_bytes(self.vm.initrd.read_bytes() + bytes(4))
        return out

    def tampered_store(self, how: str) -> Path:
        """A copy of the store whose recovery image has one bit flipped (``flip``) or
        its last 100 bytes cut off (``truncate``)."""
        assert self.vm is not None
        out = self.dir / f"store-{how}.img"
        store = self.vm.disks[1]
        assert store is not None
        shutil.copyfile(store, out)
        img = self.dir / f"recovery-{how}.hri"
        harness.sh("debugfs", "-R", f"dump /recovery.hri {img}", out)
        data = bytearray(img.read_bytes())
        if how == "flip":
            data[len(data) // 2] ^= 0x01
        else:
            del data[-100:]
        img.write_bytes(bytes(data))
        harness.sh("debugfs", "-w", "-R", "rm /recovery.hri", out)
        harness.sh("debugfs", "-w", "-R", f"write {img} recovery.hri", out)
        return out

    def _result(self, challenge: str) -> BootResult:
        assert self.vm is not None
        con = self.vm.console
        root = "none"
        if con.find(r"^HR-NORMAL-ROOT up"):
            root = "normal"
        elif con.find(r"^HR-RECOVERY-ROOT up"):
            root = "recovery"
        record = None
        rec = con.find(r"^HR-(NORMAL|RECOVERY)-RECORD ")
        if rec:
            record = json.loads(rec[1].split(" ", 1)[1])
        proof_ok = None
        proof = con.find(r"^HR-SERVICE-PROOF ")
        if proof:
            fields = dict(kv.split("=", 1) for kv in proof[1].split()[1:])
            want = hmac.new(
                bytes.fromhex(self.credential), challenge.encode(), hashlib.sha256
            ).hexdigest()
            proof_ok = fields.get("challenge") == challenge and hmac.compare_digest(
                fields.get("mac", ""), want
            )
        pcr15 = con.find(r"^HR-PCR15 ")
        phases: dict[str, float] = {}
        for pattern, name in (
            (r"EFI stub: Loaded initrd", "kernel"),
            (r"^HR-PHASE init", "initramfs"),
            (r"^HR-PHASE payload-start", "payload-start"),
            (r"^HR-PHASE payload-exit", "payload-exit"),
            (r"^HR-PHASE switch-root", "switch-root"),
            (r"^HR-(NORMAL|RECOVERY)-ROOT up", "new-root"),
        ):
            hit = con.find(pattern)
            if hit:
                phases[name] = round(hit[0], 2)
        lock = pcr15[1].split()[1] if pcr15 and len(pcr15[1].split()) > 1 else None
        return BootResult(con, record, root, proof_ok, phases, lock)

    def power_cut(self, peers: int = 0) -> None:
        """Power loss of the host and of the first ``peers`` peers, together."""
        assert self.vm is not None
        self.vm.power_cut()
        for p in self.peers[:peers]:
            p.power_cut()

    def close(self) -> None:
        if self.vm is not None:
            self.vm.close()
        for p in self.peers:
            p.close()
