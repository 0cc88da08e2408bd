"""Opening files an attacker may have placed: on the store partition (anyone with the
disks can write it) or named by configuration.

``O_NONBLOCK`` so that a FIFO cannot block the boot until the watchdog fires; the last
component is not followed when ``follow=False`` (a symbolic link on the store could point
anywhere, /dev included); only a regular file (or, where allowed, a block device) is
accepted; reads are capped. Every refusal is one clear line.
"""

from __future__ import annotations

import os
import stat

from recover.errors import SystemFault, UsageError

#: The signed policy file: a few KB of JSON.
POLICY_MAX = 64 << 10


def open_read(path: str | os.PathLike[str], *, follow: bool = True, block: bool = False) -> int:
    """A read-only descriptor of a regular file (or block device when ``block``)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    name = os.fspath(path)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if not follow and e.errno == getattr(os, "ELOOP", 40):
            raise UsageError(f"{name} is a symbolic link, which is not accepted here") from None
        raise UsageError(f"cannot open {name}: {e.strerror}") from None
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode):
        os.close(fd)
        raise UsageError(f"cannot open {name}: Is a directory, not a regular file")
    if not (stat.S_ISREG(mode) or (block and stat.S_ISBLK(mode))):
        os.close(fd)
        what = "a regular file or block device" if block else "a regular file"
        raise UsageError(f"{name} is not {what}")
    os.set_blocking(fd, True)
    return fd


def read_capped(path: str | os.PathLike[str], cap: int, *, follow: bool = True) -> bytes:
    """The whole file, refusing one larger than ``cap`` bytes."""
    fd = open_read(path, follow=follow)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(cap + 1)
    except OSError as e:
        raise SystemFault(f"read error in {os.fspath(path)}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > cap:
        raise UsageError(f"{os.fspath(path)} is larger than {cap} bytes")
    return data
