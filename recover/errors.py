"""Typed errors and the exit-code contract with the dracut hooks and operators.

Every failure the program expects ends as one of these, caught once in ``cli.main``,
printed as one line (plus a hint), and mapped to a fixed exit code (docs/cli.md).
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    INTERNAL = 1  # a bug: a traceback is printed with --debug
    USAGE = 2  # bad arguments, bad or missing configuration
    TPM_UNAVAILABLE = 3  # no TPM, TCTI cannot connect, TPM in lockout, object missing
    POLICY_MISMATCH = 4  # PCRs do not satisfy the sealed (or signed) policy
    INTEGRITY = 5  # tampered data, wrong key, rollback
    PEERS_UNAVAILABLE = 6  # not enough peers answered (verbs that use peers)


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
    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """Invalid or missing configuration."""


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
    exit_code = ExitCode.PEERS_UNAVAILABLE
