"""The boot plan, one row per path (pure: no TPM, no root, milliseconds)."""

from __future__ import annotations

import pytest

from recover.core import plan
from recover.core.plan import Ending, HookAction, Result, Route, Step
from recover.errors import ExitCode
from recover.settings import Action, Mode, OnError

NORMAL, RECOVER, HALT, SHELL = (
    HookAction.NORMAL,
    HookAction.RECOVER,
    HookAction.HALT,
    HookAction.SHELL,
)
BN, H, SH = OnError.BOOT_NORMAL, OnError.HALT, OnError.SHELL
E = ExitCode


@pytest.mark.parametrize(
    ("enabled", "mode", "route"),
    [
        (True, Mode.AUTO, None),
        (True, Mode.FORCE, None),  # force still gathers (the record shows the evidence)
        (True, Mode.NEVER, Route.NEVER),
        (False, Mode.AUTO, Route.DISABLED),
        (False, Mode.NEVER, Route.DISABLED),
    ],
)
def test_route_before_gathering(enabled: bool, mode: Mode, route: Route | None) -> None:
    assert plan.route(enabled, mode) is route


@pytest.mark.parametrize(
    ("route", "steps"),
    [
        (Route.NORMAL, (Step.RECORD, Step.LOCK)),
        (Route.HOLD, (Step.RECORD, Step.LOCK)),
        (Route.NEVER, (Step.RECORD, Step.LOCK)),
        (Route.DISABLED, (Step.RECORD, Step.LOCK)),
        # RECOVER: MARK ... LOCK, below
    ],
)
def test_steps_per_route(route: Route, steps: tuple[Step, ...]) -> None:
    assert plan.steps(route) == steps


def test_the_tpm_record_is_written_only_before_the_lock() -> None:
    """The decision record's NV index takes writes only while the lock PCR is at its
    reset value: every route writes its record (final, or "recovering") before LOCK."""
    for r in Route:
        s = plan.steps(r)
        written = [x for x in s if x in (Step.RECORD, Step.MARK)]
        assert len(written) == 1 and s.index(written[0]) < s.index(Step.LOCK), r
    assert plan.steps(Route.RECOVER).index(Step.MARK) < plan.steps(Route.RECOVER).index(Step.UNSEAL)


def test_every_route_locks_and_recovery_touches_the_store_only_after_the_lock() -> None:
    assert plan.steps(None) == (Step.GATHER,)
    for r in Route:
        steps = plan.steps(r)
        assert Step.LOCK in steps, r
    rec = plan.steps(Route.RECOVER)
    assert rec.index(Step.UNSEAL) < rec.index(Step.LOCK) < rec.index(Step.STORE)
    # the measured command line is checked against /proc/cmdline before anything unseals
    assert rec.index(Step.MARK) < rec.index(Step.BINDING) < rec.index(Step.UNSEAL)
    assert rec.index(Step.STORE) < rec.index(Step.IMAGE) < rec.index(Step.ROOTFS)
    assert rec[-1] is Step.CREDENTIALS and rec[0] is Step.MARK
    assert {Action(a) for a in ("recover", "normal", "hold")} == set(Action)
    assert {plan.route_of(a) for a in Action} == {Route.RECOVER, Route.NORMAL, Route.HOLD}


