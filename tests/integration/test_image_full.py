"""Recovery image container v1 against a full file system: decrypting into a 64 KiB
tmpfs (mounted by the test: root) is a usage error that leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from recover.errors import SystemFault
from recover.store import image

KEY = bytes(range(32))
CS = 4096


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (needs CAP_SYS_ADMIN; skipped without it), unmounted afterwards."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
        timeout=30,
    )
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)


def test_full_target_is_a_system_fault_and_leaves_nothing(
    tmp_path: Path, small_tmpfs: Path
) -> None:
    src, img = tmp_path / "img.raw", tmp_path / "img.hri"
    src.write_bytes(os.urandom(50 * CS))
    image.encrypt_file(
        src, img, KEY, image_version=5, payload_type="raw", chunk_size=CS, format_version=1
    )
    with pytest.raises(SystemFault, match="No space left"):
        image.decrypt_file(img, small_tmpfs / "root.img", KEY, workers=2)
    assert list(small_tmpfs.iterdir()) == []
    assert os.statvfs(small_tmpfs).f_bfree == os.statvfs(small_tmpfs).f_blocks
