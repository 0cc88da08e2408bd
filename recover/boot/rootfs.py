"""Mounts of the recovery boot: the store partition, the decrypted image, the tmpfs
overlay on $NEWROOT, and the cleanup that leaves nothing behind after a failure.

They are system calls (recover.boot.sysmount), not mount(8) processes; mount(8) and
blkid remain for what the payload does not recognise itself: a store whose file system
type is not in ``sysmount.probe_fstype``, a raw image of such a type, a v1 image
(``-o loop`` on the decrypted file).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from recover.boot import sysmount
from recover.config import Config
from recover.errors import SystemFault

log = logging.getLogger(__name__)


# The store holds data an attacker with the disks may have written: never devices,
# set-id programs or anything executable from it.
STORE_MOUNT_OPTIONS = "ro,nodev,nosuid,noexec"


def run_cmd(argv: list[str]) -> None:
    """Run a mount helper (argv list, logged under debug); a failure is a SystemFault."""
    import subprocess  # not on the clean boot's path

    log.debug("+ %s", " ".join(argv))
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        raise SystemFault(f"{argv[0]} could not run: {e}") from None
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise SystemFault(
            f"{argv[0]} failed ({proc.returncode}): {msg[-1] if msg else 'no output'}",
            hint="check that the initramfs carries the loop, squashfs and overlay modules",
        )


def sys_mount(source: str, target: str, fstype: str, options: str) -> None:
    """mount(2) (recover.boot.sysmount); a failure is a SystemFault like mount(8)'s."""
    log.debug("mount(2) -t %s -o %s %s %s", fstype, options, source, target)
    try:
        sysmount.mount(source, target, fstype, options)
    except OSError as e:
        raise SystemFault(
            f"{e.strerror}",
            hint="check that the initramfs carries the loop, squashfs and overlay modules",
        ) from None


def sys_umount(target: str, *, lazy: bool = False) -> None:
    log.debug("umount2(2)%s %s", " lazy" if lazy else "", target)
    try:
        sysmount.umount(target, lazy=lazy)
    except OSError as e:
        raise SystemFault(f"{e.strerror}") from None


def is_mounted(path: str | os.PathLike[str]) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mounts", encoding="utf-8") as f:
        return any(line.split()[1] == target for line in f if len(line.split()) > 1)


def store_dir(cfg: Config) -> Path:
    return Path(cfg.boot_state_dir) / "store"


def mount_store(cfg: Config) -> tuple[str, str]:
    """Mount the store device (``STORE_MOUNT_OPTIONS``) when configured; return the
    image and credential store paths."""
    if not cfg.store_device:
        return cfg.store_image, cfg.store_credentials
    mount_dir = store_dir(cfg)
    mount_dir.mkdir(parents=True, exist_ok=True)
    if not is_mounted(mount_dir):
        options = STORE_MOUNT_OPTIONS
        known = sysmount.read_fstype(cfg.store_device)
        if (known or fstype(cfg.store_device)).startswith("ext"):
            options += ",noload"  # a read-only ext3/4 mount would still replay the journal
        if known:
            sys_mount(cfg.store_device, os.fspath(mount_dir), known, options)
        else:  # a type the payload does not recognise: mount(8) and blkid find it
            run_cmd(["mount", "-o", options, cfg.store_device, os.fspath(mount_dir)])
    return (
        os.fspath(mount_dir / os.path.basename(cfg.store_image)),
        os.fspath(mount_dir / os.path.basename(cfg.store_credentials)),
    )


def store_fstype(device: str) -> str:
    """``device``'s file system type from its superblock (recover.boot.sysmount), else
    from blkid ('' when neither knows)."""
    return sysmount.read_fstype(device) or fstype(device)


def fstype(device: str) -> str:
    """The file system type blkid reports for ``device`` ('' when unknown)."""
    import subprocess

    try:
        proc = subprocess.run(
            ["blkid", "-o", "value", "-s", "TYPE", device],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout.strip()


def unmount_store(cfg: Config, *, in_use: bool = False) -> None:
    """The store is not left mounted inside the recovery root (nor the normal one).
    ``in_use``: a v2 image on it is mapped (its loop device holds the file open), so the
    mount is detached (``umount -l``): gone from every mount table, alive until the
    mapping goes."""
    if cfg.store_device and is_mounted(store_dir(cfg)):
        sys_umount(os.fspath(store_dir(cfg)), lazy=in_use)


def tmpfs(path: Path, size_bytes: int | None = None, mode: str = "0700") -> None:
    path.mkdir(parents=True, exist_ok=True)
    if is_mounted(path):
        return
    opts = f"mode={mode}" + (f",size={size_bytes}" if size_bytes else "")
    sys_mount("tmpfs", os.fspath(path), "tmpfs", opts)


def mount_image(plain: Path, payload_type: str, work: Path, newroot: str) -> None:
    """The decrypted image (a block device: the dm-crypt target of a v2 image; or a
    file: a v1 image decrypted into a tmpfs) read-only, under a tmpfs overlay, on
    ``newroot``."""
    lower, upper = work / "lower", work / "overlay"
    lower.mkdir(parents=True, exist_ok=True)
    fstype = {"squashfs": "squashfs", "erofs": "erofs"}.get(payload_type, "")
    block = plain.is_block_device()  # a v2 image's dm-crypt device
    if block:
        fstype = fstype or sysmount.read_fstype(os.fspath(plain))
    if fstype and block:
        sys_mount(os.fspath(plain), os.fspath(lower), fstype, "ro,nodev")
    else:  # a v1 image's plaintext file (-o loop), or a raw image of a type unknown here
        opts = "ro,nodev" if block else "ro,loop,nodev"
        run_cmd(["mount", "-t", fstype or "auto", "-o", opts, os.fspath(plain), os.fspath(lower)])
    tmpfs(upper, mode="0755")
    (upper / "upper").mkdir(exist_ok=True)
    (upper / "work").mkdir(exist_ok=True)
    opts = f"lowerdir={lower},upperdir={upper}/upper,workdir={upper}/work"
    sys_mount("overlay", newroot, "overlay", opts)


def cleanup(newroot: str, cfg: Config) -> None:
    """After a failure leave nothing behind: no half-mounted $NEWROOT, no plaintext image,
    no credentials for the normal OS (the normal boot may go on), no store mount."""
    work = Path(cfg.boot_state_dir)
    cred = Path(cfg.boot_credentials_dir)
    for path in (newroot, work / "overlay", work / "lower", work / "image", cred):
        with contextlib.suppress(OSError, SystemFault):
            if is_mounted(path):
                sys_umount(os.fspath(path), lazy=True)
    from recover.boot import dmimage

    dmimage.unmap()  # a v2 image's mappings: the image key leaves the kernel with them
    if cred.is_dir():
        for f in cred.iterdir():
            with contextlib.suppress(OSError):
                f.unlink()
    with contextlib.suppress(OSError, SystemFault):
        unmount_store(cfg)
