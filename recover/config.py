"""Configuration: one declaration per setting drives the INI file, the CLI, the kernel
command line (only where allowed) and docs/configuration.md.

File: /etc/host-recover/host-recover.conf plus host-recover.conf.d/*.conf drop-ins
(sorted, later wins). Sections are the part of a setting's name before the dot.
Trust-relevant settings (PCRs, keys, peers, quorum) come only from the file, which is
baked into the measured initramfs; the kernel command line may set only the few
settings marked ``kernel=True``. Pure: no TPM, no sockets.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from recover.errors import ConfigError

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


def _pcr_index(text: str) -> int:
    value = int(text, 0)
    if not 0 <= value <= 23:
        raise ValueError(f"{text!r} is not a PCR index (0..23)")
    return value


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "yes", "true", "on", ""):
        return True
    if t in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (yes/no)")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        t = text.strip().lower()
        if t not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return t

    parse.choices = choices  # type: ignore[attr-defined]
    return parse


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"{text!r} must be > 0")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text, 0)
    if value < 0:
        raise ValueError(f"{text!r} must be >= 0")
    return value


def _pcr_selection(text: str) -> str:
    from recover.pcrsel import parse_selection

    parse_selection(text)  # validate
    return text.strip()


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
    name: str  # "section.key"
    parse: Callable[[str], Any]
    default: str
    doc: str
    kernel: bool = False  # may be set with rd.host_recover.<key> on the kernel command line
    env: str | None = None  # environment variable that overrides the file

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
        _pcr_index,
        "15",
        "PCR extended after unsealing so the secret cannot be unsealed again this boot. "
        "It is part of the sealed policy with its reset value (zero).",
    ),
    Setting(
        "tpm.policy",
        _choice("pcr", "signed"),
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
        "signed); a successful unseal raises it, so older signed policies are refused.",
    ),
    Setting(
        "tpm.timeout",
        _positive_float,
        "30",
        "Seconds to wait for the TPM device to appear (real TPMs can be slow).",
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
        _choice("recover", "normal", "hold"),
        "normal",
        "What to do when only this host failed.",
    ),
    Setting(
        "verdict.on_undetermined",
        _choice("recover", "normal", "hold"),
        "normal",
        "What to do when the evidence does not decide.",
    ),
    # --- boot ----------------------------------------------------------------------
    Setting(
        "boot.mode",
        _choice("auto", "force", "never"),
        "auto",
        "auto: decide; force: recover (the PCR policy still applies); never: do nothing.",
        kernel=True,
    ),
    Setting(
        "boot.on_error",
        _choice("boot-normal", "halt", "shell"),
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
        _choice("always", "after-unseal"),
        "always",
        "When the payload extends the lock PCR. always: on every boot it runs, so the "
        "normal OS (booted with the same measured PCRs) can never unseal the recovery "
        "key; manage credentials with --key-file then. after-unseal: only after a recovery.",
    ),
    Setting(
        "boot.credentials_dir",
        str,
        "/run/credentials/host-recover",
        "Where the recovery root finds its credentials: one 0400 file each, on tmpfs.",
    ),
)

BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}


def _config_class() -> type:
    fields = [(s.attr, Any) for s in SETTINGS]
    return dataclasses.make_dataclass("Config", fields, frozen=True)


_ConfigBase = _config_class()


class Config(_ConfigBase):  # type: ignore[valid-type,misc]
    """The effective configuration (attributes ``tpm_tcti``, ``peers_deadline``, ...)."""

    def get(self, name: str) -> Any:
        return getattr(self, BY_NAME[name].attr)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {s.name: getattr(self, s.attr) for s in SETTINGS}

    @property
    def source_files(self) -> tuple[str, ...]:
        return getattr(self, "_sources", ())


def _apply(raw: dict[str, str], name: str, value: str, origin: str) -> None:
    setting = BY_NAME.get(name)
    if setting is None:
        import difflib

        close = difflib.get_close_matches(name, BY_NAME, n=1)
        raise ConfigError(
            f"{origin}: unknown setting {name!r}",
            hint=f"did you mean {close[0]}?"
            if close
            else "see docs/configuration.md (or `host-recover config --docs`) for the settings",
        )
    raw[name] = value


def _read_file(path: Path, raw: dict[str, str]) -> None:
    parser = configparser.ConfigParser(interpolation=None, default_section="__none__")
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f, source=os.fspath(path))
    except configparser.Error as e:
        raise ConfigError(
            f"{path}: {e.message.splitlines()[0]}", hint="fix the file's INI syntax"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text", hint="fix the file's encoding") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    for section in parser.sections():
        for key, value in parser.items(section):
            _apply(raw, f"{section}.{key.replace('-', '_')}", value, os.fspath(path))


def config_files(path: str | os.PathLike[str] | None) -> list[Path]:
    main = (
        Path(path)
        if path is not None
        else Path(os.environ.get("HOST_RECOVER_CONFIG", DEFAULT_PATH))
    )
    try:
        main_exists = main.exists()
        files = [main] if main_exists else []
        dropins = main.with_name(main.name + ".d")
        if dropins.is_dir():
            files += sorted(p for p in dropins.glob("*.conf") if p.is_file())
    except OSError as e:  # e.g. a directory this user may not enter
        raise ConfigError(f"cannot read {main}: {e.strerror}") from None
    if path is not None and not main_exists:
        raise ConfigError(
            f"config file {main} does not exist", hint="pass an existing file with --config"
        )
    return files


def parse_kernel_cmdline(cmdline: str) -> dict[str, str]:
    """``rd.host_recover.<key>=value`` options (last wins, '-' and '_' equal).

    Returns setting name → raw value for settings the kernel line may set; ``rd.host_recover``
    alone or ``=0/1`` is returned as ``enabled``.
    """
    out: dict[str, str] = {}
    for word in cmdline.split():
        key, _, value = word.partition("=")
        key = key.replace("-", "_")
        if key == "rd.host_recover":
            out["enabled"] = value or "1"
            continue
        if not key.startswith("rd.host_recover."):
            continue
        short = key[len("rd.host_recover.") :]
        matches = [s for s in SETTINGS if s.kernel and s.key == short]
        if matches:
            out[matches[0].name] = value if "=" in word else "1"
    return out


def load(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    read_files: bool = True,
) -> Config:
    """Defaults ← file ← drop-ins ← environment ← overrides (CLI / kernel line).

    ``read_files=False`` gives the built-in defaults (plus environment and overrides):
    what the boot payload falls back to when the baked-in file is broken."""
    env = os.environ if env is None else env
    raw: dict[str, str] = {s.name: s.default for s in SETTINGS}
    files = config_files(path) if read_files else []
    for f in files:
        _read_file(f, raw)
    for s in SETTINGS:
        if s.env and env.get(s.env):
            raw[s.name] = env[s.env]
    for name, value in (overrides or {}).items():
        _apply(raw, name, value, "override")
    values: dict[str, Any] = {}
    for s in SETTINGS:
        try:
            values[s.attr] = s.parse(raw[s.name])
        except (ValueError, ConfigError) as e:
            raise ConfigError(f"setting {s.name}: {e}", hint="see docs/configuration.md") from None
    cfg = Config(**values)
    object.__setattr__(cfg, "_sources", tuple(os.fspath(f) for f in files))
    return cfg


def render_docs(settings: Iterable[Setting] = SETTINGS) -> str:
    """Markdown reference generated from the declarations (docs/configuration.md)."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- generated by `host-recover config --docs`; do not edit by hand -->",
        "",
        f"File: `{DEFAULT_PATH}` (or `--config FILE`, or `HOST_RECOVER_CONFIG`), plus",
        "drop-ins in `host-recover.conf.d/*.conf` next to it, read in sorted order; later",
        "values win. Sections are the part of the name before the dot:",
        "",
        "```ini",
        "[tpm]",
        "pcrs = sha256:0,2,4,7,9",
        "```",
        "",
        "Settings marked *kernel* may also be given on the kernel command line as",
        "`rd.host_recover.<key>=<value>` (last value wins, `-` and `_` are equal). All other",
        "settings decide trust and come only from the file baked into the measured initramfs.",
        "",
        "| setting | default | kernel | env | meaning |",
        "|---|---|---|---|---|",
    ]
    for s in settings:
        choices = getattr(s.parse, "choices", None)
        doc = s.doc + (f" One of: {', '.join(choices)}." if choices else "")
        lines.append(
            f"| `{s.name}` | `{s.default}` | {'yes' if s.kernel else ''} | "
            f"{'`' + s.env + '`' if s.env else ''} | {doc} |"
        )
    return "\n".join(lines) + "\n"
