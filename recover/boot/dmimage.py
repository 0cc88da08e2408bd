"""Map a v2 recovery image for the kernel to decrypt on demand (docs/image-format.md).

    container file ─ loop (read-only, from the data offset) ─ dm-verity ─ dm-crypt ─ mount

The header was authenticated in Python (key id, MAC, anti-rollback, size); the tables
are built from its fields only. The AES-XTS key goes to dm-crypt through the kernel
keyring as a ``logon`` key (the kernel reads it, user space cannot) in a session keyring
of this process's own, and is invalidated as soon as the table is loaded: the table then
names the key (``:64:logon:host-recover:…``) instead of holding it, so ``dmsetup table
--showkeys`` shows no key. Without a usable keyring (unknown architecture, no
CONFIG_KEYS) the key is put into the table, loaded with the secure-data flag from a
buffer wiped afterwards (never argv, never a file), and root can read it back with
``--showkeys`` while the mapping exists.

No plaintext copy: RAM and time do not depend on the image size. A block whose hash does
not match is an I/O error at read time (no corruption-mode argument: EIO).

The kernel modules are loaded ahead, in the background (recover.boot.preload); the
mapping waits for them, bounded. The loop device and the two targets are set up by ioctl
(recover.boot.sysmount, recover.boot.devmapper), which also make /dev/mapper/NAME: the
initramfs may run no udev rules for device-mapper. losetup and dmsetup remain for a
missing control node, for removal and for status (failure and cleanup paths), with
``DM_DISABLE_UDEV``: dmsetup then manages its nodes itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from typing import TYPE_CHECKING

from recover.errors import SystemFault

if TYPE_CHECKING:  # the tables are built on a recovery only; unmap serves every boot
    from recover.core.imageformat import HeaderV2

log = logging.getLogger(__name__)

VERITY_NAME = "host-recover-verity"
CRYPT_NAME = "host-recover-root"
KEY_DESCRIPTION = "host-recover:image-xts"
#: Where the kernel lists block devices (dm-N/dm/name, dm-N/slaves/).
SYS_BLOCK = "/sys/block"

#: (add_key, keyctl) system call numbers.
_SYSCALLS = {"x86_64": (248, 250), "aarch64": (217, 219)}
_KEYCTL_JOIN_SESSION_KEYRING = 1
_KEYCTL_INVALIDATE = 21
_KEY_SPEC_SESSION_KEYRING = -3


@dataclasses.dataclass
class Mapping:
    """What setting up the v2 image's device-mapper targets made: the loop device, the
    crypt device, how the key reached the kernel, the ciphers built ahead, step times."""

    loop: str = ""
    device: str = ""  # /dev/mapper/host-recover-root once mapped
    key_passing: str = ""  # "keyring" | "table"
    warmed: list[str] = dataclasses.field(default_factory=list)  # ciphers built ahead
    #: processes started for the mapping: none when the ioctls could be used
    tools: list[str] = dataclasses.field(default_factory=list)
    steps_ms: dict[str, float] = dataclasses.field(default_factory=dict)


def _env(argv: list[str]) -> dict[str, str] | None:
    """dmsetup creates and removes its nodes itself (no udev rules for it at boot)."""
    return dict(os.environ, DM_DISABLE_UDEV="1") if argv[0] == "dmsetup" else None


def _run(argv: list[str], stdin: bytes | None = None, timeout: float = 60) -> str:
    import subprocess

    log.debug("+ %s", " ".join(argv))
    try:
        proc = subprocess.run(
            argv, input=stdin, capture_output=True, timeout=timeout, check=False, env=_env(argv)
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise SystemFault(
            f"{argv[0]} could not run: {e}",
            hint="the initramfs needs dmsetup, losetup and the dm_verity/dm_crypt modules",
        ) from None
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise SystemFault(
            f"{' '.join(argv[:2])} failed ({proc.returncode}): {msg[-1] if msg else 'no output'}",
            hint="the initramfs needs the dm_verity, dm_crypt, xts and loop modules",
        )
    return proc.stdout.decode(errors="replace").strip()


class _Keyring:
    """add_key/keyctl through libc's syscall(2) (no keyutils needed)."""

    def __init__(self) -> None:
        import ctypes

        from recover.boot import sysmount

        machine = os.uname().machine
        nrs = _SYSCALLS.get(machine)
        if nrs is None:
            raise OSError(f"no keyring system call numbers for {machine}")
        self._ctypes = ctypes
        self._libc = sysmount.libc()
        self._libc.syscall.restype = ctypes.c_long
        self._add, self._keyctl = nrs

    def _check(self, r: int, what: str) -> int:
        if r < 0:
            err = self._ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")
        return r

    def join_session(self) -> None:
        """A new anonymous session keyring for this process (its children inherit it):
        dm-crypt finds the key there when this process (or dmsetup) loads the table,
        and nothing started before does."""
        c = self._ctypes
        self._check(
            self._libc.syscall(c.c_long(self._keyctl), c.c_long(_KEYCTL_JOIN_SESSION_KEYRING),
                               c.c_void_p(None)), "join session keyring")  # fmt: skip

    def add_logon(self, description: str, payload: bytearray) -> int:
        c = self._ctypes
        buf = (c.c_char * len(payload)).from_buffer(payload)
        return self._check(
            self._libc.syscall(c.c_long(self._add), c.c_char_p(b"logon"),
                               c.c_char_p(description.encode()), buf, c.c_size_t(len(payload)),
                               c.c_long(_KEY_SPEC_SESSION_KEYRING)), "add_key")  # fmt: skip

    def invalidate(self, serial: int) -> None:
        c = self._ctypes
        self._check(
            self._libc.syscall(c.c_long(self._keyctl), c.c_long(_KEYCTL_INVALIDATE),
                               c.c_long(serial)), "invalidate key")  # fmt: skip


