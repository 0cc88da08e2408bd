"""device-mapper by ioctl on /dev/mapper/control (<linux/dm-ioctl.h>): what ``dmsetup
create NAME --readonly --noudevsync`` does with a one-target table, without the process.

    DM_DEV_CREATE (the name) → DM_TABLE_LOAD (read-only, the table) → DM_DEV_SUSPEND
    without the suspend flag (the loaded table goes live) → /dev/mapper/NAME made here

Under TCG a dmsetup start costs 50-100 ms (fork, exec, libdevmapper), twice per v2
recovery. Removal and status stay with dmsetup (recover.boot.dmimage): they run on
failure paths only.

A table that holds key material is loaded with ``DM_SECURE_DATA_FLAG`` (the kernel wipes
its copy of the buffer) from a buffer larger than fcntl's 1024-byte stack copy, so the
ioctl reads the caller's own buffer, which is wiped before this returns.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct

CONTROL = "/dev/mapper/control"
#: struct dm_ioctl: version[3], data_size, data_start, target_count, open_count, flags,
#: event_nr, padding (u32/s32), dev (u64), name[128], uuid[129], data[7]: 312 bytes.
_DM_IOCTL = struct.Struct("=3IIIIiIIIQ128s129s7s")
#: struct dm_target_spec: sector_start, length (u64), status (s32), next (u32),
#: target_type[16]: 40 bytes, then the parameters, NUL-terminated.
_TARGET_SPEC = struct.Struct("=QQiI16s")
VERSION = (4, 0, 0)  # the interface's major version; the kernel accepts any minor ≥ 0
DM_READONLY_FLAG = 1 << 0
DM_SUSPEND_FLAG = 1 << 1
DM_SECURE_DATA_FLAG = 1 << 15
DM_DEV_CREATE = 3
DM_DEV_REMOVE = 4
DM_DEV_SUSPEND = 6
DM_TABLE_LOAD = 9
#: Bigger than fcntl.ioctl's 1024-byte internal copy: the kernel reads this buffer itself.
BUFFER = 4096


def _request(nr: int) -> int:
    """_IOWR(0xfd, nr, struct dm_ioctl)."""
    return (3 << 30) | (_DM_IOCTL.size << 16) | (0xFD << 8) | nr


def pack(
    name: str, flags: int = 0, target: tuple[int, str, bytes | bytearray] | None = None
) -> bytearray:
    """An ioctl buffer for device ``name``; ``target``: (sectors, type, parameters) of a
    one-target table from sector 0."""
    encoded = name.encode()
    if not encoded or len(encoded) >= 128 or "/" in name:
        raise ValueError(f"bad device-mapper name {name!r}")
    buf = bytearray(BUFFER)
    count = 0
    if target is not None:
        sectors, kind, params = target
        end = _DM_IOCTL.size + _TARGET_SPEC.size + len(params) + 1
        if end > BUFFER or b"\0" in params or len(kind) >= 16:
            raise ValueError("device-mapper table too long or malformed")
        spec_next = (_TARGET_SPEC.size + len(params) + 1 + 7) & ~7
        _TARGET_SPEC.pack_into(buf, _DM_IOCTL.size, 0, sectors, 0, spec_next, kind.encode())
        buf[_DM_IOCTL.size + _TARGET_SPEC.size : end - 1] = params
        count = 1
    _DM_IOCTL.pack_into(
        buf, 0, *VERSION, BUFFER, _DM_IOCTL.size, count, 0, flags, 0, 0, 0, encoded, b"", b""
    )
    return buf


def _ioctl(ctl: int, nr: int, buf: bytearray) -> None:
    import fcntl

    fcntl.ioctl(ctl, _request(nr), buf, True)


def create(name: str, sectors: int, kind: str, params: bytearray, *, secure: bool) -> str:
    """A live read-only mapping ``name`` of one ``kind`` target over ``sectors`` 512-byte
    sectors; its /dev/mapper path. ``secure``: ``params`` hold key material (wiped here,
    with every buffer that held them). On failure nothing named ``name`` is left."""
    ctl = -1
    table = bytearray()
    try:
        ctl = os.open(CONTROL, os.O_RDWR | os.O_CLOEXEC)
        buf = pack(name)
        _ioctl(ctl, DM_DEV_CREATE, buf)
        dev = _DM_IOCTL.unpack_from(buf)[10]
        try:
            flags = DM_READONLY_FLAG | (DM_SECURE_DATA_FLAG if secure else 0)
            table = pack(name, flags, (sectors, kind, params))
            _ioctl(ctl, DM_TABLE_LOAD, table)
            _ioctl(ctl, DM_DEV_SUSPEND, pack(name))  # no suspend flag: resume, table live
            return _node(name, dev)
        except BaseException:
            with contextlib.suppress(OSError):
                _ioctl(ctl, DM_DEV_REMOVE, pack(name))
            raise
    finally:
        table[:] = bytes(len(table))
        if secure:
            params[:] = bytes(len(params))
        if ctl >= 0:
            os.close(ctl)


def _node(name: str, dev: int) -> str:
    """/dev/mapper/NAME for ``dev`` (libdevmapper makes it when udev does not): an
    existing node that is not this block device is replaced."""
    path = f"/dev/mapper/{name}"
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if stat.S_ISBLK(st.st_mode) and st.st_rdev == dev:
            return path
        os.unlink(path)
    try:
        os.mknod(path, stat.S_IFBLK | 0o600, dev)
    except FileExistsError:  # udev made it meanwhile
        st = os.lstat(path)
        if not (stat.S_ISBLK(st.st_mode) and st.st_rdev == dev):
            raise OSError(errno.EEXIST, f"{path} is not the mapping's device") from None
    return path
