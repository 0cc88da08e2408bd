"""Settings: one declaration per setting drives the INI file, the kernel command line
(only where allowed), the CLI and docs/configuration.md. Pure.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from typing import Any

DEFAULT_PATH = "/etc/host-recover/host-recover.conf"


def _handle(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise ValueError(f"{text!r} is not a handle (e.g. 0x81000001)") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{text!r} is out of range")
    return value


def _persistent_handle(text: str) -> int:
    value = _handle(text)
    if not 0x81000000 <= value <= 0x817FFFFF:
        raise ValueError(f"{text!r} is not an owner persistent handle (0x81000000-0x817fffff)")
    return value


def _nv_index(text: str) -> int:
    value = _handle(text)
    if value >> 24 != 0x01:
        raise ValueError(f"{text!r} is not an NV index (0x01000000-0x01ffffff)")
    return value


def _hex_pin(size: int) -> Callable[[str], str]:
    """A pinned value: ``size`` bytes as lowercase hex, or empty (not pinned)."""

    def parse(text: str) -> str:
        t = text.strip().lower()
        if not t:
            return ""
        try:
            raw = bytes.fromhex(t)
        except ValueError:
            raise ValueError(f"{text!r} is not hex") from None
        if len(raw) != size:
            raise ValueError(f"{text!r} is {len(raw)} bytes, not {size}")
        return t

    return parse


def _pcr_index(text: str) -> int:
    value = int(text, 0)
    if not 0 <= value <= 23:
        raise ValueError(f"{text!r} is not a PCR index (0..23)")
    return value


def _lock_pcr(text: str) -> int:
    value = _pcr_index(text)
    if value > 15:
        raise ValueError(
            f"PCR {value} can be reset after boot (16 and 23 from the normal OS with "
            "tpm2_pcrreset, 17-22 by a DRTM launch): choose one of 0-15 (default 15)"
        )
    return value


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "yes", "true", "on", ""):
        return True
    if t in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (yes/no)")


# --- closed sets -------------------------------------------------------------------


class Mode(enum.StrEnum):
    """boot.mode: auto decides; force recovers (the PCR policy still applies); never
    does not decide."""

    AUTO = "auto"
    FORCE = "force"
    NEVER = "never"


class Action(enum.StrEnum):
    """What a verdict asks for (verdict.on_isolated, verdict.on_undetermined)."""

    RECOVER = "recover"
    NORMAL = "normal"
    HOLD = "hold"


class OnError(enum.StrEnum):
    """boot.on_error: what the boot does when the payload fails."""

    BOOT_NORMAL = "boot-normal"
    HALT = "halt"
    SHELL = "shell"


class LockWhen(enum.StrEnum):
    """boot.lock: when the payload extends the lock PCR: on every path (docs/security.md).
    ``after-unseal`` (the first version's other choice) let the normal OS unseal."""

    ALWAYS = "always"


class PolicyKind(enum.StrEnum):
    """tpm.policy: how the master secret is sealed."""

    PCR = "pcr"
    SIGNED = "signed"


def _choice(choices: type[enum.StrEnum]) -> Callable[[str], enum.StrEnum]:
    def parse(text: str) -> enum.StrEnum:
        t = text.strip().lower()
        try:
            return choices(t)
        except ValueError:
            names = ", ".join(c.value for c in choices)
            raise ValueError(f"{text!r} is not one of {names}") from None

    parse.choices = tuple(c.value for c in choices)  # type: ignore[attr-defined]
    parse.enum = choices  # type: ignore[attr-defined]
    return parse


def _lock_when(text: str) -> LockWhen:
    if text.strip().lower() == "after-unseal":
        raise ValueError(
            "'after-unseal' is no longer accepted: it let the normal OS unseal the recovery "
            "key; the payload locks on every path (set 'always', manage credentials with "
            "--key-file)"
        )
    return _choice(LockWhen)(text)  # type: ignore[return-value]


_lock_when.choices = ("always",)  # type: ignore[attr-defined]
_lock_when.enum = LockWhen  # type: ignore[attr-defined]


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"{text!r} must be > 0")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{text!r} must be a finite number >= 0")
    return value


def _error_rate(text: str) -> float:
    value = float(text)
    if not 0 < value < 0.5:
        raise ValueError(f"{text!r} must be in (0, 0.5)")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text, 0)
    if value < 0:
        raise ValueError(f"{text!r} must be >= 0")
    return value


def _pcr_selection(text: str) -> str:
    from recover.core.pcrsel import parse_selection

    parse_selection(text)  # validate
    return text.strip()


