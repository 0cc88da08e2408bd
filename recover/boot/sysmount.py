"""Mounts and loop devices by system call: mount(2), umount2(2) and the loop driver's
ioctls, without starting mount(8), umount(8), losetup(8) or blkid(8).

Under TCG a process start costs 50-100 ms (fork of the payload, exec, the dynamic linker
loading libmount and libblkid), and a recovery needs about eight of them between its
unseal and its pivot. mount(8) does three things the payload must then do itself:

- the options: ``ro``, ``nodev``, ``nosuid``, ``noexec``, ``noatime`` become mount flags
  (``split_options``), the rest is the file system's own data string (``noload``,
  ``lowerdir=…``, ``mode=…``). ``loop`` is mount(8)'s own: here the caller attaches the
  loop device (``attach_loop``) and mounts it.
- the file system type: read from the superblock's magic (``probe_fstype``) for the
  types the store and the image use; for any other the caller goes on with blkid and
  mount(8) as before.
- the loop device: ``LOOP_CTL_GET_FREE`` on /dev/loop-control, then ``LOOP_CONFIGURE``
  (Linux 5.8+; else ``LOOP_SET_FD`` and ``LOOP_SET_STATUS64``), retried a bounded number
  of times when another process takes the same free device first.

Every failure is an OSError with the kernel's errno; the callers turn it into a
SystemFault (fail closed: nothing is mounted, no loop device stays attached).
"""

from __future__ import annotations

import errno
import functools
import os
import stat
import struct
import time
from typing import Any

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_NOATIME = 1 << 10
MS_NODIRATIME = 1 << 11
MNT_DETACH = 2

#: mount(8) options that are mount flags (the rest goes to the file system as data).
_FLAGS = {
    "ro": MS_RDONLY,
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
}
#: Options only mount(8) understands: refused here rather than passed to the kernel.
_USERSPACE_ONLY = frozenset({"loop", "defaults", "auto", "noauto", "user", "nouser", "nofail"})

# <linux/loop.h>
LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_READ_ONLY = 1
#: struct loop_info64: device, inode, rdevice, offset, sizelimit (u64); number,
#: encrypt_type, encrypt_key_size, flags (u32); file_name, crypt_name (64 bytes),
#: encrypt_key (32 bytes); init (2 x u64).
_LOOP_INFO64 = struct.Struct("=5Q4I64s64s32s2Q")
#: struct loop_config: fd, block_size (u32), loop_info64, 8 reserved u64.
_LOOP_CONFIG = struct.Struct("=2I" + _LOOP_INFO64.format[1:] + "8Q")
LOOP_CONTROL = "/dev/loop-control"
#: How often a free loop device taken by someone else first is tried again.
LOOP_ATTEMPTS = 16


def split_options(options: str) -> tuple[int, str]:
    """mount(8)'s comma-separated options as (flags, data): a known flag is set, later
    ``rw`` clears ``ro``, everything else stays in order in the data string."""
    flags, data = 0, []
    for opt in filter(None, options.split(",")):
        if opt in _USERSPACE_ONLY:
            raise ValueError(f"mount option {opt!r} is mount(8)'s own, not the kernel's")
        if opt == "rw":
            flags &= ~MS_RDONLY
        elif opt in _FLAGS:
            flags |= _FLAGS[opt]
        else:
            data.append(opt)
    return flags, ",".join(data)


#: (offset, magic, type): what the first 68 KiB of a device says it holds.
_MAGICS: tuple[tuple[int, bytes, str], ...] = (
    (0, b"hsqs", "squashfs"),
    (1024, b"\xe2\xe1\xf5\xe0", "erofs"),
    (1080, b"\x53\xef", "ext4"),  # ext2/3/4: the ext4 driver mounts all three
    (0, b"XFSB", "xfs"),
    (0x10040, b"_BHRfS_M", "btrfs"),
)
PROBE_BYTES = 0x10048