def _dm_create(name: str, table: bytes, *, secure: bool = False) -> list[str]:
    """A read-only mapping of the one-target ``table`` (``0 SECTORS TYPE PARAMS``) and its
    node (the initramfs may run no udev rules for device-mapper): by ioctl
    (recover.boot.devmapper), or by dmsetup, its table on stdin, where the control node
    is missing. ``secure``: the table holds the key (the kernel wipes its copy)."""
    from recover.boot import devmapper

    if not os.path.exists(devmapper.CONTROL):
        _run(["dmsetup", "create", name, "--readonly", "--noudevsync"], stdin=table)
        if not os.path.exists(f"/dev/mapper/{name}"):
            _run(["dmsetup", "mknodes", name])
        _wait_node(f"/dev/mapper/{name}")
        return ["dmsetup"]
    start, sectors, kind, params = table.split(b" ", 3)
    if start != b"0" or not sectors.isdigit():
        raise SystemFault(f"malformed table for {name}")
    log.debug("+ device-mapper ioctl: create %s %s %s", name, sectors.decode(), kind.decode())
    buf = bytearray(params)
    try:
        devmapper.create(name, int(sectors), kind.decode(), buf, secure=secure)
    except (OSError, ValueError) as e:
        raise SystemFault(
            f"device-mapper {kind.decode()} target {name}: {e}",
            hint="the initramfs needs the dm_verity, dm_crypt, xts and loop modules",
        ) from None
    finally:
        buf[:] = bytes(len(buf))
    return []


def _wait_node(path: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):  # bounded: dmsetup made it, udev may re-make it
        if time.monotonic() > deadline:
            raise SystemFault(f"{path} did not appear", hint="dmsetup mknodes failed?")
        time.sleep(0.05)


def map_image(path: str, header: HeaderV2, xts_key: bytearray) -> Mapping:
    """Set up loop → verity → crypt for the authenticated ``header`` of ``path``; the
    key bytes are wiped before this returns. On failure nothing is left mapped."""
    from recover.core.imageformat import verity_table

    m = Mapping()
    try:
        from recover.boot import preload

        waited = preload.wait()
        if waited is not None:
            m.steps_ms["modules"] = waited
            m.warmed = preload.warmed()
        t = time.monotonic()
        m.loop = _attach_loop(path, header, m.tools)
        m.steps_ms["loop"] = _ms(t)
        t = time.monotonic()
        m.tools += _dm_create(VERITY_NAME, verity_table(header, m.loop).encode())
        m.steps_ms["verity"] = _ms(t)
        t = time.monotonic()
        _map_crypt(header, xts_key, m)
        m.steps_ms["crypt"] = _ms(t)
        m.device = f"/dev/mapper/{CRYPT_NAME}"
    except BaseException:
        unmap(m.loop)
        raise
    finally:
        for i in range(len(xts_key)):
            xts_key[i] = 0
    return m


def _attach_loop(path: str, header: HeaderV2, tools: list[str]) -> str:
    """The container's data area (hash tree and ciphertext) on a read-only loop device,
    by ioctl (recover.boot.sysmount): no losetup process unless /dev/loop-control is
    missing."""
    from recover.boot import sysmount

    size = header.container_length - header.data_offset
    if not os.path.exists(sysmount.LOOP_CONTROL):
        # no loop driver yet (its preload failed) and no static node: losetup finds or
        # loads one the ways it knows
        tools.append("losetup")
        return _run(["losetup", "--find", "--show", "--read-only", "--offset",
                     str(header.data_offset), "--sizelimit", str(size), path])  # fmt: skip
    try:
        return sysmount.attach_loop(path, offset=header.data_offset, sizelimit=size)
    except OSError as e:
        raise SystemFault(
            f"loop device for {path}: {e.strerror}",
            hint="the initramfs needs the loop module and /dev/loop-control",
        ) from None