def _endpoints(text: str) -> str:
    """``host:port[,host:port...]`` (IPv6 as ``[addr]:port``), or empty."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    for item in items:
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{item!r} is not host:port (IPv6: [addr]:port)")
    return ",".join(items)


def _key_prefix(text: str) -> str:
    t = text.strip()
    if not t.startswith("/") or t.endswith("/") or "//" in t:
        raise ValueError(f"{text!r}: a key prefix starts with '/' and does not end with one")
    return t


def _ttl_intervals(text: str) -> int:
    value = int(text, 0)
    if value < 2:
        raise ValueError(f"{text!r} must be >= 2 (one late heartbeat is not a stop)")
    return value


def _quorum(text: str) -> str:
    t = text.strip()
    if t.endswith("%"):
        v = float(t[:-1])
        if not 0 < v <= 100:
            raise ValueError(f"{text!r}: a percentage must be in (0, 100]")
    elif int(t) < 1:
        raise ValueError(f"{text!r}: a count must be >= 1")
    return t


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: its name, parser, default and documentation, and where besides the
    file it may be set (kernel command line, environment, CLI flag)."""

    name: str  # "section.key"
    parse: Callable[[str], Any]
    default: str
    doc: str
    kernel: bool = False  # may be set with rd.host_recover.<key> on the kernel command line
    env: str | None = None  # environment variable that overrides the file (not at boot)
    cli: str | None = None  # a global CLI flag that sets it (besides --set NAME=VALUE)
    kernel_name: str | None = None  # the kernel option, when not rd.host_recover.<key>
    aliases: tuple[str, ...] = ()  # earlier names, still accepted in files and --set

    @property
    def kernel_option(self) -> str | None:
        """The kernel command-line option that sets it, or None."""
        if not self.kernel:
            return None
        return self.kernel_name or f"rd.host_recover.{self.key}"

    @property
    def section(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def key(self) -> str:
        return self.name.split(".", 1)[1]

    @property
    def attr(self) -> str:
        return self.name.replace(".", "_")


SETTINGS: tuple[Setting, ...] = (
    # --- tpm -----------------------------------------------------------------------
    Setting(
        "tpm.tcti",
        str,
        "device:/dev/tpmrm0",
        "TCTI of the TPM, e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321.",
        env="HOST_RECOVER_TCTI",
        cli="--tcti",
    ),
    Setting(
        "tpm.srk_handle",
        _persistent_handle,
        "0x81000001",
        "Persistent handle of the NODA ECC P-256 storage key (created if missing).",
    ),
    Setting(
        "tpm.seal_handle",
        _persistent_handle,
        "0x81000002",
        "Persistent handle of the sealed 32-byte master secret (the secure store).",
    ),
    Setting(
        "tpm.ak_handle",
        _persistent_handle,
        "0x81010002",
        "Persistent handle of the attestation key (restricted ECC P-256, endorsement).",
    ),
    Setting(
        "tpm.pcrs",
        _pcr_selection,
        "sha256:0,2,4,7,9",
        "PCRs the master secret is sealed to (tpm2-tools syntax).",
    ),
    Setting(
        "tpm.lock_pcr",
        _lock_pcr,
        "15",
        "PCR the payload extends on every boot so the secret cannot be unsealed again in "
        "that boot; part of the sealed policy with its reset value (zero). Only 0-15 (the "
        "others can be reset after boot) and never one of tpm.pcrs. systemd also measures "
        "into PCR 15 (machine-id after the switch, which is harmless; cryptsetup's "
        "tpm2-measure-pcr= in the initrd, which is not): docs/security.md.",
    ),
    Setting(
        "tpm.policy",
        _choice(PolicyKind),
        "pcr",
        "pcr: PolicyPCR over the current values; signed: PolicyAuthorize, new PCR values "
        "are signed with `host-recover policy sign` without re-sealing.",
    ),
    Setting(
        "tpm.policy_pubkey",
        str,
        "/etc/host-recover/policy-pub.pem",
        "Public key (PEM, ECC P-256) that signs PCR policies (policy = signed).",
    ),
    Setting(
        "tpm.policy_file",
        str,
        "/var/lib/host-recover/policy.json",
        "Signed PCR policy file, outside the measured boot path (policy = signed). At boot "
        "with store.device set it is read from the store partition, by the same file name.",
    ),
    Setting(
        "tpm.rollback_nv",
        _nv_index,
        "0x01500010",
        "NV counter index holding the lowest accepted recovery image version.",
    ),
    Setting(
        "tpm.orderly_nv",
        _nv_index,
        "0x01500011",
        "Hybrid (orderly) NV counter whose low byte becomes 0xFF after a non-orderly "
        "startup: a second TPM-native crash signal.",
    ),
    Setting(
        "tpm.record_nv",
        _nv_index,
        "0x01500012",
        "Ordinary NV index (NODA) holding the previous boot's decision record summary.",
    ),
    Setting(
        "tpm.policy_nv",
        _nv_index,
        "0x01500013",
        "NV counter index holding the lowest accepted signed-policy version (policy = "
        "signed; owner-write only). `host-recover policy install` raises it; every signed "
        "policy requires it <= its version at the TPM (PolicyNV), so older ones stop working.",
    ),
    Setting(
        "tpm.credentials_nv",
        _nv_index,
        "0x01500014",
        "NV counter index holding the lowest accepted credential store generation "
        "(owner-write only). `host-recover credential add` and `remove` raise it to the "
        "generation they write (with --owner-auth FILE once an owner auth is set); at boot "
        "an older store is refused as rolled back (exit 5).",
    ),
    Setting(
        "tpm.srk_name",
        _hex_pin(34),
        "",
        "TPM name (hex) of the storage key at tpm.srk_handle, pinned by `provision` in "
        "host-recover.conf.d/50-provisioned.conf; unseal refuses another key (exit 5) before "
        "salting a session with it. Empty: not pinned.",
    ),
    Setting(
        "tpm.seal_name",
        _hex_pin(34),
        "",
        "TPM name (hex) of the sealed object at tpm.seal_handle, pinned by `provision` with "
        "policy = signed; unseal refuses another object (exit 5) before loading it. Empty: "
        "not pinned.",
    ),
    Setting(
        "tpm.image_key_id",
        _hex_pin(16),
        "",
        "Key id (hex, as `image inspect` shows it) of the image key derived from the sealed "
        "master, pinned by `provision`; an unsealed master of another id is refused (exit "
        "5). Empty: not pinned.",
    ),
    Setting(
        "tpm.timeout",
        _positive_float,
        "30",
        "Seconds to wait for the TPM device to appear (real TPMs can be slow).",
    ),
    Setting(
        "tpm.event_log",
        str,
        "/sys/kernel/security/tpm0/binary_bios_measurements",
        "The TCG event log the firmware and boot loader wrote. `provision`, `policy sign` "
        "and `status` replay it to learn which PCR measures the kernel, the initramfs and "
        "the command line on this boot path (docs/measured-boot.md); at boot a measured "
        "command line must equal /proc/cmdline (the boot hook mounts securityfs).",
    ),
    # --- store ---------------------------------------------------------------------
    Setting(
        "store.image",
        str,
        "/var/lib/host-recover/recovery.hri",
        "Encrypted recovery image (container v1, docs/image-format.md).",
    ),
    Setting(
        "store.credentials",
        str,
        "/var/lib/host-recover/credentials.hrc",
        "Encrypted credential store (docs/credentials.md).",
    ),
    Setting(
        "store.device",
        str,
        "",
        "Block device holding image and credential store at boot (e.g. "
        "/dev/disk/by-label/HRSTORE); empty: the paths above are used as they are.",
    ),
    # --- peers ---------------------------------------------------------------------
    Setting("peers.host_id", str, "", "This host's id in the inventory (default: hostname)."),
    Setting(
        "peers.inventory",
        str,
        "/etc/host-recover/peers.json",
        "Inventory of peers: id, address, AK public key, failure domain, expected PCRs.",
    ),
    Setting(
        "peers.listen",
        str,
        "0.0.0.0:7469",
        "Address the agent (and the boot payload) answers peers on.",
    ),
    Setting(
        "peers.deadline",
        _positive_float,
        "5",
        "Seconds the whole peer query may take; unreachable peers cost this, not more.",
    ),
    Setting("peers.timeout", _positive_float, "1.5", "Seconds per request to one peer."),
    Setting("peers.retries", _non_negative_int, "2", "Retries per peer within the deadline."),
    # --- inventory (signed; docs/inventory.md) ---------------------------------------
    Setting(
        "inventory.key",
        str,
        "",
        "Fleet public key (PEM, ECC P-256) that signs the inventory. Empty: the baked, "
        "unsigned peers.inventory is used. Set (to /etc/host-recover/inventory-pub.pem, the "
        "name the dracut module bakes): the signed inventory at inventory.file is used "
        "instead, and peers.inventory is not read.",
    ),
    Setting(
        "inventory.file",
        str,
        "/var/lib/host-recover/inventory.json",
        "Signed inventory (membership and endorsed PCR states), outside the measured boot "
        "path. At boot with store.device set it is read from the store partition, by the "
        "same file name.",
    ),
    Setting(
        "inventory.min_version",
        _non_negative_int,
        "0",
        "Lowest accepted signed inventory version (measured configuration). The boot also "
        "refuses a version below the newest it accepted before, kept in the TPM decision "
        "record (written only before the lock).",
    ),
    Setting(
        "peers.network_wait",
        _non_negative_float,
        "15",
        "Seconds the boot payload waits, only when it is about to ask peers, for a route to "
        "them (dracut brings the network up from ip=, docs/boot.md#network); then it asks "
        "anyway. 0: no wait.",
    ),
    # --- verdict -------------------------------------------------------------------
    Setting(
        "verdict.quorum",
        _quorum,
        "50%",
        "Abnormal peers needed for a correlated failure: a count or a percentage of "
        "the failure domain's peers.",
    ),
    Setting(
        "verdict.window",
        _positive_float,
        "120",
        "Seconds within which peers' TPM resets count as the same event.",
    ),
    Setting(
        "verdict.on_isolated",
        _choice(Action),
        "normal",
        "What to do when only this host failed.",
    ),
    Setting(
        "verdict.on_undetermined",
        _choice(Action),
        "normal",
        "What to do when the evidence does not decide.",
    ),
    Setting(
        "verdict.wait",
        _non_negative_float,
        "240",
        "Seconds the boot payload keeps asking peers that have not answered (still in "
        "POST, powered off, cut off), round after round, before it decides without them; "
        "0 asks once. Capped at boot.timeout minus 60 s.",
    ),
    Setting(
        "verdict.sample_above",
        _non_negative_int,
        "64",
        "A failure domain with more peers than this is judged from a random sample of "
        "them with a stated error rate (docs/verdict.md); 0 always asks every peer.",
    ),
    Setting(
        "verdict.sample_error",
        _error_rate,
        "0.01",
        "A sampled verdict's largest error rate: the chance of a correlated failure when "
        "fewer than the quorum went down, or of an isolated one when the quorum did.",
    ),
    # --- boot ----------------------------------------------------------------------
    Setting(
        "boot.enabled",
        _bool,
        "yes",
        "Whether the payload decides at all. rd.host_recover=0 on the kernel command line "
        "turns deciding off for one boot.",
        kernel=True,
        kernel_name="rd.host_recover",
    ),
    Setting(
        "boot.mode",
        _choice(Mode),
        "auto",
        "auto: decide; force: recover (the PCR policy still applies); never: do nothing.",
        kernel=True,
    ),
    Setting(
        "boot.on_error",
        _choice(OnError),
        "boot-normal",
        "What the boot does when the payload fails.",
        kernel=True,
    ),
    Setting("boot.debug", _bool, "no", "Debug logging.", kernel=True),
    Setting(
        "boot.state_dir",
        str,
        "/run/host-recover",
        "Where the decision record is written (survives switch_root).",
    ),
    Setting(
        "boot.timeout",
        _positive_float,
        "300",
        "Seconds the whole payload may take; past it the payload writes an error record "
        "and exits 3 (a TPM or device that stops answering must not hang the boot).",
        kernel=True,
    ),
    Setting(
        "boot.lock",
        _lock_when,
        "always",
        "When the payload extends the lock PCR. always: on every path of every boot, so "
        "the normal OS (booted with the same measured PCRs) can never unseal the recovery "
        "key; manage credentials with --key-file. (after-unseal, which let the normal OS "
        "unseal, is refused.)",
    ),
    Setting(
        "boot.credentials_dir",
        str,
        "/run/credentials/host-recover",
        "Where the recovery root finds its credentials: one 0400 file each, on tmpfs.",
    ),
    # --- witness (docs/witness.md) ---------------------------------------------------
    Setting(
        "witness.endpoints",
        _endpoints,
        "",
        "etcd client endpoints (host:port, comma-separated; v3 JSON gateway) where agents "
        "heartbeat and the boot payload reads its domain's last heartbeats; empty: no "
        "witness.",
    ),
    Setting(
        "witness.prefix",
        _key_prefix,
        "/host-recover",
        "Key prefix in etcd: PREFIX/DOMAIN/HOST is a host's last heartbeat.",
    ),
    Setting(
        "witness.interval",
        _positive_float,
        "30",
        "Seconds between an agent's heartbeats.",
    ),
    Setting(
        "witness.ttl_intervals",
        _ttl_intervals,
        "3",
        "The heartbeat lease's TTL in intervals: a host counts as stopped once it missed "
        "this many heartbeats.",
    ),
    Setting(
        "witness.deadline",
        _positive_float,
        "3",
        "Seconds the boot payload waits for the witness; past it, it decides without.",
    ),
)


BY_NAME: Mapping[str, Setting] = {
    **{alias: s for s in SETTINGS for alias in s.aliases},
    **{s.name: s for s in SETTINGS},
}

#: Kernel options that are no longer read, with what replaces them: the payload warns
#: (recover.config.retired_kernel_options), never fails, on an old command line.
RETIRED_KERNEL_OPTIONS: Mapping[str, str] = {
    "rd.host_recover.net": (
        "rd.host_recover.net= is no longer read: use dracut's ip= (ip=dhcp, or "
        "ip=ADDR::GATEWAY:NETMASK::IFACE:none), docs/boot.md#network"
    ),
}
