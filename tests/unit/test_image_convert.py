"""`image convert`: a format 1 image re-encrypted as format 2 with real AES-GCM and
AES-XTS. The result verifies offline (the whole verity tree) and decrypts to the same
plaintext; a v1 image that does not verify leaves nothing behind; bad input exits 2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_image_cli import run

from recover.core.imageformat import HeaderV2
from recover.errors import IntegrityError, RollbackError, UsageError
from recover.store import image

KEY = bytes(range(32))


def _v1(tmp_path: Path, size: int, chunk: int = 4096, version: int = 9) -> tuple[Path, bytes]:
    plain = b"hsqs" + os.urandom(size - 4) if size >= 4 else os.urandom(size)
    src = tmp_path / "plain.img"
    src.write_bytes(plain)
    out = tmp_path / "v1.hri"
    image.encrypt_file(src, out, KEY, image_version=version, payload_type="raw",
                       chunk_size=chunk, format_version=1)  # fmt: skip
    src.unlink()
    return out, plain


@pytest.mark.parametrize(
    "size,chunk",
    [(0, 4096), (1, 4096), (4096, 4096), (50_000, 4096), (3 * 4096 + 17, 65536), (300_001, 8192)],
)
def test_converted_image_verifies_and_decrypts_to_the_same_plaintext(
    tmp_path: Path, size: int, chunk: int
) -> None:
    v1, plain = _v1(tmp_path, size, chunk)
    v2 = tmp_path / "v2.hri"
    header = image.convert_file(v1, v2, KEY)
    assert isinstance(header, HeaderV2)
    assert (header.image_version, header.plaintext_length) == (9, size)
    assert str(header.payload_type) == "raw"
    assert isinstance(image.verify_file(v2, KEY), HeaderV2)
    out = tmp_path / "out.img"
    image.decrypt_file(v2, out, KEY)
    assert out.read_bytes() == plain


@pytest.mark.parametrize("where", ["first", "middle", "last-tag"])
def test_a_tampered_v1_chunk_leaves_nothing(tmp_path: Path, where: str) -> None:
    v1, _ = _v1(tmp_path, 50_000)
    data = bytearray(v1.read_bytes())
    at = {"first": 200, "middle": len(data) // 2, "last-tag": len(data) - 1}[where]
    data[at] ^= 0x40
    v1.write_bytes(bytes(data))
    v2 = tmp_path / "v2.hri"
    with pytest.raises(IntegrityError, match="failed authentication"):
        image.convert_file(v1, v2, KEY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1.hri"]  # no output, no temp


def test_truncated_wrong_key_rolled_back_same_file_and_v2_are_refused(tmp_path: Path) -> None:
    v1, _ = _v1(tmp_path, 20_000)
    v2 = tmp_path / "v2.hri"
    short = tmp_path / "short.hri"
    short.write_bytes(v1.read_bytes()[:-100])
    with pytest.raises(IntegrityError, match="truncated"):
        image.convert_file(short, v2, KEY)
    with pytest.raises(IntegrityError):
        image.convert_file(v1, v2, bytes(32))
    with pytest.raises(RollbackError):
        image.convert_file(v1, v2, KEY, min_version=10)
    with pytest.raises(UsageError):
        image.convert_file(v1, v1, KEY)
    assert not v2.exists()
    image.convert_file(v1, v2, KEY)
    with pytest.raises(UsageError, match="format 2 image already"):
        image.convert_file(v2, tmp_path / "again.hri", KEY)


def test_cli_convert(tmp_path: Path) -> None:
    key = tmp_path / "image.key"
    key.write_bytes(KEY)
    v1, plain = _v1(tmp_path, 30_000)
    v2 = tmp_path / "v2.hri"
    r = run("image", "convert", v1, v2, "--key-file", key)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{v2}: format 2 from format 1, image version 9, 30000 bytes")
    r = run("image", "verify", v2, "--key-file", key)
    assert r.returncode == 0 and "OK (format 2" in r.stdout, r.stderr
    r = run("image", "convert", v2, tmp_path / "again.hri", "--key-file", key)
    assert r.returncode == 2 and "format 2 image already" in r.stderr
    data = bytearray(v1.read_bytes())
    data[500] ^= 1
    v1.write_bytes(bytes(data))
    r = run("image", "convert", v1, tmp_path / "bad.hri", "--key-file", key)
    assert r.returncode == 5 and "failed authentication" in r.stderr
    assert not (tmp_path / "bad.hri").exists()
