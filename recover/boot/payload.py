"""The initramfs payload: ``host-recover boot --newroot $NEWROOT`` (docs/boot.md).

It carries out recover.core.plan: gather (evidence → peers → verdict), then the route's
steps — on a recovery (mark) → unseal → lock → store → image → rootfs → credentials,
otherwise the TPM decision record and the lock — then decision.json and the hook's next
action. dracut switches root; this never calls switch_root and never writes the normal
root disk.

Only the baked-in configuration counts here: the environment is ignored (the caller
loads the configuration with ``env={}``), and kernel options may only make the boot
safer (recover.core.plan.effective_on_error, effective_timeout).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from recover import config as config_mod
from recover.boot import lock as lock_mod
from recover.boot import rootfs
from recover.boot.record import Outcome, record_nv, write_record
from recover.config import Config
from recover.core import plan
from recover.errors import ExitCode, HostRecoverError, TpmUnavailable, report
from recover.log import step
from recover.settings import BY_NAME

if TYPE_CHECKING:
    from recover.tpm import Tpm

log = logging.getLogger(__name__)


WATCHDOG_LOCK_WAIT = 10.0  # seconds the watchdog waits for a fresh TPM connection to lock


def apply_kernel_options(cfg: Config, cmdline: str) -> Config:
    """The baked-in configuration with the kernel options applied, under the rule
    that they may only make the boot safer."""
    changes: dict[str, Any] = {}
    for warning in config_mod.retired_kernel_options(cmdline):
        log.warning("%s", warning)
    for name, raw in config_mod.parse_kernel_cmdline(cmdline).items():
        setting = BY_NAME[name]
        try:
            changes[setting.attr] = setting.parse(raw)
        except ValueError as e:
            log.warning("ignoring %s=%s: %s", setting.kernel_option, raw, e)
    if "boot_on_error" in changes:
        changes["boot_on_error"] = plan.effective_on_error(
            cfg.boot_on_error, changes["boot_on_error"]
        )
    if "boot_timeout" in changes:
        changes["boot_timeout"] = plan.effective_timeout(cfg.boot_timeout, changes["boot_timeout"])
    return dataclasses.replace(cfg, **changes) if changes else cfg


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
                hint="enable the TPM in firmware; without it the boot halts, because "
                "the secure store cannot be locked",
            )
        time.sleep(0.05)


@dataclasses.dataclass
class Payload:
    """One run of the payload: its configuration and what happened so far."""

    cfg: Config
    newroot: str
    cmdline: str = ""  # the kernel command line's text
    outcome: Outcome = dataclasses.field(default_factory=Outcome)
    t0: float = dataclasses.field(default_factory=time.monotonic)
    route: plan.Route | None = None
    error: ExitCode | None = None
    tpm: Tpm | None = None
    recorded: bool = False  # the final record is in TPM NV (written before the lock)
    finished: threading.Event = dataclasses.field(default_factory=threading.Event)

    def _tpm(self) -> Tpm:
        assert self.tpm is not None, "the TPM is opened before any step"
        return self.tpm

    def fail(self, code: ExitCode, message: str, hint: str | None) -> None:
        self.error = code
        self.outcome.action = "error"
        self.outcome.error = message
        self.outcome.hint = hint

    def run(self) -> None:
        """Carry out the plan; every failure becomes ``self.error``, never an exception."""
        from recover.tpm import Tpm

        cfg, tl = self.cfg, self.outcome.timeline_ms
        self.route = plan.route(cfg.boot_enabled, cfg.boot_mode)
        if self.route is not None:
            self.outcome.action = str(self.route)
            log.info("%s: not deciding; locking the secure store", self.route)
        try:
            with step("tpm-wait", tl):
                wait_for_tpm(cfg.tpm_tcti, cfg.tpm_timeout)
            self.tpm = Tpm.open(cfg.tpm_tcti, timeout=cfg.tpm_timeout)
            if self.route is None:
                self.route = self._gather()
            self._steps(plan.steps(self.route))
        except HostRecoverError as e:
            self.fail(e.exit_code, e.message, e.hint)
            report(e, log)
            ev = getattr(e, "evidence", None)  # read before the failure (boot.gather)
            if self.outcome.evidence is None and ev is not None:
                self.outcome.evidence = ev.to_json()  # the record keeps its floors
        except Exception as e:  # noqa: BLE001 - a payload bug must still end as an outcome
            self.fail(ExitCode.INTERNAL, f"internal error: {type(e).__name__}: {e}", None)
            log.exception("internal error")
        finally:
            # A failure before the lock: its record, while the index can still be written.
            if self.tpm is not None and not self.outcome.lock_pcr_extended:
                self._record()
            self._lock_if_needed()
            if self.tpm is not None:
                self.tpm.close()

    def _gather(self) -> plan.Route:
        from recover.boot import gather

        tl = self.outcome.timeline_ms
        with step("decide", tl):
            decision = gather.run(self.cfg, self._tpm(), serve=True, prepare=self._preload)
        tl.update({f"decide.{k}": v for k, v in decision.timings.items()})
        self.outcome.verdict = decision.verdict.to_json()
        self.outcome.evidence = decision.evidence.to_json()
        self.outcome.peers = decision.peers.to_json() if decision.peers is not None else None
        self.outcome.inventory_version = decision.inventory_version
        self.outcome.witness = decision.witness
        v = decision.verdict
        log.info("verdict: %s → %s (%s)", v.kind, v.action, "; ".join(v.reasons))
        self.outcome.action = str(v.action)
        return plan.route_of(v.action)

    def _preload(self) -> None:
        """The recovery's kernel modules, loading in the background (recover.boot.preload;
        imported only here: a clean boot never loads it)."""
        from recover.boot import preload

        preload.start(self.cfg.store_device)

    def _steps(self, steps: tuple[plan.Step, ...]) -> None:
        if self.route is plan.Route.RECOVER:
            from recover.boot.recovery import Recovery, run_steps  # a clean boot never loads it

            self._preload()  # a forced recovery (boot.mode): load while the TPM unseals
            r = Recovery(self.cfg, self._tpm(), self.newroot, self.outcome, cmdline=self.cmdline)
            run_steps(r, steps)
            log.info("recovery root ready on %s", self.newroot)
        elif steps == (plan.Step.RECORD, plan.Step.LOCK):
            self._record()
            self._lock()
        else:  # pragma: no cover - plan.steps gives no other shape
            raise AssertionError(f"unexpected steps {steps}")

    def _record(self) -> None:
        """The TPM decision record, before the lock (its write policy needs the lock PCR
        at its reset value): the exit code is the one the plan gives with a verified
        lock; if the lock then fails the boot halts, and decision.json says so."""
        if self.recorded or self.tpm is None:
            return
        with step("record", self.outcome.timeline_ms):
            self.recorded = record_nv(self.tpm, self.cfg, self.record_snapshot())

    def record_snapshot(self) -> Outcome:
        end = plan.ending(plan.Result(self.route, self.error, True, self.cfg.boot_on_error))
        return dataclasses.replace(self.outcome, exit_code=int(end.exit_code))

    def _lock(self) -> None:
        with step("lock", self.outcome.timeline_ms):
            self.outcome.lock = lock_mod.extend(self._tpm(), self.cfg.tpm_lock_pcr)
        self.outcome.lock_pcr_extended = True

    def _lock_if_needed(self) -> None:
        """On every path the lock is attempted before the payload ends."""
        if self.outcome.lock_pcr_extended or self.tpm is None:
            return
        try:
            self._lock()
        except HostRecoverError as e:
            log.error("could not lock the secure store: %s", e.message)
            if self.error is None:
                self.fail(e.exit_code, f"lock: {e.message}", e.hint)

    def finish(self) -> int:
        """Apply the plan's ending, clean up after a failure, write the record; return the
        exit code."""
        result = plan.Result(
            self.route, self.error, self.outcome.lock_pcr_extended, self.cfg.boot_on_error
        )
        end = plan.ending(result)
        if end.hook is not plan.HookAction.RECOVER:
            rootfs.cleanup(self.newroot, self.cfg)
        self.outcome.exit_code = int(end.exit_code)
        self.outcome.next = str(end.hook)
        if end.hook is plan.HookAction.HALT and self.error is None:
            self.fail(end.exit_code, end.reason, None)
        if self.error is not None:
            log.error("%s; next: %s", end.reason, end.hook)
        self.outcome.timeline_ms["payload-total"] = round((time.monotonic() - self.t0) * 1000, 1)
        path = write_record(self.cfg.boot_state_dir, self.outcome, self.cfg)
        log.info("decision record: %s (exit %d, next: %s)", path, end.exit_code, end.hook)
        return int(end.exit_code)


def boot(cfg: Config, newroot: str, cmdline: str) -> int:
    """The payload with the baked-in ``cfg`` and the kernel command line's text."""
    cfg = apply_kernel_options(cfg, cmdline)
    if cfg.boot_debug:
        logging.getLogger().setLevel(logging.DEBUG)
    p = Payload(cfg, newroot, cmdline)
    watchdog = _start_watchdog(p)
    try:
        p.run()
        return p.finish()
    finally:
        p.finished.set()
        watchdog.cancel()
        watchdog.join(timeout=1)


