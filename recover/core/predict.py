"""Predict the next boot's PCR values from this boot's event log when the initramfs, the
kernel, or both change and everything else stays (``dracut -f``; a kernel installed over
the same boot path and command line): the next boot's log is this one with the digests
of the events that measured the old files replaced by the new files' digests.

What measures what (docs/measured-boot.md):

- Linux EFI stub: the initramfs it loads (LoadFile2) as one tagged event in PCR 9, the
  digest of its bytes. A kernel the firmware started as an EFI application is in PCR 4
  as the image's Authenticode digest (the last such event before the stub's own).
- GRUB: every file it reads in PCR 9 (an EV_IPL whose data is the path, digest of the
  file's bytes), the kernel and initrd named by its last ``linux``/``initrd`` commands;
  ``search --file`` reads the kernel too, so every event of the same path and the same
  old digest is the same file. An image GRUB (or shim for it) hands to the firmware's
  LoadImage after its ``linux`` command is in PCR 4 (Authenticode).

Not predicted (refused with a hint): a kernel inside a UKI (systemd-stub: PCR 4 and 11;
ukify and systemd-measure sign those), GRUB loading several initrd files, a path or a
command line that changes with the kernel (Debian's versioned /boot/vmlinuz-VERSION:
grub.cfg and PCR 8 change too). Under QEMU's direct kernel boot the firmware measures an
image QEMU patched (setup header), so the lab checks the kernel's Authenticode digest
against osslsigncode, not against a boot.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Sequence

from recover.core import authenticode
from recover.core import eventlog as ev
from recover.errors import UsageError

PREDICT_HINT = (
    "boot the new kernel and initramfs, then re-seal: host-recover provision --force "
    "--master-from FILE --owner-auth FILE (docs/operator-guide.md, section 4)"
)

_Digester = Callable[[str], bytes]


def _digester(compute: Callable[[str], bytes]) -> _Digester:
    """``compute`` per bank; a bank hashlib does not know is refused."""

    def of(bank: str) -> bytes:
        try:
            return compute(bank)
        except ValueError:
            raise UsageError(
                f"cannot compute {bank} here: cannot predict the next boot", hint=PREDICT_HINT
            ) from None

    return of


def _file_digest(data: bytes) -> _Digester:
    return _digester(lambda bank: hashlib.new(bank, data).digest())


def _image_digest(image: bytes) -> _Digester:
    # Not a PE image: authenticode's UsageError at the first bank (not a ValueError).
    return _digester(lambda bank: authenticode.digest(image, bank))


def _device_less(path: str) -> str:
    """A GRUB path without its device: ``(hd0,gpt2)/vmlinuz`` -> ``/vmlinuz``."""
    return re.sub(r"^\([^)]*\)", "", path)


def _same_file(log: ev.EventLog, path: str, what: str, name: str | None) -> list[int]:
    """The events that measured GRUB's ``path``: the one of that exact path (its last),
    and every other event of the same path on a device and the same digests. ``name``:
    the new file's name, which must be the old one's (a new name is a new grub.cfg)."""
    if name is not None and name != path.rsplit("/", 1)[-1]:
        raise UsageError(
            f"GRUB loaded the {what} as {path}, the new one is named {name}: a new name "
            "changes grub.cfg and GRUB's commands (PCR 8, 9), which cannot be predicted",
            hint=PREDICT_HINT,
        )
    files = ev.grub_events(log.events).files
    exact = [i for i, t in files if t == path]
    if not exact:
        raise UsageError(
            f"GRUB loaded the {what} {path} but did not measure it: cannot predict the next boot",
            hint=PREDICT_HINT,
        )
    old = log.events[exact[-1]].digests
    return [
        i
        for i, t in files
        if _device_less(t) == _device_less(path) and log.events[i].digests == old
    ]


def _targets_initrd(log: ev.EventLog, name: str | None) -> list[int]:
    out = []
    tags = [i for i, e in enumerate(log.events) if ev._tag(e) == ev.LINUX_EFI_INITRD_EVENT_TAG_ID]
    if tags:
        out.append(tags[-1])
    initrds = [
        w[1:]
        for _, w in ev.grub_events(log.events).commands
        if w and w[0] in ("initrd", "initrdefi")
    ]
    if initrds:
        if len(initrds[-1]) != 1:
            raise UsageError(
                f"GRUB loads {len(initrds[-1])} initrd files: cannot tell which one the "
                "rebuilt initramfs replaces",
                hint=PREDICT_HINT,
            )
        out.extend(_same_file(log, initrds[-1][0], "initramfs", name))
    if not out:
        raise UsageError(
            "this boot's event log has no initramfs measured by the Linux EFI stub or "
            "GRUB: cannot predict the next boot",
            hint=PREDICT_HINT,
        )
    return out


def _apps(log: ev.EventLog, start: int, end: int) -> list[int]:
    return [
        i
        for i in range(start, end)
        if log.events[i].type == ev.EventType.EV_EFI_BOOT_SERVICES_APPLICATION
    ]


def _targets_kernel(log: ev.EventLog, name: str | None) -> tuple[list[int], list[int]]:
    """(file events, image events) of the kernel this boot started."""
    binding = ev.classify(log)
    if ev.BootPath.SYSTEMD_STUB.value in binding.boot_path.split("+"):
        raise UsageError(
            "this boot's kernel is inside a UKI (systemd-stub): its PCR 4 and 11 values "
            "come with the UKI (ukify, systemd-measure), not from a kernel file",
            hint=PREDICT_HINT,
        )
    files: list[int] = []
    images: list[int] = []
    commands = ev.grub_events(log.events).commands
    linux = [(i, w) for i, w in commands if len(w) > 1 and w[0] in ("linux", "linuxefi")]
    if linux:
        i, words = linux[-1]
        files = _same_file(log, words[1], "kernel", name)
        images = _apps(log, i, len(log.events))  # LoadImage of the kernel, after the command
    else:
        options = [
            i
            for i, e in enumerate(log.events)
            if ev._tag(e) == ev.LINUX_EFI_LOAD_OPTIONS_EVENT_TAG_ID
        ]
        if options:  # the stub was entered as an EFI application: the firmware measured it
            images = _apps(log, 0, options[-1])[-1:]
    if len(images) > 1:
        raise UsageError(
            f"{len(images)} EFI images were loaded after GRUB's linux command: cannot "
            "tell which one is the kernel",
            hint=PREDICT_HINT,
        )
    if not files and not images:
        raise UsageError(
            "this boot's event log does not say which measurement is the kernel "
            f"({binding.boot_path}): cannot predict the next boot",
            hint=PREDICT_HINT,
        )
    return files, images


def _replace(log: ev.EventLog, targets: Sequence[int], of: _Digester) -> ev.EventLog:
    events = list(log.events)
    for i in targets:
        old = events[i]
        events[i] = dataclasses.replace(
            old, digests=tuple((bank, of(bank)) for bank, _ in old.digests)
        )
    return dataclasses.replace(log, events=tuple(events))


@dataclasses.dataclass(frozen=True)
class NewFile:
    """A file of the next boot: its bytes and, when known, its name (GRUB: the same)."""

    data: bytes
    name: str | None = None


def with_new_files(
    log: ev.EventLog, *, initrd: NewFile | None = None, kernel: NewFile | None = None
) -> ev.EventLog:
    """``log`` as the next boot would write it with ``initrd`` and/or ``kernel``."""
    if kernel is not None:
        files, images = _targets_kernel(log, kernel.name)
        log = _replace(log, files, _file_digest(kernel.data))
        if images:
            log = _replace(log, images, _image_digest(kernel.data))
    if initrd is not None:
        log = _replace(log, _targets_initrd(log, initrd.name), _file_digest(initrd.data))
    return log


def predict(
    log: ev.EventLog, *, initrd: NewFile | None = None, kernel: NewFile | None = None
) -> dict[str, dict[int, bytes]]:
    """The PCR values (per bank, every PCR the log extends) of a boot that is this one
    with ``initrd`` as its initramfs and ``kernel`` as its kernel (None: unchanged)."""
    return ev.replay(with_new_files(log, initrd=initrd, kernel=kernel))
