"""recover.boot.sysmount against this host's kernel (root): loop devices by ioctl and
mounts by system call, what the recovery boot does instead of losetup, mount and blkid.
The kernel's own view (sysfs, /proc/self/mountinfo) is what is checked."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from pathlib import Path

import pytest

from recover.boot import sysmount

MIB = 1 << 20


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0 or not os.path.exists(sysmount.LOOP_CONTROL):
        pytest.fail("needs root and /dev/loop-control")


def _sys(dev: str, *rel: str) -> Path:
    return Path("/sys/block", os.path.basename(dev), *rel)


def _mountinfo(target: Path) -> list[str] | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        f = line.split()
        if f[4] == os.fspath(target):
            return f
    return None


def test_loop_attached_read_only_from_offset_with_size_limit(tmp_path: Path) -> None:
    data = os.urandom(3 * MIB)
    f = tmp_path / "container"
    f.write_bytes(data)
    dev = sysmount.attach_loop(os.fspath(f), offset=4096, sizelimit=MIB)
    try:
        assert (_sys(dev, "ro")).read_text().strip() == "1"
        assert (_sys(dev, "loop", "offset")).read_text().strip() == "4096"
        assert (_sys(dev, "loop", "sizelimit")).read_text().strip() == str(MIB)
        assert (_sys(dev, "loop", "backing_file")).read_text().strip() == os.fspath(f)
        with open(dev, "rb") as d:
            assert d.read() == data[4096 : 4096 + MIB]  # exactly the window, nothing else
        fd = os.open(dev, os.O_WRONLY)
        try:
            with pytest.raises(OSError) as e:  # the kernel refuses the write itself
                os.write(fd, b"x" * 4096)
                os.fsync(fd)
            assert e.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
        finally:
            os.close(fd)
        assert f.read_bytes() == data
    finally:
        sysmount.detach_loop(dev)
    assert not _sys(dev, "loop", "backing_file").exists()  # detached


def test_concurrent_attaches_get_distinct_devices(tmp_path: Path) -> None:
    """LOOP_CTL_GET_FREE gives racing callers the same free device: the loser's
    LOOP_CONFIGURE is EBUSY and it takes the next one (bounded)."""
    files = []
    for i in range(4):
        files.append(tmp_path / f"f{i}")
        files[-1].write_bytes(bytes([i]) * 65536)
    got: dict[int, str] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(files))

    def attach(i: int) -> None:
        try:
            start.wait(timeout=30)
            got[i] = sysmount.attach_loop(os.fspath(files[i]))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=attach, args=(i,)) for i in range(len(files))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert errors == []
        assert len(set(got.values())) == len(files)
        for i, dev in got.items():
            with open(dev, "rb") as d:
                assert d.read(1) == bytes([i])
    finally:
        for dev in got.values():
            sysmount.detach_loop(dev)


def test_a_missing_backing_file_attaches_nothing(tmp_path: Path) -> None:
    before = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    with pytest.raises(FileNotFoundError):
        sysmount.attach_loop(os.fspath(tmp_path / "absent"))
    assert subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout == before


def test_ext4_store_mounted_inert_by_system_call(tmp_path: Path) -> None:
    img, mnt = tmp_path / "store.ext4", tmp_path / "mnt"
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "recovery.hri").write_bytes(b"x")
    subprocess.run(["mkfs.ext4", "-q", "-d", str(tree), str(img), "8M"], check=True)
    mnt.mkdir()
    dev = sysmount.attach_loop(os.fspath(img))
    try:
        assert sysmount.read_fstype(dev) == "ext4"
        link = tmp_path / "by-partlabel-store"  # as udev names a partition
        link.symlink_to(dev)
        assert sysmount.read_fstype(os.fspath(link)) == "ext4"
        sysmount.mount(os.fspath(link), os.fspath(mnt), "ext4", "ro,nodev,nosuid,noexec,noload")
        try:
            info = _mountinfo(mnt)
            assert info is not None
            assert {"ro", "nodev", "nosuid", "noexec"} <= set(info[5].split(","))
            assert (mnt / "recovery.hri").read_bytes() == b"x"
        finally:
            sysmount.umount(os.fspath(mnt), lazy=True)
        assert _mountinfo(mnt) is None
    finally:
        sysmount.detach_loop(dev)


def test_squashfs_and_erofs_are_recognised(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a").write_text("a")
    sq, ero = tmp_path / "i.squashfs", tmp_path / "i.erofs"
    subprocess.run(["mksquashfs", str(tree), str(sq), "-quiet", "-noappend"], check=True)
    subprocess.run(["mkfs.erofs", "--quiet", str(ero), str(tree)], check=True)
    assert sysmount.read_fstype(os.fspath(sq)) == "squashfs"
    assert sysmount.read_fstype(os.fspath(ero)) == "erofs"
    assert sysmount.read_fstype(os.fspath(tmp_path / "absent")) == ""


def test_a_failed_mount_says_why_and_mounts_nothing(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    junk = tmp_path / "junk"
    junk.write_bytes(os.urandom(65536))
    dev = sysmount.attach_loop(os.fspath(junk))
    try:
        with pytest.raises(OSError) as e:
            sysmount.mount(dev, os.fspath(mnt), "squashfs", "ro,nodev")
        assert e.value.errno == errno.EINVAL and dev in str(e.value)
        with pytest.raises(OSError) as e:
            sysmount.mount(dev, os.fspath(mnt), "no-such-fs", "ro")
        assert e.value.errno == errno.ENODEV
        assert _mountinfo(mnt) is None
    finally:
        sysmount.detach_loop(dev)


def test_tmpfs_options_reach_the_kernel(tmp_path: Path) -> None:
    mnt = tmp_path / "t"
    mnt.mkdir()
    sysmount.mount("tmpfs", os.fspath(mnt), "tmpfs", "mode=0700,size=1052672")
    try:
        info = _mountinfo(mnt)
        assert info is not None
        super_opts = info[-1].split(",")
        assert "mode=700" in super_opts and "size=1028k" in super_opts
        assert (mnt.stat().st_mode & 0o777) == 0o700
    finally:
        sysmount.umount(os.fspath(mnt))
    with pytest.raises(OSError) as e:  # not mounted any more
        sysmount.umount(os.fspath(mnt))
    assert e.value.errno == errno.EINVAL
