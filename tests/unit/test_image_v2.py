"""Recovery image container v2: the dm-verity tree against the real ``veritysetup``, round
trips with real AES-XTS, and every tamper case through the offline verifier."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recover.core import imageformat, verity
from recover.core.imageformat import V2_BLOCK, HeaderV2
from recover.errors import IntegrityError, RollbackError, UsageError
from recover.store import image

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
VERITYSETUP = shutil.which("veritysetup")


def _make(tmp_path: Path, size: int, *, version: int = 5, name: str = "img") -> tuple[Path, bytes]:
    plain = os.urandom(size)
    src = tmp_path / f"{name}.raw"
    src.write_bytes(plain)
    dst = tmp_path / f"{name}.hri"
    h = image.encrypt_file(src, dst, KEY, image_version=version, payload_type="raw")
    assert isinstance(h, HeaderV2)
    return dst, plain


def _header(path: Path) -> HeaderV2:
    h = image.read_header(path)
    assert isinstance(h, HeaderV2)
    return h


def _veritysetup(*args: str) -> subprocess.CompletedProcess[str]:
    assert VERITYSETUP is not None
    return subprocess.run(
        [VERITYSETUP, *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("blocks", [1, 2, 127, 128, 129, 300, 128 * 128 + 1])
def test_geometry_and_tree_equal_veritysetup_format(tmp_path: Path, blocks: int) -> None:
    """Our tree is byte for byte what `veritysetup format` writes (format 1, sha256)."""
    if VERITYSETUP is None:
        pytest.fail("veritysetup (cryptsetup-bin) is needed for this cross-check")
    data = tmp_path / "data"
    data.write_bytes(os.urandom(blocks * V2_BLOCK))
    salt = os.urandom(32)
    geo = verity.geometry(blocks, V2_BLOCK)
    with data.open("rb") as f:
        blobs = iter(lambda: f.read(V2_BLOCK), b"")
        area, root = verity.tree_of_blocks(salt, blobs, V2_BLOCK)
    hashfile = tmp_path / "hash"
    r = _veritysetup("format", "--no-superblock", "--data-block-size=4096",
                     "--hash-block-size=4096", f"--salt={salt.hex()}", str(data), str(hashfile))  # fmt: skip
    assert r.returncode == 0, r.stderr
    theirs = next(
        line.split()[-1] for line in r.stdout.splitlines() if line.startswith("Root hash")
    )
    assert theirs == root.hex()
    assert hashfile.read_bytes()[: len(area)] == area
    assert len(area) == geo.hash_blocks * V2_BLOCK
    assert not any(hashfile.read_bytes()[len(area) :])  # veritysetup pads nothing more


@pytest.mark.parametrize("size", [0, 1, V2_BLOCK - 1, V2_BLOCK, V2_BLOCK + 1, 300 * V2_BLOCK + 5])
def test_round_trip(tmp_path: Path, size: int) -> None:
    img, plain = _make(tmp_path, size)
    h = _header(img)
    assert h.plaintext_length == size and h.data_blocks == max(1, -(-size // V2_BLOCK))
    assert img.stat().st_size == h.container_length
    imageformat.authenticate(h, KEY)
    assert image.verify_file(img, KEY).image_version == 5
    out = tmp_path / "out"
    image.decrypt_file(img, out, KEY)
    assert out.read_bytes() == plain


def test_container_verifies_with_veritysetup_at_the_kernel_offsets(tmp_path: Path) -> None:
    """The dm table's geometry: data and hash areas on one device from the data offset,
    the tree at block ``data_blocks`` (what the boot's loop device + table use)."""
    if VERITYSETUP is None:
        pytest.fail("veritysetup (cryptsetup-bin) is needed for this cross-check")
    img, _ = _make(tmp_path, 200 * V2_BLOCK + 17)
    h = _header(img)
    dev = tmp_path / "from-data-offset"
    dev.write_bytes(img.read_bytes()[h.data_offset :])
    args = ["--no-superblock", "--data-block-size=4096", "--hash-block-size=4096",
            f"--salt={h.verity_salt.hex()}", f"--data-blocks={h.data_blocks}",
            f"--hash-offset={h.data_blocks * V2_BLOCK}", str(dev), str(dev)]  # fmt: skip
    r = _veritysetup("verify", *args, h.root_hash.hex())
    assert r.returncode == 0, r.stderr
    data = bytearray(dev.read_bytes())
    data[77 * V2_BLOCK + 9] ^= 1
    dev.write_bytes(bytes(data))
    assert _veritysetup("verify", *args, h.root_hash.hex()).returncode != 0
    table = imageformat.verity_table(h, "/dev/loop7").split()
    assert table[:3] == ["0", str(h.data_blocks * 8), "verity"]
    assert table[3:12] == ["1", "/dev/loop7", "/dev/loop7", "4096", "4096",
                           str(h.data_blocks), str(h.data_blocks), "sha256", h.root_hash.hex()]  # fmt: skip
    assert table[12:] == [h.verity_salt.hex()]  # no corruption mode: EIO


def test_ciphertext_is_aes_xts_per_4k_sector(tmp_path: Path) -> None:
    """dm-crypt aes-xts-plain64 with sector_size:4096 and iv_large_sectors: sector i is
    AES-XTS(key, tweak = i little-endian) of its own 4096 bytes."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    img, plain = _make(tmp_path, 3 * V2_BLOCK)
    h = _header(img)
    key = imageformat.authenticate(h, KEY)
    assert len(key) == 64
    ct = img.read_bytes()[h.data_offset : h.data_offset + 3 * V2_BLOCK]
    for i in range(3):
        enc = Cipher(algorithms.AES(key), modes.XTS(i.to_bytes(16, "little"))).encryptor()
        assert (
            enc.update(plain[i * V2_BLOCK : (i + 1) * V2_BLOCK])
            == ct[i * V2_BLOCK : (i + 1) * V2_BLOCK]
        )
    table = imageformat.crypt_table(h, "/dev/mapper/v", ":64:logon:host-recover:image-xts")
    assert table == (f"0 {3 * 8} crypt aes-xts-plain64 :64:logon:host-recover:image-xts 0 "
                     "/dev/mapper/v 0 2 sector_size:4096 iv_large_sectors")  # fmt: skip


def test_keys_are_per_image_and_apart_from_v1(tmp_path: Path) -> None:
    a, _ = _make(tmp_path, 5000, name="a")
    b, _ = _make(tmp_path, 5000, name="b")
    ka = imageformat.authenticate(_header(a), KEY)
    kb = imageformat.authenticate(_header(b), KEY)
    assert ka != kb and ka[:32] != ka[32:]
    assert _header(a).key_id == imageformat.key_id(KEY)  # one key id for both versions


@pytest.mark.parametrize("where", ["data", "padding", "hash-level0", "hash-top"])
def test_flipped_byte_in_any_area_is_detected(tmp_path: Path, where: str) -> None:
    img, _ = _make(tmp_path, 200 * V2_BLOCK + 100)  # two hash levels
    h = _header(img)
    geo = h.geometry
    at = {
        "data": h.data_offset + 123 * V2_BLOCK + 7,
        "padding": h.data_offset + 200 * V2_BLOCK + 3000,  # ciphertext of the zero padding
        "hash-level0": h.hash_offset + geo.levels[0][0] * V2_BLOCK + 40,
        "hash-top": h.hash_offset + geo.levels[-1][0] * V2_BLOCK + 1,
    }[where]
    data = bytearray(img.read_bytes())
    data[at] ^= 0x80
    img.write_bytes(bytes(data))
    want = {"data": "data block 123 ", "padding": "data block 200 ",
            "hash-level0": "data block 1 ", "hash-top": "hash tree level 1"}[where]  # fmt: skip
    with pytest.raises(IntegrityError, match=want):
        image.verify_file(img, KEY)
    out = tmp_path / "out"
    with pytest.raises(IntegrityError):
        image.decrypt_file(img, out, KEY)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.hri", "img.raw"]


def test_tree_zero_padding_of_the_last_hash_block_is_checked(tmp_path: Path) -> None:
    img, _ = _make(tmp_path, 10 * V2_BLOCK)  # 10 digests: the rest of the block is zero
    h = _header(img)
    data = bytearray(img.read_bytes())
    data[h.hash_offset + h.hash_blocks * V2_BLOCK - 1] = 1
    img.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="hash tree level 0"):
        image.verify_file(img, KEY)


@pytest.mark.parametrize("cut", [1, V2_BLOCK, -1])
def test_truncation_and_appended_data_detected(tmp_path: Path, cut: int) -> None:
    img, _ = _make(tmp_path, 50 * V2_BLOCK)
    data = img.read_bytes()
    img.write_bytes(data[:-cut] if cut > 0 else data + b"\0" * V2_BLOCK)
    with pytest.raises(IntegrityError, match="truncated|trailing"):
        image.verify_file(img, KEY)
    with pytest.raises(IntegrityError, match="truncated|trailing"):
        image.open_v2(img, KEY)  # the boot's check before it maps anything


def test_rollback_and_wrong_key_rejected_before_any_block(tmp_path: Path) -> None:
    img, _ = _make(tmp_path, 8 * V2_BLOCK, version=3)
    with pytest.raises(RollbackError, match="older than the minimum 4"):
        image.verify_file(img, KEY, min_version=4)
    with pytest.raises(RollbackError):
        image.open_v2(img, KEY, min_version=4)
    assert image.open_v2(img, KEY, min_version=3)[0].image_version == 3
    with pytest.raises(IntegrityError, match="wrong key"):
        image.open_v2(img, OTHER_KEY)


def test_header_from_another_image_is_rejected(tmp_path: Path) -> None:
    a, _ = _make(tmp_path, 20 * V2_BLOCK, name="a")
    b, _ = _make(tmp_path, 20 * V2_BLOCK, name="b")
    data = bytearray(b.read_bytes())
    data[: imageformat.V2_HEADER_SIZE] = a.read_bytes()[: imageformat.V2_HEADER_SIZE]
    b.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        image.verify_file(b, KEY)  # a's root hash does not cover b's blocks


def _valid_header() -> bytes:
    return imageformat.build_header_v2(
        KEY, payload=imageformat.PayloadType.SQUASHFS, length=1 << 20, image_version=9,
        salt=bytes(32), verity_salt=bytes(range(32)), root_hash=bytes(32),
    ).raw  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pos=st.integers(0, imageformat.V2_HEADER_SIZE - 1), bit=st.integers(0, 7))
def test_any_header_bit_flip_is_rejected(pos: int, bit: int) -> None:
    data = bytearray(_valid_header())
    data[pos] ^= 1 << bit
    with pytest.raises(IntegrityError):
        imageformat.authenticate(imageformat.parse_header(bytes(data)), KEY)


@settings(max_examples=200, deadline=None)
@given(tail=st.binary(min_size=0, max_size=imageformat.V2_HEADER_SIZE))
def test_random_v2_headers_raise_only_typed_errors(tail: bytes) -> None:
    data = imageformat.MAGIC + struct.pack(">H", 2) + tail
    try:
        imageformat.parse_header(data)
    except IntegrityError:
        pass


def test_v1_stays_readable_and_create_writes_v2(tmp_path: Path) -> None:
    src = tmp_path / "p.raw"
    src.write_bytes(os.urandom(10_000))
    v1 = image.encrypt_file(src, tmp_path / "v1.hri", KEY, image_version=1,
                            payload_type="raw", format_version=1)  # fmt: skip
    v2 = image.encrypt_file(src, tmp_path / "v2.hri", KEY, image_version=1, payload_type="raw")
    assert (v1.version, v2.version) == (1, 2)
    for name in ("v1.hri", "v2.hri"):
        image.decrypt_file(tmp_path / name, tmp_path / f"{name}.out", KEY)
        assert (tmp_path / f"{name}.out").read_bytes() == src.read_bytes()
    with pytest.raises(IntegrityError, match="format 1 image, not 2"):
        image.open_v2(tmp_path / "v1.hri", KEY)
    with pytest.raises(UsageError, match="format version 3"):
        image.encrypt_file(src, tmp_path / "v3.hri", KEY, image_version=1,
                           payload_type="raw", format_version=3)  # fmt: skip
