"""Recovery image container v1: round trips and every tamper case, with real AES-GCM."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recover.core import imageformat
from recover.errors import IntegrityError, RollbackError, UsageError
from recover.store import image

CS = 4096
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
CHUNK_STRIDE = CS + imageformat.TAG_SIZE


def _make(tmp_path: Path, size: int, *, version: int = 5, name: str = "img") -> tuple[Path, bytes]:
    plain = os.urandom(size)
    src = tmp_path / f"{name}.raw"
    src.write_bytes(plain)
    dst = tmp_path / f"{name}.hri"
    image.encrypt_file(
        src, dst, KEY, image_version=version, payload_type="raw", chunk_size=CS, format_version=1
    )
    return dst, plain


def _leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


@pytest.mark.parametrize("size", [0, 1, CS - 1, CS, CS + 1, 7 * CS + 123, 9 * CS])
def test_round_trip(tmp_path: Path, size: int) -> None:
    img, plain = _make(tmp_path, size)
    header = image.read_header(img)
    assert header.plaintext_length == size
    assert header.chunks == max(1, -(-size // CS))
    assert img.stat().st_size == header.container_length
    out = tmp_path / "out"
    image.decrypt_file(img, out, KEY, workers=2)
    assert out.read_bytes() == plain
    assert image.verify_file(img, KEY).image_version == 5
    # ciphertext is not plaintext
    if size >= 64:
        assert plain[:64] not in img.read_bytes()


def test_multi_worker_equals_single_worker(tmp_path: Path) -> None:
    img, plain = _make(tmp_path, 13 * CS + 7)
    outs = []
    for workers in (1, 2, 3, 8):
        out = tmp_path / f"out{workers}"
        image.decrypt_file(img, out, KEY, workers=workers)
        outs.append(out.read_bytes())
    assert all(o == plain for o in outs)


def _expect_no_output(tmp_path: Path, img: Path, exc: type[Exception] = IntegrityError) -> None:
    out_dir = tmp_path / "outdir"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / "root.img"
    with pytest.raises(exc):
        image.decrypt_file(img, out, KEY, workers=2)
    assert _leftovers(out_dir, set()) == []
    with pytest.raises(exc):
        image.verify_file(img, KEY)


def _mutate(img: Path, fn) -> None:  # type: ignore[no-untyped-def]
    data = bytearray(img.read_bytes())
    img.write_bytes(bytes(fn(data)))


def test_truncation_detected(tmp_path: Path) -> None:
    img, _ = _make(tmp_path, 5 * CS)
    for cut in (1, imageformat.TAG_SIZE, CHUNK_STRIDE, CHUNK_STRIDE + 1):
        trunc = tmp_path / f"t{cut}.hri"
        trunc.write_bytes(img.read_bytes()[:-cut])
        _expect_no_output(tmp_path, trunc)


def test_truncation_at_chunk_boundary_with_fixed_length_detected(tmp_path: Path) -> None:
    """Drop the last chunk AND shrink the header's length: header MAC and AAD catch it."""
    img, _ = _make(tmp_path, 5 * CS)

    def fn(d: bytearray) -> bytearray:
        struct.pack_into(">Q", d, 24, 4 * CS)
        return d[: imageformat.HEADER_SIZE + 4 * CHUNK_STRIDE]

    _mutate(img, fn)
    _expect_no_output(tmp_path, img)


def test_appended_data_detected(tmp_path: Path) -> None:
    img, _ = _make(tmp_path, 3 * CS)
    _mutate(img, lambda d: d + b"\0")
    _expect_no_output(tmp_path, img)


def test_reordered_chunks_detected(tmp_path: Path) -> None:
    img, _ = _make(tmp_path, 4 * CS)

    def swap(d: bytearray) -> bytearray:
        a = imageformat.HEADER_SIZE + 1 * CHUNK_STRIDE
        b = imageformat.HEADER_SIZE + 2 * CHUNK_STRIDE
        d[a : a + CHUNK_STRIDE], d[b : b + CHUNK_STRIDE] = (
            d[b : b + CHUNK_STRIDE],
            d[a : a + CHUNK_STRIDE],
        )
        return d

    _mutate(img, swap)
    _expect_no_output(tmp_path, img)


def test_last_chunk_flag_detected(tmp_path: Path) -> None:
    """A full-size last chunk moved earlier cannot pose as non-final (and vice versa)."""
    img, _ = _make(tmp_path, 4 * CS)

    def dup_last(d: bytearray) -> bytearray:
        last = imageformat.HEADER_SIZE + 3 * CHUNK_STRIDE
        d[last - CHUNK_STRIDE : last] = d[last : last + CHUNK_STRIDE]
        return d

    _mutate(img, dup_last)
    _expect_no_output(tmp_path, img)


def test_spliced_chunk_from_other_image_same_key_detected(tmp_path: Path) -> None:
    img, _ = _make(tmp_path, 4 * CS, name="a")
    other, _ = _make(tmp_path, 4 * CS, name="b")
    donor = other.read_bytes()

    def splice(d: bytearray) -> bytearray:
        off = imageformat.HEADER_SIZE + CHUNK_STRIDE
        d[off : off + CHUNK_STRIDE] = donor[off : off + CHUNK_STRIDE]
        return d

    _mutate(img, splice)
    _expect_no_output(tmp_path, img)


