"""The boot plan: what the payload does, in which order, and how it ends. Pure.

The payload (recover.boot.payload) only carries out what this module decides, so every
path through a boot is a row of a table (tests/unit/test_plan.py). The rule that
the secure store rests on lives here:

    Before the payload ends, on every path — recover, normal, hold, ``never``,
    disabled, every error, the watchdog — the lock PCR is extended in every allocated
    bank and read back. If that cannot be done and verified, the boot does not continue
    to the normal root: it halts with a clear console line.

On a recovery the order is unseal → lock → only then touch the store (mount, read), so
that nothing an attacker controls on the store runs while the secret can be unsealed.

The TPM decision record (the next boot's "previous decision") is written only before
the lock: its NV index's write policy needs the lock PCR at its reset value, so that the
normal OS cannot forge it. Every route but recovery writes its final record (RECORD)
just before LOCK; a recovery writes "recovering" (MARK) before it unseals and cannot
rewrite it after the lock: the next boot reads "the previous boot started a recovery"
together with its own crash signals (docs/verdict.md, "Decision record in TPM NV").
"""

from __future__ import annotations

import dataclasses
import enum

from recover.errors import ExitCode
from recover.settings import Action, Mode, OnError


class Route(enum.StrEnum):
    """How the payload was asked to end, before anything could fail."""

    DISABLED = "disabled"  # boot.enabled = no (rd.host_recover=0): no decision
    NEVER = "never"  # boot.mode = never: no decision
    NORMAL = "normal"  # the verdict's action
    HOLD = "hold"
    RECOVER = "recover"


class Step(enum.StrEnum):
    GATHER = "gather"  # evidence → peers → verdict
    RECORD = "record"  # TPM NV decision record, final: only possible before the lock
    MARK = "mark"  # TPM NV record "recovering" (a power cut now is seen next boot)
    BINDING = "binding"  # a measured command line must be /proc/cmdline (event log)
    UNSEAL = "unseal"
    LOCK = "lock"  # extend the lock PCR in every bank, read back, verify
    STORE = "store"  # mount the store read-only, nodev, nosuid, noexec; read its files
    IMAGE = "image"  # verify + decrypt the recovery image
    ROOTFS = "mount"  # image read-only under a tmpfs overlay on $NEWROOT
    CREDENTIALS = "credentials"  # /run/credentials/host-recover, 0400 on tmpfs


class HookAction(enum.StrEnum):
    """What the dracut hook (or the systemd unit) does next; written to
    /run/host-recover/action. Missing file = Python never ran = halt."""

    NORMAL = "normal"  # boot the normal root
    RECOVER = "recover"  # boot the recovery root mounted on $NEWROOT
    HALT = "halt"
    SHELL = "shell"  # emergency shell (only when the baked-in config allows it)


def route(enabled: bool, mode: Mode) -> Route | None:
    """The route known before gathering, or None when the verdict decides."""
    if not enabled:
        return Route.DISABLED
    if mode is Mode.NEVER:
        return Route.NEVER
    return None


def route_of(action: Action) -> Route:
    return {Action.NORMAL: Route.NORMAL, Action.HOLD: Route.HOLD, Action.RECOVER: Route.RECOVER}[
        action
    ]


def steps(r: Route | None) -> tuple[Step, ...]:
    """The ordered steps of a route (None: before the verdict is known)."""
    if r is None:
        return (Step.GATHER,)
    if r is Route.RECOVER:
        return (
            Step.MARK,
            Step.BINDING,
            Step.UNSEAL,
            Step.LOCK,
            Step.STORE,
            Step.IMAGE,
            Step.ROOTFS,
            Step.CREDENTIALS,
        )
    return (Step.RECORD, Step.LOCK)


@dataclasses.dataclass(frozen=True)
class Result:
    """What happened in this boot, as the payload saw it at its end."""

    route: Route | None  # None: failed before a route was known
    error: ExitCode | None  # the failure's exit code (the watchdog: TPM_UNAVAILABLE)
    locked: bool  # the lock PCR was extended in every allocated bank and verified
    on_error: OnError  # the effective on_error (kernel options may only make it safer)


@dataclasses.dataclass(frozen=True)
class Ending:
    """How a boot ends: the exit code, the hooks' action and why."""

    exit_code: ExitCode
    hook: HookAction
    reason: str


def ending(result: Result) -> Ending:
    """The one table of how a boot ends (docs/security.md, "The lock rule")."""
    if not result.locked:
        code = result.error if result.error is not None else ExitCode.TPM_UNAVAILABLE
        return Ending(
            code,
            HookAction.HALT,
            "the lock PCR could not be extended and verified: halting, because the "
            "normal OS could otherwise unseal the recovery key",
        )
    if result.error is not None:
        hook = {
            OnError.BOOT_NORMAL: HookAction.NORMAL,
            OnError.HALT: HookAction.HALT,
            OnError.SHELL: HookAction.SHELL,
        }[result.on_error]
        return Ending(result.error, hook, f"payload failed; on_error = {result.on_error}")
    if result.route is Route.RECOVER:
        return Ending(ExitCode.RECOVERED, HookAction.RECOVER, "recovery root ready")
    if result.route is Route.HOLD:
        hook = HookAction.SHELL if result.on_error is OnError.SHELL else HookAction.HALT
        return Ending(ExitCode.HOLD, hook, "hold: the policy says stop for an operator")
    if result.route is None:  # cannot happen without an error; fail closed anyway
        return Ending(ExitCode.INTERNAL, HookAction.HALT, "no route and no error")
    return Ending(ExitCode.OK, HookAction.NORMAL, f"{result.route}: normal boot continues")


def effective_on_error(baked: OnError, kernel: OnError | None) -> OnError:
    """A kernel option may only make the boot safer: ``halt`` always; ``shell`` only
    when the baked-in configuration says ``shell``; ``boot-normal`` only when it says
    ``boot-normal``."""
    if kernel is None or kernel is baked or kernel is OnError.HALT:
        return kernel or baked
    return baked


TIMEOUT_FLOOR = 30.0  # seconds: a kernel option cannot shorten the watchdog below this


def effective_timeout(baked: float, kernel: float | None) -> float:
    """The payload watchdog: a kernel option may lengthen it, or shorten it no further
    than :data:`TIMEOUT_FLOOR` (``rd.host_recover.timeout=0.001`` must not end the
    payload before it locked)."""
    if kernel is None:
        return baked
    return max(kernel, min(baked, TIMEOUT_FLOOR))
