"""Configuration: the effective, typed settings (recover.settings declares them).

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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recover.errors import ConfigError
from recover.settings import (
    BY_NAME,
    DEFAULT_PATH,
    RETIRED_KERNEL_OPTIONS,
    SETTINGS,
    Action,
    LockWhen,
    Mode,
    OnError,
    PolicyKind,
)


@dataclasses.dataclass(frozen=True)
class Config:
    """The effective configuration: one typed field per setting of recover.settings
    (``tpm.pcrs`` → ``tpm_pcrs``), holding parsed values (a test keeps the two equal)."""

    tpm_tcti: str
    tpm_srk_handle: int
    tpm_seal_handle: int
    tpm_ak_handle: int
    tpm_pcrs: str
    tpm_lock_pcr: int
    tpm_policy: PolicyKind
    tpm_policy_pubkey: str
    tpm_policy_file: str
    tpm_rollback_nv: int
    tpm_orderly_nv: int
    tpm_record_nv: int
    tpm_policy_nv: int
    tpm_credentials_nv: int
    tpm_srk_name: str
    tpm_seal_name: str
    tpm_image_key_id: str
    tpm_timeout: float
    tpm_event_log: str
    store_image: str
    store_credentials: str
    store_device: str
    peers_host_id: str
    peers_inventory: str
    peers_listen: str
    peers_deadline: float
    peers_timeout: float
    peers_retries: int
    inventory_key: str
    inventory_file: str
    inventory_min_version: int
    peers_network_wait: float
    verdict_quorum: str
    verdict_window: float
    verdict_on_isolated: Action
    verdict_on_undetermined: Action
    verdict_wait: float
    verdict_sample_above: int
    verdict_sample_error: float
    boot_enabled: bool
    boot_mode: Mode
    boot_on_error: OnError
    boot_debug: bool
    boot_state_dir: str
    boot_timeout: float
    boot_lock: LockWhen
    boot_credentials_dir: str
    witness_endpoints: str
    witness_prefix: str
    witness_interval: float
    witness_ttl_intervals: int
    witness_deadline: float
    sources: tuple[str, ...] = ()  # the files read, in order

    def get(self, name: str) -> Any:
        return getattr(self, BY_NAME[name].attr)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {s.name: getattr(self, s.attr) for s in SETTINGS}

    @property
    def source_files(self) -> tuple[str, ...]:
        return self.sources


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
    raw[setting.name] = value


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


def main_path(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> Path:
    """The main configuration file: ``path``, else HOST_RECOVER_CONFIG from ``env`` (the
    process environment by default), else the default."""
    env = os.environ if env is None else env
    return Path(path) if path is not None else Path(env.get("HOST_RECOVER_CONFIG", DEFAULT_PATH))


def dropin_dir(path: str | os.PathLike[str] | None) -> Path:
    """The drop-in directory of the main file (``host-recover.conf.d``)."""
    main = main_path(path)
    return main.with_name(main.name + ".d")


def config_files(
    path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None
) -> list[Path]:
    """The main file (:func:`main_path`) and its drop-ins; only a given ``path`` must
    exist."""
    main = main_path(path, env)
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


KERNEL_OPTIONS: Mapping[str, str] = {
    s.kernel_option.replace("-", "_"): s.name for s in SETTINGS if s.kernel_option
}


def parse_kernel_cmdline(cmdline: str) -> dict[str, str]:
    """The kernel options of settings marked ``kernel`` (recover.settings): setting name →
    raw value. Last value wins, ``-`` and ``_`` are equal in the option's name, and an
    option without ``=`` means ``1`` (``rd.host_recover.debug``). The one parser of the
    kernel command line: the hooks and the systemd unit read none of it."""
    out: dict[str, str] = {}
    for word in cmdline.split():
        key, sep, value = word.partition("=")
        name = KERNEL_OPTIONS.get(key.replace("-", "_"))
        if name is not None:
            out[name] = value if sep else "1"
    return out


def retired_kernel_options(cmdline: str) -> list[str]:
    """One warning per retired kernel option on ``cmdline`` (settings.RETIRED_KERNEL_OPTIONS;
    ``-`` and ``_`` equal in the name)."""
    seen = {w.partition("=")[0].replace("-", "_") for w in cmdline.split()}
    return [msg for opt, msg in RETIRED_KERNEL_OPTIONS.items() if opt.replace("-", "_") in seen]


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
    files = config_files(path, env) if read_files else []
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
    _check_together(values)
    return Config(**values, sources=tuple(os.fspath(f) for f in files))


def _check_together(values: Mapping[str, Any]) -> None:
    """Rules between settings."""
    from recover.core.pcrsel import parse_selection

    lock = values["tpm_lock_pcr"]
    if any(lock in pcrs for _, pcrs in parse_selection(values["tpm_pcrs"])):
        raise ConfigError(
            f"setting tpm.lock_pcr: PCR {lock} is also in tpm.pcrs ({values['tpm_pcrs']})",
            hint="the lock PCR is part of every policy with its reset value; take it out of "
            "tpm.pcrs or choose another tpm.lock_pcr",
        )