def _map_crypt(header: HeaderV2, xts_key: bytearray, m: Mapping) -> None:
    from recover.core.imageformat import crypt_table

    verity_dev = f"/dev/mapper/{VERITY_NAME}"
    try:
        ring = _Keyring()
        ring.join_session()
        serial = ring.add_logon(KEY_DESCRIPTION, xts_key)
    except OSError as e:
        log.warning(
            "kernel keyring unusable (%s): the image key goes into the dm-crypt table "
            "(root can read it with dmsetup table --showkeys)",
            e,
        )
        table = bytearray(crypt_table(header, verity_dev, xts_key.hex()).encode())
        try:
            m.tools += _dm_create(CRYPT_NAME, bytes(table), secure=True)
        finally:
            table[:] = bytes(len(table))
        m.key_passing = "table"
        return
    try:
        key_ref = f":{len(xts_key)}:logon:{KEY_DESCRIPTION}"
        m.tools += _dm_create(CRYPT_NAME, crypt_table(header, verity_dev, key_ref).encode())
    finally:
        with contextlib.suppress(OSError):
            ring.invalidate(serial)  # dm-crypt holds its own copy once the table is loaded
    m.key_passing = "keyring"


def _ms(t: float) -> float:
    return round((time.monotonic() - t) * 1000, 1)


def corrupted() -> bool:
    """dm-verity has seen a block that does not match the tree (status ``C``)."""
    status = _quiet(["dmsetup", "status", VERITY_NAME]) or ""
    return status.split()[-1:] == ["C"]


def _quiet(argv: list[str]) -> str | None:
    """Run a cleanup command: its stdout, or None on failure (logged under debug)."""
    import subprocess

    try:
        proc = subprocess.run(argv, capture_output=True, timeout=30, check=False, env=_env(argv))
    except (OSError, subprocess.SubprocessError) as e:
        log.debug("%s: %s", argv[0], e)
        return None
    if proc.returncode != 0:
        log.debug("%s: %s", " ".join(argv), proc.stderr.decode(errors="replace").strip())
        return None
    return proc.stdout.decode(errors="replace")


def mapped() -> dict[str, list[str]] | None:
    """Our mappings that exist, each with the devices below it (``loop3``), read from
    sysfs: no process. None when sysfs cannot tell (not mounted): then ask dmsetup."""
    try:
        entries = os.listdir(SYS_BLOCK)
    except OSError:
        return None
    found: dict[str, list[str]] = {}
    for entry in entries:
        if not entry.startswith("dm-"):
            continue
        try:
            with open(os.path.join(SYS_BLOCK, entry, "dm", "name")) as f:
                name = f.read().strip()
            if name in (VERITY_NAME, CRYPT_NAME):
                found[name] = sorted(os.listdir(os.path.join(SYS_BLOCK, entry, "slaves")))
        except OSError:
            return None  # a device going away under us, or an odd sysfs: ask dmsetup
    return found


def unmap(loop: str = "") -> None:
    """Remove the crypt and verity mappings (the key leaves the kernel with the crypt
    target) and detach their loop device (``loop``, else the verity target's backing
    device); nothing raises (a cleanup path). Every failed or clean boot passes here:
    when sysfs shows none of ours and no ``loop`` is given, no process is started."""
    found = mapped()
    if found is not None and not found and not loop:
        return
    if not loop:
        below = (found or {}).get(VERITY_NAME, [])
        if found is None or (VERITY_NAME in found and not below):  # sysfs did not say
            import re

            deps = _quiet(["dmsetup", "deps", "-o", "devname", VERITY_NAME]) or ""
            below = re.findall(r"\((loop\d+)\)", deps)
        loop = next((f"/dev/{d}" for d in below if d.startswith("loop")), "")
    for name in (CRYPT_NAME, VERITY_NAME):
        if found is None or name in found:
            _quiet(["dmsetup", "remove", "--retry", "--noudevsync", name])
    if loop.startswith("/dev/loop"):
        _detach(loop)


def _detach(loop: str) -> None:
    """Detach ``loop`` by ioctl (the kernel does it once dm-verity let go of it)."""
    from recover.boot import sysmount

    try:
        sysmount.detach_loop(loop)
    except OSError as e:
        log.debug("detach %s: %s", loop, e)
