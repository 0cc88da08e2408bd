"""Measured-boot binding, checked against this machine (docs/measured-boot.md).

Reads the TCG event log (``tpm.event_log``) as an untrusted, capped regular file,
classifies it (recover.core.eventlog) and replays it against the TPM's current PCR
values: a PCR only vouches for what the log says it measured when the replay gives the
TPM's value. ``provision`` and ``policy sign`` refuse a selection that leaves the kernel,
the initramfs or the command line unbound, or when there is no event log at all, unless
the operator says ``--allow-unbound``; ``status`` reports the same assessment.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING, Any

from recover.core import eventlog as ev
from recover.core.pcrsel import parse_selection
from recover.errors import HostRecoverError, PolicyMismatch, UsageError

if TYPE_CHECKING:
    from recover.tpm import Tpm

log = logging.getLogger(__name__)

#: An event log is a few KB (sha256 only) to a few hundred KB (many banks, many apps).
EVENT_LOG_MAX = 4 << 20
SECURITYFS = "/sys/kernel/security"

#: What a selection must bind before a secret is sealed or a policy signed to it. The
#: boot loader (PCR 4) is reported but does not refuse: without the loader bound, the
#: firmware's own measurements of it still bind what it loaded.
REQUIRED = (ev.Component.KERNEL, ev.Component.INITRD, ev.Component.CMDLINE)


@dataclasses.dataclass(frozen=True)
class Assessment:
    """The binding of this boot and what it means for one PCR selection."""

    path: str
    present: bool  # an event log was found and parsed
    binding: ev.Binding
    selection: str
    verified: frozenset[int] | None  # selected PCRs whose TPM value the replay gives
    problems: tuple[ev.Problem, ...]

    @property
    def blocking(self) -> tuple[ev.Problem, ...]:
        return tuple(p for p in self.problems if p.component in REQUIRED)

    def to_json(self) -> dict[str, Any]:
        selected = _pcrs(self.selection)
        return {
            "event_log": self.path,
            "present": self.present,
            "selection": self.selection,
            **self.binding.to_json(),
            "selected": {
                c.value: sorted(self.binding.pcrs(c) & selected) for c in ev.Component
            },  # which selected PCR measures each component (empty: none)
            "verified": None if self.verified is None else sorted(self.verified),
            "problems": [p.to_json() for p in self.problems],
            "bound": not self.blocking,
        }


def _pcrs(selection: str) -> frozenset[int]:
    return frozenset(p for _, pcrs in parse_selection(selection) for p in pcrs)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def read_log(path: str) -> bytes | None:
    """The event log's bytes, or None when there is none (no TPM log on this boot path:
    SeaBIOS, GRUB's plain ``linux`` handoff, a host test on swtpm)."""
    from recover.store.safefile import read_capped

    if not os.path.lexists(path):
        return None
    try:
        return read_capped(path, EVENT_LOG_MAX)
    except UsageError as e:
        raise UsageError(
            f"event log: {e.message}", hint="tpm.event_log names the TCG event log"
        ) from None


def load(path: str) -> tuple[bool, ev.Binding, ev.EventLog | None]:
    data = read_log(path)
    if data is None:
        unmounted = path.startswith(SECURITYFS + "/") and not _listdir(SECURITYFS)
        why = f" (securityfs is not mounted on {SECURITYFS})" if unmounted else ""
        return False, ev.Binding.not_measured(f"no event log at {path}{why}"), None
    if not data:  # the kernel got no log (e.g. GRUB's plain `linux` handoff)
        return False, ev.Binding.not_measured(f"the event log at {path} is empty"), None
    try:
        parsed = ev.parse_event_log(data)
    except ev.EventLogError as e:
        return False, ev.Binding.not_measured(f"the event log at {path} is malformed: {e}"), None
    return True, ev.classify(parsed), parsed


def assess(
    path: str,
    selection: str,
    tpm: Tpm | None = None,
    *,
    setting: str = "tpm.pcrs",
) -> Assessment:
    """Classify the log and check ``selection`` against it. With ``tpm``, a selected PCR
    only counts when the log's replay gives the TPM's current value in every selected bank
    (a log that does not replay cannot vouch for anything)."""
    present, binding, parsed = load(path)
    verified: frozenset[int] | None = None
    if parsed is not None and tpm is not None:
        current = tpm.pcr_read(selection)
        cmp = ev.compare(parsed, current)
        ok: set[int] = set()
        bad: set[int] = set()
        for bank, pcrs in parse_selection(selection):
            good = cmp.matching_pcrs(bank)
            ok |= {p for p in pcrs if p in good}
            bad |= {p for p in pcrs if p not in good}
        verified = frozenset(ok - bad)
    problems = ev.check_selection(binding, _pcrs(selection), verified=verified, setting=setting)
    if not present:
        problems = [
            dataclasses.replace(p, message=f"{binding.notes[0]}: {p.message}") for p in problems
        ]
    problems.sort(key=lambda p: _FIXABLE_FIRST.index(p.kind))  # stable: by component next
    return Assessment(path, present, binding, selection, verified, tuple(problems))


_FIXABLE_FIRST = [
    ev.ProblemKind.NOT_SELECTED,
    ev.ProblemKind.NOT_MEASURED,
    ev.ProblemKind.LOG_MISMATCH,
]


class Unbound(UsageError):
    """Sealing or signing to a selection that does not bind the boot."""


def require(a: Assessment, *, allow_unbound: bool, what: str) -> None:
    """Refuse (exit 2) unless the selection binds the kernel, initramfs and command line,
    or the operator said ``--allow-unbound``; either way each problem is logged."""
    for p in a.problems:
        if p.component not in REQUIRED or allow_unbound:
            log.warning("warning: %s", p.message)
    if not a.blocking or allow_unbound:
        if a.blocking:
            log.warning("warning: %s anyway (--allow-unbound)", what)
        return
    first = a.blocking[0]
    more = f" (and {len(a.blocking) - 1} more)" if len(a.blocking) > 1 else ""
    adds = sorted({p.add for p in a.blocking if p.add is not None})
    if not a.present:
        hint = (
            f"{a.binding.notes[0]}: nothing shows which PCR measures the boot; on a boot path "
            "without measurements (or a test TPM) add --allow-unbound"
        )
    elif adds:
        hint = f"add {', '.join(map(str, adds))} to {a.selection.split(':')[0]}"
        hint += " (docs/measured-boot.md)"
    else:
        hint = "see `host-recover status --json` (binding) and docs/measured-boot.md"
    raise Unbound(f"refusing to {what}: {first.message}{more}", hint=hint)


def check_cmdline(path: str, proc_cmdline: str) -> str | None:
    """At boot, before unseal: the command line the kernel got must be the one the log
    measured. Returns a note for the record; raises PolicyMismatch (exit 4) when not."""
    try:
        present, binding, _ = load(path)
    except HostRecoverError as e:  # an unreadable log binds nothing: the PCRs still do
        return f"event log unreadable: {e.message}"
    if not present:
        return binding.notes[0]
    match = ev.cmdline_matches(binding, proc_cmdline)
    if match is None:
        return f"no command line measured ({binding.boot_path})"
    if not match:
        where = "/".join(str(p) for p in sorted(binding.cmdline))
        raise PolicyMismatch(
            f"the kernel command line is not the one measured into PCR {where} "
            f"({binding.boot_path})",
            hint="something between the boot loader and the kernel changed it; "
            "the recovery is refused",
        )
    return f"command line matches PCR {'/'.join(map(str, sorted(binding.cmdline)))}"