# route, error, locked, on_error → exit code, hook action
ROWS = [
    # the good paths
    (Route.RECOVER, None, True, BN, E.RECOVERED, RECOVER),
    (Route.NORMAL, None, True, BN, E.OK, NORMAL),
    (Route.NORMAL, None, True, SH, E.OK, NORMAL),
    (Route.DISABLED, None, True, BN, E.OK, NORMAL),
    (Route.NEVER, None, True, BN, E.OK, NORMAL),
    (Route.HOLD, None, True, BN, E.HOLD, HALT),  # hold never boots the normal root
    (Route.HOLD, None, True, H, E.HOLD, HALT),
    (Route.HOLD, None, True, SH, E.HOLD, SHELL),
    # failures after a verified lock: on_error decides
    (Route.RECOVER, E.INTEGRITY, True, BN, E.INTEGRITY, NORMAL),
    (Route.RECOVER, E.POLICY_MISMATCH, True, H, E.POLICY_MISMATCH, HALT),
    (Route.RECOVER, E.SYSTEM, True, SH, E.SYSTEM, SHELL),
    (Route.NORMAL, E.INTERNAL, True, BN, E.INTERNAL, NORMAL),
    (None, E.USAGE, True, BN, E.USAGE, NORMAL),  # broken configuration, locked
    (None, E.TPM_UNAVAILABLE, True, SH, E.TPM_UNAVAILABLE, SHELL),  # watchdog after lock
    # the lock could not be done or verified: always halt, whatever on_error says
    (Route.NORMAL, None, False, BN, E.TPM_UNAVAILABLE, HALT),
    (Route.DISABLED, None, False, BN, E.TPM_UNAVAILABLE, HALT),
    (Route.NEVER, None, False, SH, E.TPM_UNAVAILABLE, HALT),
    (Route.HOLD, None, False, SH, E.TPM_UNAVAILABLE, HALT),
    (Route.RECOVER, None, False, BN, E.TPM_UNAVAILABLE, HALT),
    (Route.RECOVER, E.POLICY_MISMATCH, False, BN, E.POLICY_MISMATCH, HALT),
    (None, E.TPM_UNAVAILABLE, False, BN, E.TPM_UNAVAILABLE, HALT),  # no TPM / watchdog
    (None, E.TPM_UNAVAILABLE, False, SH, E.TPM_UNAVAILABLE, HALT),
    (None, E.USAGE, False, BN, E.USAGE, HALT),
    (None, E.INTERNAL, False, SH, E.INTERNAL, HALT),
    (None, None, True, BN, E.INTERNAL, HALT),  # cannot happen: fail closed anyway
]


@pytest.mark.parametrize(("route", "error", "locked", "on_error", "code", "hook"), ROWS)
def test_ending(
    route: Route | None,
    error: ExitCode | None,
    locked: bool,
    on_error: OnError,
    code: ExitCode,
    hook: HookAction,
) -> None:
    end = plan.ending(Result(route, error, locked, on_error))
    assert (end.exit_code, end.hook) == (code, hook)
    assert isinstance(end, Ending) and end.reason


def test_no_path_reaches_the_normal_root_unlocked() -> None:
    """The lock rule, exhaustively over every combination."""
    for route in [None, *Route]:
        for error in [None, *ExitCode]:
            for on_error in OnError:
                end = plan.ending(Result(route, error, False, on_error))
                assert end.hook is HookAction.HALT, (route, error, on_error)


@pytest.mark.parametrize(
    ("baked", "kernel", "effective"),
    [
        (BN, None, BN),
        (BN, H, H),  # safer: allowed
        (BN, SH, BN),  # a shell only if the baked-in config allows it
        (SH, SH, SH),
        (SH, H, H),
        (SH, BN, SH),  # kernel cannot move from shell to boot-normal either
        (H, BN, H),
        (H, SH, H),
    ],
)
def test_kernel_on_error_may_only_make_the_boot_safer(
    baked: OnError, kernel: OnError | None, effective: OnError
) -> None:
    assert plan.effective_on_error(baked, kernel) is effective


@pytest.mark.parametrize(
    ("baked", "kernel", "effective"),
    [
        (300.0, None, 300.0),
        (300.0, 0.001, plan.TIMEOUT_FLOOR),
        (300.0, 600.0, 600.0),
        (300.0, 45.0, 45.0),
        (10.0, 0.001, 10.0),  # a baked-in timeout below the floor stays as configured
    ],
)
def test_kernel_timeout_has_a_floor(baked: float, kernel: float | None, effective: float) -> None:
    assert plan.effective_timeout(baked, kernel) == effective