def test_header_swapped_from_other_image_detected(tmp_path: Path) -> None:
    img, _ = _make(tmp_path, 4 * CS, name="a")
    other, _ = _make(tmp_path, 4 * CS, name="b")
    donor = other.read_bytes()[: imageformat.HEADER_SIZE]
    _mutate(img, lambda d: bytearray(donor) + d[imageformat.HEADER_SIZE :])
    _expect_no_output(tmp_path, img)


@pytest.mark.parametrize("where", ["header", "mac", "first", "middle", "tag", "last"])
def test_flipped_bit_detected(tmp_path: Path, where: str) -> None:
    img, _ = _make(tmp_path, 3 * CS + 100)
    size = img.stat().st_size
    offset = {
        "header": 30,
        "mac": imageformat.HEADER_SIZE - 1,
        "first": imageformat.HEADER_SIZE,
        "middle": imageformat.HEADER_SIZE + CHUNK_STRIDE + 17,
        "tag": imageformat.HEADER_SIZE + CHUNK_STRIDE - 1,
        "last": size - 1,
    }[where]

    def flip(d: bytearray) -> bytearray:
        d[offset] ^= 0x04
        return d

    _mutate(img, flip)
    _expect_no_output(tmp_path, img)


def test_wrong_key_detected_before_chunks(tmp_path: Path) -> None:
    img, _ = _make(tmp_path, 2 * CS)
    out = tmp_path / "out"
    with pytest.raises(IntegrityError, match="wrong key"):
        image.decrypt_file(img, out, OTHER_KEY)
    assert not out.exists()
    # The key id is public; with it forged, the HMAC commitment still rejects the key.
    header = image.read_header(img)
    forged = bytearray(header.raw)
    forged[80:96] = imageformat.key_id(OTHER_KEY)
    with pytest.raises(IntegrityError, match="authentication"):
        imageformat.authenticate(imageformat.parse_header(bytes(forged)), OTHER_KEY)


def test_rollback_rejected(tmp_path: Path) -> None:
    img, plain = _make(tmp_path, CS, version=3)
    out = tmp_path / "out"
    with pytest.raises(RollbackError, match="older than the minimum 4"):
        image.decrypt_file(img, out, KEY, min_version=4)
    assert not out.exists()
    with pytest.raises(RollbackError):
        image.verify_file(img, KEY, min_version=4)
    image.decrypt_file(img, out, KEY, min_version=3)
    assert out.read_bytes() == plain


def test_failed_decrypt_keeps_existing_output(tmp_path: Path) -> None:
    img, _ = _make(tmp_path, 2 * CS)
    out = tmp_path / "outdir" / "root.img"
    out.parent.mkdir()
    out.write_bytes(b"previous")
    _mutate(img, lambda d: d[:-1])
    with pytest.raises(IntegrityError):
        image.decrypt_file(img, out, KEY)
    assert out.read_bytes() == b"previous"
    assert _leftovers(out.parent, {"root.img"}) == []


def test_caller_tmp_dir_and_progress(tmp_path: Path) -> None:
    img, plain = _make(tmp_path, 20 * CS)
    tmp_dir = tmp_path / "tmp"
    tmp_dir.mkdir()
    seen: list[tuple[int, int]] = []
    image.decrypt_file(
        img, tmp_path / "out", KEY, tmp_dir=tmp_dir, progress=lambda d, t: seen.append((d, t))
    )
    assert (tmp_path / "out").read_bytes() == plain
    assert seen and seen[-1] == (len(plain), len(plain))
    assert list(tmp_dir.iterdir()) == []


def test_payload_magic_checked_on_create(tmp_path: Path) -> None:
    src = tmp_path / "x.raw"
    src.write_bytes(os.urandom(2000))
    with pytest.raises(UsageError, match="not a squashfs image"):
        image.encrypt_file(src, tmp_path / "x.hri", KEY, image_version=1)
    assert not (tmp_path / "x.hri").exists()
    src.write_bytes(b"hsqs" + os.urandom(2000))
    h = image.encrypt_file(
        src, tmp_path / "x.hri", KEY, image_version=1, chunk_size=1024, format_version=1
    )
    assert h.payload_type == "squashfs" and image.read_header(tmp_path / "x.hri") == h


def test_unreadable_paths_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        image.read_header(tmp_path / "missing")
    with pytest.raises(UsageError, match="not a regular file"):
        image.read_header(tmp_path)
    with pytest.raises(UsageError):
        image.encrypt_file(tmp_path / "missing", tmp_path / "o", KEY, image_version=1)
    img, _ = _make(tmp_path, 10)
    with pytest.raises(UsageError):
        image.decrypt_file(img, tmp_path / "no" / "such" / "dir" / "out", KEY)
    with pytest.raises(UsageError, match="32 bytes"):
        image.verify_file(img, b"short")


_SMALL_SRC = os.urandom(3 * 512 + 100)


@pytest.fixture(scope="module")
def small_image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    d = tmp_path_factory.mktemp("small")
    (d / "p").write_bytes(_SMALL_SRC)
    image.encrypt_file(
        d / "p", d / "i", KEY, image_version=1, payload_type="raw", chunk_size=512, format_version=1
    )
    return (d / "i").read_bytes()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_byte_change_anywhere_is_detected(
    small_image: bytes, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    pos = data.draw(st.integers(0, len(small_image) - 1))
    mask = data.draw(st.integers(1, 255))
    bad = bytearray(small_image)
    bad[pos] ^= mask
    path = tmp_path_factory.mktemp("mut") / "i"
    path.write_bytes(bytes(bad))
    with pytest.raises(IntegrityError):
        image.verify_file(path, KEY)
