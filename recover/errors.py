"""The exit-code contract and the typed errors behind it.

Every exit code is declared here once, with its one-line meaning: the CLI epilog,
docs/cli.md, the operator guide's table and the dracut hooks are generated from or
tested against :data:`EXIT_CODES` (tests/unit/test_contracts.py). Every failure the
program expects is one of the error classes below, caught once in ``recover.cli.run``
and printed by :func:`report` as one line plus a hint.
"""

from __future__ import annotations

import enum
import logging


class ExitCode(enum.IntEnum):
    OK = 0
    INTERNAL = 1
    USAGE = 2
    TPM_UNAVAILABLE = 3
    POLICY_MISMATCH = 4
    INTEGRITY = 5
    PEERS_UNAVAILABLE = 6
    SYSTEM = 7
    RECOVERED = 10
    HOLD = 11


#: The one-line meaning of every exit code (the contract with hooks and operators).
EXIT_CODES: dict[ExitCode, str] = {
    ExitCode.OK: "ok (`boot`: the normal boot continues untouched)",
    ExitCode.INTERNAL: "internal error (a bug; `--debug` prints the traceback)",
    ExitCode.USAGE: "usage or configuration error",
    ExitCode.TPM_UNAVAILABLE: "TPM unavailable (no device, TCTI cannot connect, object "
    "missing, lockout; `boot`: also the payload watchdog)",
    ExitCode.POLICY_MISMATCH: "policy mismatch: the PCRs do not satisfy the sealed or signed policy",
    ExitCode.INTEGRITY: "integrity failure: tampered or truncated data, wrong key, rollback",
    ExitCode.PEERS_UNAVAILABLE: "peers unavailable (verbs that use peers)",
    ExitCode.SYSTEM: "system fault: an I/O error, a failed mount, a full disk",
    ExitCode.RECOVERED: "`boot` only: the recovery root is mounted on $NEWROOT, switch root into it",
    ExitCode.HOLD: "`boot` only: hold, the policy says stop for an operator",
}


def epilog() -> str:
    """The exit codes in one line (the CLI's --help epilog)."""
    short = {code: meaning.split(":")[0].split(" (")[0] for code, meaning in EXIT_CODES.items()}
    return "Exit codes: " + ", ".join(f"{int(c)} {m}" for c, m in short.items()) + "."


class HostRecoverError(Exception):
    """Base class: an expected failure with a one-line message and a hint."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(HostRecoverError):
    """Bad arguments or input given by the operator."""

    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """Invalid or missing configuration."""


class SystemFault(HostRecoverError):
    """The system failed under a correct request: I/O error, mount failure, full disk."""

    exit_code = ExitCode.SYSTEM


class TpmUnavailable(HostRecoverError):
    exit_code = ExitCode.TPM_UNAVAILABLE


class TpmError(TpmUnavailable):
    """A TPM command failed for a reason other than a policy mismatch."""

    def __init__(self, message: str, rc: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.rc = rc


class PolicyMismatch(HostRecoverError):
    """The current PCR values do not satisfy the sealed or signed policy."""

    exit_code = ExitCode.POLICY_MISMATCH


class IntegrityError(HostRecoverError):
    """Data failed authentication: tampered, truncated, wrong key or rolled back."""

    exit_code = ExitCode.INTEGRITY


class RollbackError(IntegrityError):
    """An image or policy older than the TPM's anti-rollback counter."""


class PeersUnavailable(HostRecoverError):
    """Peers are configured, none could be verified, and the verdict is undetermined."""

    exit_code = ExitCode.PEERS_UNAVAILABLE


def report(error: HostRecoverError, log: logging.Logger, prefix: str = "") -> None:
    """The one way an expected failure is shown: ``error: …`` and ``hint: …``."""
    log.error("error: %s%s", prefix, error.message)
    if error.hint:
        log.error("hint: %s", error.hint)
