"""recover.boot.sysmount's pure parts: mount(8) options as mount(2) flags and data, the
superblock magics, the loop ioctl structures' layout (<linux/loop.h>)."""

from __future__ import annotations

import pytest

from recover.boot import sysmount as sm


@pytest.mark.parametrize(
    ("options", "flags", "data"),
    [
        ("ro,nodev,nosuid,noexec", sm.MS_RDONLY | sm.MS_NODEV | sm.MS_NOSUID | sm.MS_NOEXEC, ""),
        ("ro,nodev,nosuid,noexec,noload", 15, "noload"),
        ("mode=0700,size=1052672", 0, "mode=0700,size=1052672"),
        (
            "lowerdir=/a,upperdir=/b/upper,workdir=/b/work",
            0,
            "lowerdir=/a,upperdir=/b/upper,workdir=/b/work",
        ),
        ("ro,rw,noatime", sm.MS_NOATIME, ""),  # a later rw clears ro, as in mount(8)
        ("", 0, ""),
        (",ro,,", sm.MS_RDONLY, ""),
    ],
)
def test_split_options(options: str, flags: int, data: str) -> None:
    assert sm.split_options(options) == (flags, data)


@pytest.mark.parametrize("opt", ["loop", "defaults", "nofail", "user"])
def test_mount8_only_options_are_refused_not_passed_to_the_kernel(opt: str) -> None:
    with pytest.raises(ValueError, match=opt):
        sm.split_options(f"ro,{opt}")


def _at(offset: int, magic: bytes) -> bytes:
    head = bytearray(sm.PROBE_BYTES)
    head[offset : offset + len(magic)] = magic
    return bytes(head)


@pytest.mark.parametrize(
    ("head", "fstype"),
    [
        (_at(0, b"hsqs"), "squashfs"),
        (_at(1024, bytes.fromhex("e2e1f5e0")), "erofs"),
        (_at(1080, b"\x53\xef"), "ext4"),
        (_at(0, b"XFSB"), "xfs"),
        (_at(0x10040, b"_BHRfS_M"), "btrfs"),
        (bytes(sm.PROBE_BYTES), ""),  # zeros: unknown, the caller asks blkid
        (_at(1080, b"\xef\x53"), ""),  # the ext magic byte-swapped is not ext
        (b"hsq", ""),  # short read (a tiny device): nothing matches a cut magic
        (b"", ""),
    ],
)
def test_probe_fstype(head: bytes, fstype: str) -> None:
    assert sm.probe_fstype(head) == fstype


def test_loop_structures_have_the_kernels_sizes() -> None:
    assert sm._LOOP_INFO64.size == 232  # sizeof(struct loop_info64)
    assert sm._LOOP_CONFIG.size == 304  # sizeof(struct loop_config)
