"""Real file system payloads: mksquashfs / mkfs.erofs → create → decrypt → read back
with the file systems' own tools (no mount needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from recover.errors import UsageError
from recover.store import image

KEY = os.urandom(32)


def _tree(root: Path) -> dict[str, bytes]:
    files = {"etc/os-release": b"ID=recovery\n", "bin/payload": os.urandom(200_000)}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _round_trip(tmp_path: Path, fs: Path, payload: str) -> Path:
    out = tmp_path / "decrypted"
    for fmt in (1, 2):  # both container versions hold real file systems
        img = tmp_path / f"root-v{fmt}.hri"
        image.encrypt_file(
            fs,
            img,
            KEY,
            image_version=2,
            payload_type=payload,
            chunk_size=65536,
            format_version=fmt,
        )
        header = image.read_header(img)
        assert header.payload_type == payload and header.version == fmt
        out.unlink(missing_ok=True)
        image.decrypt_file(img, out, KEY)
        assert out.read_bytes() == fs.read_bytes()
    return out


@pytest.mark.skipif(not shutil.which("mksquashfs"), reason="squashfs-tools missing")
def test_squashfs(tmp_path: Path) -> None:
    files = _tree(tmp_path / "tree")
    fs = tmp_path / "root.squashfs"
    subprocess.run(
        ["mksquashfs", str(tmp_path / "tree"), str(fs), "-quiet", "-no-progress", "-comp", "zstd"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    out = _round_trip(tmp_path, fs, "squashfs")
    for rel, data in files.items():
        got = subprocess.run(
            ["unsquashfs", "-cat", str(out), rel], check=True, capture_output=True, timeout=60
        ).stdout
        assert got == data
    with pytest.raises(UsageError, match="not a erofs image"):
        image.encrypt_file(fs, tmp_path / "x.hri", KEY, image_version=1, payload_type="erofs")


@pytest.mark.skipif(not shutil.which("mkfs.erofs"), reason="erofs-utils missing")
def test_erofs(tmp_path: Path) -> None:
    files = _tree(tmp_path / "tree")
    fs = tmp_path / "root.erofs"
    subprocess.run(
        ["mkfs.erofs", str(fs), str(tmp_path / "tree")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    out = _round_trip(tmp_path, fs, "erofs")
    dest = tmp_path / "extracted"
    subprocess.run(
        ["fsck.erofs", f"--extract={dest}", str(out)], check=True, capture_output=True, timeout=60
    )
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data