def probe_fstype(head: bytes) -> str:
    """The file system type of a device whose first ``PROBE_BYTES`` are ``head``, for the
    types named in ``_MAGICS``; '' for any other (the caller asks blkid)."""
    for offset, magic, fstype in _MAGICS:
        if head[offset : offset + len(magic)] == magic:
            return fstype
    return ""


def read_fstype(device: str) -> str:
    """``probe_fstype`` of ``device``'s first bytes ('' when unreadable or unknown). A
    symbolic link is followed, as blkid and the kernel's mount do (``store.device`` may
    name /dev/disk/by-partlabel/…)."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        return probe_fstype(os.pread(fd, PROBE_BYTES, 0))
    except OSError:
        return ""
    finally:
        os.close(fd)


@functools.cache
def libc() -> Any:
    import ctypes

    lib = ctypes.CDLL(None, use_errno=True)
    lib.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return lib


def _raise(what: str) -> None:
    import ctypes

    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str, options: str = "") -> None:
    """mount(2) with mount(8)'s option syntax (``split_options``)."""
    flags, data = split_options(options)
    if libc().mount(os.fsencode(source), os.fsencode(target), fstype.encode(), flags,
                    data.encode() if data else None) != 0:  # fmt: skip
        _raise(f"mount {fstype} {source} on {target}")


def umount(target: str, *, lazy: bool = False) -> None:
    """umount2(2); ``lazy``: detached from the tree now, gone once no longer in use."""
    if libc().umount2(os.fsencode(target), MNT_DETACH if lazy else 0) != 0:
        _raise(f"umount {target}")


def attach_loop(path: str, *, offset: int = 0, sizelimit: int = 0) -> str:
    """Attach ``path`` read-only to a free loop device (from ``offset``, at most
    ``sizelimit`` bytes, 0: to the end); its /dev path. It stays attached until
    ``detach_loop`` (no autoclear: the device-mapper target above it opens it later)."""
    import fcntl

    name = os.fsencode(path)[-63:]
    info = _LOOP_INFO64.pack(
        0, 0, 0, offset, sizelimit, 0, 0, 0, LO_FLAGS_READ_ONLY, name, b"", b"", 0, 0
    )
    backing = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        ctl = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(LOOP_ATTEMPTS):
                dev = f"/dev/loop{fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)}"
                if _configure(dev, backing, info):
                    return dev
        finally:
            os.close(ctl)
    finally:
        os.close(backing)
    raise OSError(errno.EBUSY, f"no free loop device for {path} after {LOOP_ATTEMPTS} tries")


def _configure(dev: str, backing: int, info: bytes) -> bool:
    """Bind ``backing`` to ``dev``; False when another process bound it first."""
    import fcntl

    fd = _open_node(dev)
    try:
        config = bytearray(_LOOP_CONFIG.size)
        struct.pack_into("=2I", config, 0, backing, 0)
        config[8 : 8 + len(info)] = info
        try:
            fcntl.ioctl(fd, LOOP_CONFIGURE, bytes(config))
            return True
        except OSError as e:
            if e.errno == errno.EBUSY:
                return False
            if e.errno not in (errno.EINVAL, errno.ENOTTY):  # ENOTTY/EINVAL: before 5.8
                raise
        try:
            fcntl.ioctl(fd, LOOP_SET_FD, backing)
        except OSError as e:
            if e.errno == errno.EBUSY:
                return False
            raise
        try:
            fcntl.ioctl(fd, LOOP_SET_STATUS64, info)
        except BaseException:
            fcntl.ioctl(fd, LOOP_CLR_FD, 0)
            raise
        return True
    finally:
        os.close(fd)


def _open_node(dev: str, timeout: float = 5) -> int:
    """Open the loop device's node; devtmpfs makes it when the device is added, a
    udev rule may still be re-making it: wait for it, bounded."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
            continue
        if not stat.S_ISBLK(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.ENOTBLK, f"{dev} is not a block device")
        return fd


def detach_loop(dev: str) -> None:
    """Detach the loop device ``dev`` (the kernel does it once its users let go)."""
    import fcntl

    fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, LOOP_CLR_FD, 0)
    finally:
        os.close(fd)