def _start_watchdog(p: Payload) -> threading.Timer:
    """End the payload after boot.timeout even if a C call (a TPM that stopped answering,
    a hung device) never returns: lock through a fresh TPM connection (bounded), write
    the record and exit 3; without a verified lock the hook halts."""

    def fire() -> None:
        if p.finished.is_set():
            return
        msg = f"the payload did not finish within {p.cfg.boot_timeout:.0f} s"
        e = TpmUnavailable(msg, hint="check the TPM and the store device")
        p.fail(e.exit_code, e.message, e.hint)
        report(e, log)
        if not p.outcome.lock_pcr_extended:
            _watchdog_lock(p)
        with contextlib.suppress(Exception):
            p.finish()
        logging.shutdown()
        os._exit(int(ExitCode.TPM_UNAVAILABLE))

    timer = threading.Timer(p.cfg.boot_timeout, fire)
    timer.name = "host-recover-watchdog"
    timer.daemon = True
    timer.start()
    return timer


def _watchdog_lock(p: Payload) -> None:
    """Lock through a new TPM connection, in a thread given WATCHDOG_LOCK_WAIT seconds:
    the main thread may be stuck inside the TPM."""
    from recover.tpm import Tpm

    def attempt() -> None:
        with contextlib.suppress(Exception), Tpm.open(p.cfg.tpm_tcti, timeout=5) as t:
            if not p.recorded:  # the error record, before the lock (write policy)
                p.recorded = record_nv(t, p.cfg, p.record_snapshot())
            p.outcome.lock = lock_mod.extend(t, p.cfg.tpm_lock_pcr)
            p.outcome.lock_pcr_extended = True

    th = threading.Thread(target=attempt, name="host-recover-watchdog-lock", daemon=True)
    th.start()
    th.join(WATCHDOG_LOCK_WAIT)


def boot_without_config(
    error: HostRecoverError, newroot: str, cmdline: str, overrides: dict[str, str]
) -> int:
    """The baked-in configuration is broken: lock with the built-in defaults (plus the
    command line's overrides that are valid on their own), write an error record, and
    end as the plan says (on_error from the defaults; without a verified lock: halt)."""
    valid = {}
    for name, value in overrides.items():
        setting = BY_NAME.get(name)
        with contextlib.suppress(ValueError, HostRecoverError):
            if setting is not None:
                setting.parse(value)
                valid[setting.name] = value
    cfg = config_mod.load(None, valid, env={}, read_files=False)
    cfg = apply_kernel_options(cfg, cmdline)
    p = Payload(cfg, newroot)
    p.fail(error.exit_code, f"configuration: {error.message}", error.hint)
    report(error, log, prefix="configuration: ")
    try:
        from recover.tpm import Tpm

        wait_for_tpm(cfg.tpm_tcti, cfg.tpm_timeout)
        with Tpm.open(cfg.tpm_tcti, timeout=cfg.tpm_timeout) as t:
            p.tpm = t
            p._record()
            p._lock()
    except HostRecoverError as e:
        log.error("could not lock the secure store: %s", e.message)
    p.tpm = None
    return p.finish()
