"""The initramfs payload: ``host-recover boot --newroot $NEWROOT`` (docs/boot.md).

evidence → peers → verdict → (recover) unseal → lock PCR → verify/decrypt the image into
tmpfs → mount it read-only under a tmpfs overlay on $NEWROOT → credentials into
/run/credentials/host-recover/ → decision record. dracut switches root; this never calls
switch_root and never writes the normal root disk.

Exit codes (the contract with hooks/ and the systemd unit):
  0   normal boot continues untouched
  10  the recovery root is mounted on $NEWROOT: switch root into it
  11  hold: the policy says stop for an operator (the hook halts or opens a shell)
  1-6 failure (recover/errors.py); /run/host-recover/on-error says what the hook does
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from recover import config as config_mod
from recover.errors import ExitCode, HostRecoverError, TpmUnavailable, UsageError
from recover.log import step

log = logging.getLogger("recover.boot")

EXIT_NORMAL = 0
EXIT_RECOVERED = 10
EXIT_HOLD = 11

RECORD_NAME = "decision.json"


@dataclasses.dataclass
class Outcome:
    """What this boot did; written to the decision record."""

    action: str = "normal"  # normal | recover | hold | error | disabled
    exit_code: int = EXIT_NORMAL
    verdict: dict[str, Any] | None = None
    evidence: dict[str, Any] | None = None
    peers: dict[str, Any] | None = None
    error: str | None = None
    hint: str | None = None
    image: dict[str, Any] | None = None
    credentials: list[str] = dataclasses.field(default_factory=list)
    lock_pcr_extended: bool = False
    timeline_ms: dict[str, float] = dataclasses.field(default_factory=dict)


def kernel_overrides(cmdline: str) -> tuple[bool, dict[str, str]]:
    """(enabled, overrides) from the kernel command line; only kernel-settable settings."""
    opts = config_mod.parse_kernel_cmdline(cmdline)
    enabled = opts.pop("enabled", "1").lower() not in ("0", "no", "off", "false")
    return enabled, opts


def apply_kernel_options(cfg: Any, overrides: dict[str, str]) -> Any:
    changes: dict[str, Any] = {}
    for name, raw in overrides.items():
        setting = config_mod.BY_NAME[name]
        try:
            changes[setting.attr] = setting.parse(raw)
        except ValueError as e:
            log.warning("ignoring rd.host_recover.%s=%s: %s", setting.key, raw, e)
    return cfg.replace(**changes) if changes else cfg


def _run(argv: list[str]) -> None:
    import subprocess  # not on the clean boot's path

    log.debug("+ %s", " ".join(argv))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise UsageError(
            f"{argv[0]} failed ({proc.returncode}): {msg[-1] if msg else 'no output'}",
            hint="check that the initramfs carries the loop, squashfs and overlay modules",
        )


def _is_mounted(path: str) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mounts", encoding="utf-8") as f:
        return any(line.split()[1] == target for line in f if len(line.split()) > 1)


def wait_for_tpm(tcti: str, timeout: float) -> None:
    """Device TCTIs: wait (bounded) for the character device to appear."""
    if not tcti.startswith("device"):
        return
    path = tcti.partition(":")[2] or "/dev/tpmrm0"
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TpmUnavailable(
                f"TPM device {path} did not appear within {timeout:.0f} s",
                hint="enable the TPM in firmware, or set rd.host_recover=0 to skip",
            )
        time.sleep(0.05)


def write_record(state_dir: str, outcome: Outcome, cfg: Any) -> Path:
    """Write decision.json atomically (tmpfs /run survives switch_root)."""
    d = Path(state_dir)
    d.mkdir(mode=0o755, parents=True, exist_ok=True)
    record = dataclasses.asdict(outcome)
    record.update(
        {
            "version": 1,
            "boot_id": _boot_id(),
            "time": time.time(),
            "mode": cfg.boot_mode,
            "on_error": cfg.boot_on_error,
        }
    )
    path = d / RECORD_NAME
    tmp = d / f".{RECORD_NAME}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)
    (d / "on-error").write_text(cfg.boot_on_error + "\n", encoding="utf-8")
    return path


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        import uuid

        return str(uuid.uuid4())


def record_summary(outcome: Outcome) -> bytes:
    """A compact summary for the TPM NV record (the next boot's 'previous decision')."""
    from recover.evidence import record_fields

    summary = {
        "v": 1,
        "action": outcome.action,
        "kind": (outcome.verdict or {}).get("kind"),
        "exit": outcome.exit_code,
        "t": int(time.time()),
        "boot": _boot_id()[:8],
        **record_fields(outcome.evidence),
    }
    return json.dumps(summary, separators=(",", ":")).encode()


def _store_paths(cfg: Any, mount_dir: Path) -> tuple[str, str]:
    """Mount the store device read-only when configured; return image + credential paths."""
    if not cfg.store_device:
        return cfg.store_image, cfg.store_credentials
    mount_dir.mkdir(parents=True, exist_ok=True)
    if not _is_mounted(os.fspath(mount_dir)):
        _run(["mount", "-o", "ro", cfg.store_device, os.fspath(mount_dir)])
    return (
        os.fspath(mount_dir / os.path.basename(cfg.store_image)),
        os.fspath(mount_dir / os.path.basename(cfg.store_credentials)),
    )


def _tmpfs(path: Path, size_bytes: int | None = None, mode: str = "0700") -> None:
    path.mkdir(parents=True, exist_ok=True)
    if _is_mounted(os.fspath(path)):
        return
    opts = f"mode={mode}" + (f",size={size_bytes}" if size_bytes else "")
    _run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", os.fspath(path)])


def recover_root(cfg: Any, tpm: Any, newroot: str, outcome: Outcome) -> None:
    """Unseal, lock, decrypt, mount, hand over credentials. Raises on any failure."""
    from recover import credentials, image, keys, provision

    work = Path(cfg.boot_state_dir)
    tl = outcome.timeline_ms
    with step("store", tl):
        image_path, creds_path = _store_paths(cfg, work / "store")
        header = image.read_header(image_path)
        min_version = tpm.counter_read(cfg.tpm_rollback_nv)
        if cfg.tpm_policy == "signed" and cfg.store_device:
            # The signed policy lives outside the measured boot path: on the store
            # partition, next to the image (same file name as tpm.policy_file).
            policy_file = work / "store" / os.path.basename(cfg.tpm_policy_file)
            cfg = cfg.replace(tpm_policy_file=os.fspath(policy_file))
    with step("unseal", tl):
        master = bytearray(provision.unseal_master(cfg, tpm=tpm))
    try:
        with step("lock", tl):
            tpm.pcr_extend(cfg.tpm_lock_pcr, b"host-recover: secret unsealed, locked")
            outcome.lock_pcr_extended = True
        image_key = keys.image_root_key(bytes(master))
        outcome.image = {
            "path": image_path,
            "version": header.image_version,
            "payload_type": header.payload_type,
            "size": header.plaintext_length,
            "min_version": min_version,
        }
        plain_dir = work / "image"
        with step("image", tl):
            _tmpfs(plain_dir, size_bytes=header.plaintext_length + (1 << 20))
            plain = plain_dir / "root.img"
            image.decrypt_file(image_path, plain, image_key, min_version=min_version)
        with step("mount", tl):
            lower, upper = work / "lower", work / "overlay"
            lower.mkdir(parents=True, exist_ok=True)
            fstype = {"squashfs": "squashfs", "erofs": "erofs"}.get(header.payload_type, "auto")
            _run(["mount", "-t", fstype, "-o", "ro,loop", os.fspath(plain), os.fspath(lower)])
            _tmpfs(upper, mode="0755")
            (upper / "upper").mkdir(exist_ok=True)
            (upper / "work").mkdir(exist_ok=True)
            _run(
                [
                    "mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={upper}/upper,workdir={upper}/work",
                    newroot,
                ]
            )  # fmt: skip
        with step("credentials", tl):
            store = credentials.load(creds_path, bytes(master))
            cred_dir = Path(cfg.boot_credentials_dir)
            cred_dir.parent.mkdir(mode=0o755, parents=True, exist_ok=True)  # /run: tmpfs
            outcome.credentials = credentials.write_to_dir(store, cred_dir)
        if header.image_version > min_version:
            with contextlib.suppress(HostRecoverError):
                tpm.counter_advance_to(cfg.tpm_rollback_nv, header.image_version)
    finally:
        for i in range(len(master)):
            master[i] = 0


def run(cfg: Any, newroot: str, outcome: Outcome | None = None) -> Outcome:
    """Decide and act. ``outcome`` is filled in as the boot goes, so that a failure
    half-way still leaves the verdict and evidence in the decision record."""
    from recover import decide
    from recover.tpm import Tpm

    outcome = outcome if outcome is not None else Outcome()
    tl = outcome.timeline_ms
    if cfg.boot_mode == "never":
        outcome.action = "disabled"
        log.info("mode=never: not deciding, normal boot")
        return outcome
    with step("tpm-wait", tl):
        wait_for_tpm(cfg.tpm_tcti, cfg.tpm_timeout)
    with Tpm.open(cfg.tpm_tcti, timeout=cfg.tpm_timeout) as tpm:
        try:
            with step("decide", tl):
                decision = decide.run(cfg, tpm, serve=True)
            tl.update({f"decide.{k}": v for k, v in decision.timings.items()})
            outcome.verdict = decision.verdict.to_json()
            outcome.evidence = decision.evidence.to_json()
            outcome.peers = decision.peers.to_json() if decision.peers is not None else None
            action = decision.verdict.action
            log.info(
                "verdict: %s → %s (%s)",
                decision.verdict.kind,
                action,
                "; ".join(decision.verdict.reasons),
            )
            outcome.action = str(action)
            if action == "recover":
                _record_nv(tpm, cfg, dataclasses.replace(outcome, action="recovering"))
                recover_root(cfg, tpm, newroot, outcome)
                outcome.exit_code = EXIT_RECOVERED
                log.info("recovery root ready on %s", newroot)
            elif action == "hold":
                outcome.exit_code = EXIT_HOLD
            else:
                outcome.exit_code = EXIT_NORMAL
        except HostRecoverError as e:
            _fail(outcome, int(e.exit_code), e.message, e.hint)
            raise
        finally:
            if not outcome.lock_pcr_extended and cfg.boot_lock == "always":
                # The normal OS boots with the same measured PCRs: without this, its root
                # could unseal the recovery key.
                try:
                    tpm.pcr_extend(cfg.tpm_lock_pcr, b"host-recover: boot without unseal")
                    outcome.lock_pcr_extended = True
                except HostRecoverError as e:
                    log.error("could not extend lock PCR %d: %s", cfg.tpm_lock_pcr, e)
            _record_nv(tpm, cfg, outcome)
    return outcome


def _fail(outcome: Outcome, code: int, message: str, hint: str | None) -> None:
    outcome.action = "error"
    outcome.exit_code = code
    outcome.error = message
    outcome.hint = hint


def _record_nv(tpm: Any, cfg: Any, outcome: Outcome) -> None:
    try:
        tpm.nv_blob_write(cfg.tpm_record_nv, record_summary(outcome))
    except HostRecoverError as e:
        log.warning("could not store the decision summary in TPM NV: %s", e)


def cmd_boot(args: argparse.Namespace, cfg: Any) -> int:
    t0 = time.monotonic()
    try:
        cmdline = Path(args.cmdline).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise UsageError(f"cannot read {args.cmdline}: {e.strerror}") from None
    enabled, overrides = kernel_overrides(cmdline)
    cfg = apply_kernel_options(cfg, overrides)
    if cfg.boot_debug:
        logging.getLogger().setLevel(logging.DEBUG)
    outcome = Outcome()
    watchdog = None
    if not enabled:
        outcome.action = "disabled"
        log.info("rd.host_recover=0: normal boot")
    else:
        watchdog = _start_watchdog(cfg, outcome, t0)
        try:
            run(cfg, args.newroot, outcome)
        except HostRecoverError as e:
            _fail(outcome, int(e.exit_code), e.message, e.hint)
            log.error("error: %s", e.message)
            if e.hint:
                log.error("hint: %s", e.hint)
            log.error("on-error policy: %s", cfg.boot_on_error)
            _cleanup(args.newroot, cfg)
        except Exception as e:  # noqa: BLE001 - a payload bug must still end as an outcome
            _fail(outcome, int(ExitCode.INTERNAL), f"internal error: {type(e).__name__}: {e}", None)
            log.exception("internal error")
            _cleanup(args.newroot, cfg)
    outcome.timeline_ms["payload-total"] = round((time.monotonic() - t0) * 1000, 1)
    try:
        path = write_record(cfg.boot_state_dir, outcome, cfg)
    finally:
        if watchdog is not None:
            watchdog.cancel()
            watchdog.join(timeout=1)
    log.info("decision record: %s (exit %d)", path, outcome.exit_code)
    return outcome.exit_code


def _start_watchdog(cfg: Any, outcome: Outcome, t0: float) -> threading.Timer:
    """End the payload after boot.timeout even if a C call (a TPM that stopped answering,
    a hung device) never returns: write an error record and exit 3. The caller cancels
    it once the record is written."""

    def fire() -> None:
        msg = f"the payload did not finish within {cfg.boot_timeout:.0f} s"
        _fail(outcome, int(ExitCode.TPM_UNAVAILABLE), msg, "check the TPM and the store device")
        log.error("error: %s; on-error policy: %s", msg, cfg.boot_on_error)
        outcome.timeline_ms["payload-total"] = round((time.monotonic() - t0) * 1000, 1)
        with contextlib.suppress(Exception):
            write_record(cfg.boot_state_dir, outcome, cfg)
        logging.shutdown()
        os._exit(int(ExitCode.TPM_UNAVAILABLE))

    timer = threading.Timer(cfg.boot_timeout, fire)
    timer.name = "host-recover-watchdog"
    timer.daemon = True
    timer.start()
    return timer


def boot_without_config(args: argparse.Namespace, error: HostRecoverError) -> int:
    """The baked-in configuration is broken: still lock the secure store (built-in
    lock PCR, through the built-in or given TCTI), write an error record and return the
    error's exit code, so the hook applies on_error (from the kernel line, else
    boot-normal) and the normal OS can never unseal."""
    overrides: dict[str, str] = {}
    for item in getattr(args, "set", []):  # keep the --set overrides that are valid
        name, _, value = item.partition("=")
        setting = config_mod.BY_NAME.get(name.strip())
        with contextlib.suppress(ValueError, HostRecoverError):
            if setting is not None:
                setting.parse(value)
                overrides[setting.name] = value
    if getattr(args, "tcti", None):
        overrides["tpm.tcti"] = args.tcti
    cfg = config_mod.load(None, overrides, read_files=False)
    try:
        cmdline = Path(args.cmdline).read_text(encoding="utf-8", errors="replace")
    except OSError:
        cmdline = ""
    enabled, kopts = kernel_overrides(cmdline)
    cfg = apply_kernel_options(cfg, kopts)
    outcome = Outcome()
    _fail(outcome, int(error.exit_code), f"configuration: {error.message}", error.hint)
    log.error("error: configuration: %s", error.message)
    if error.hint:
        log.error("hint: %s", error.hint)
    if enabled and cfg.boot_mode != "never":
        try:
            from recover.tpm import Tpm

            wait_for_tpm(cfg.tpm_tcti, cfg.tpm_timeout)
            with Tpm.open(cfg.tpm_tcti, timeout=cfg.tpm_timeout) as tpm:
                tpm.pcr_extend(cfg.tpm_lock_pcr, b"host-recover: configuration error")
            outcome.lock_pcr_extended = True
        except HostRecoverError as e:
            log.error("could not extend lock PCR %d: %s", cfg.tpm_lock_pcr, e)
    log.error("on-error policy: %s", cfg.boot_on_error)
    write_record(cfg.boot_state_dir, outcome, cfg)
    return outcome.exit_code


def _cleanup(newroot: str, cfg: Any) -> None:
    """After a failure leave nothing behind: no half-mounted $NEWROOT, no plaintext image,
    no credentials for the normal OS (the normal boot may go on)."""
    import subprocess

    work = Path(cfg.boot_state_dir)
    cred = Path(cfg.boot_credentials_dir)
    for path in (newroot, work / "overlay", work / "lower", work / "image", cred):
        with contextlib.suppress(OSError, subprocess.SubprocessError, UsageError):
            if _is_mounted(os.fspath(path)):
                _run(["umount", "-l", os.fspath(path)])
    if cred.is_dir():
        for f in cred.iterdir():
            with contextlib.suppress(OSError):
                f.unlink()
    with contextlib.suppress(OSError, subprocess.SubprocessError, UsageError):
        if _is_mounted(os.fspath(work / "store")):
            _run(["umount", os.fspath(work / "store")])
