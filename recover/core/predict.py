"""Predict the next boot's PCR values from this boot's event log when only the
initramfs changes (``dracut -f`` after a configuration or module change, with the same
kernel and command line): the Linux EFI stub measures the initramfs it loads as one
tagged event whose digest is of the file's bytes (docs/measured-boot.md), so the next
boot's log is this one with that event's digests replaced.

Not predicted: a new kernel (PCR 4 holds the firmware's Authenticode hash of the image
it loaded; in the QEMU lab the firmware measures an image QEMU patched, so the lab could
not check a prediction) and GRUB's or systemd-stub's measurements.
"""

from __future__ import annotations

import dataclasses
import hashlib

from recover.core import eventlog as ev
from recover.errors import UsageError

PREDICT_HINT = (
    "boot the new initramfs, then re-seal: host-recover provision --force --master-from "
    "FILE --owner-auth FILE (docs/operator-guide.md, section 4)"
)


def with_new_initrd(log: ev.EventLog, initrd: bytes) -> ev.EventLog:
    """``log`` with the EFI stub's (last) initrd measurement replaced by ``initrd``'s."""
    tags = [
        i
        for i, e in enumerate(log.events)
        if ev._tag(e) == ev.LINUX_EFI_INITRD_EVENT_TAG_ID  # the stub's tagged event
    ]
    if not tags:
        raise UsageError(
            "this boot's event log has no initramfs measured by the Linux EFI stub: "
            "cannot predict the next boot",
            hint=PREDICT_HINT,
        )
    i = tags[-1]
    old = log.events[i]
    digests = []
    for bank, _ in old.digests:
        try:
            digests.append((bank, hashlib.new(bank, initrd).digest()))
        except ValueError:
            raise UsageError(
                f"cannot compute {bank} here: cannot predict the next boot", hint=PREDICT_HINT
            ) from None
    new = dataclasses.replace(old, digests=tuple(digests))
    return dataclasses.replace(log, events=(*log.events[:i], new, *log.events[i + 1 :]))


def predict_initrd(log: ev.EventLog, initrd: bytes) -> dict[str, dict[int, bytes]]:
    """The PCR values (per bank, every PCR the log extends) of a boot that is this one
    with ``initrd`` as its initramfs."""
    return ev.replay(with_new_initrd(log, initrd))
