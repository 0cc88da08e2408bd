"""recover/core/authenticode.py against an independent implementation: osslsigncode signs
a copy of the image and reports the digest it computed and embedded; ours must equal it
on the unsigned original and on the signed copy (the certificate table is excluded). The
images: Debian's kernel (the lab's, an EFI-stub PE32+ image) and small PE images built
here to reach the odd cases (sections out of file order, empty sections, data after the
last section, a PE32 header)."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from recover.core import authenticode
from recover.errors import UsageError


def _signer(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
         "-out", cert, "-days", "1", "-subj", "/CN=host-recover test"],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


def _osslsigncode(image: Path, algorithm: str, tmp_path: Path) -> tuple[bytes, Path]:
    """(osslsigncode's computed digest of ``image``, the signed copy)."""
    assert shutil.which("osslsigncode"), "osslsigncode is missing (make deps installs it)"
    key, cert = _signer(tmp_path)
    signed = tmp_path / f"{image.name}.{algorithm}.signed"
    subprocess.run(
        ["osslsigncode", "sign", "-certs", cert, "-key", key, "-h", algorithm,
         "-in", image, "-out", signed],
        check=True, capture_output=True,
    )  # fmt: skip
    out = subprocess.run(
        ["osslsigncode", "verify", "-in", signed], capture_output=True, text=True
    ).stdout
    current = re.search(r"Current message digest\s*:\s*([0-9A-F]+)", out)
    calculated = re.search(r"Calculated message digest\s*:\s*([0-9A-F]+)", out)
    assert current and calculated, out
    assert current[1] == calculated[1], out  # osslsigncode agrees with itself
    return bytes.fromhex(calculated[1]), signed


def pe_image(*, pe32: bool = False, order: tuple[int, ...] = (0, 1, 2), tail: bytes = b"") -> bytes:
    """A small PE image: 3 sections (the second empty) whose headers list them in
    ``order`` while their data lies in file order 0, 1, 2; then ``tail``."""
    opt_size = (96 if pe32 else 112) + 16 * 8
    pe = 0x80
    headers = pe + 24 + opt_size + 3 * 40
    size_of_headers = (headers + 0x1FF) & ~0x1FF
    raws = [bytes([0x11]) * 0x400, b"", bytes(range(256)) * 2]
    ptrs, at = [], size_of_headers
    for raw in raws:
        ptrs.append(at if raw else 0)
        at += len(raw)
    img = bytearray(size_of_headers)
    img[0:2] = b"MZ"
    struct.pack_into("<I", img, 0x3C, pe)
    img[pe : pe + 4] = b"PE\0\0"
    struct.pack_into("<HHIIIHH", img, pe + 4, 0x8664, 3, 0, 0, 0, opt_size, 0x22)
    opt = pe + 24
    struct.pack_into("<H", img, opt, 0x10B if pe32 else 0x20B)
    struct.pack_into("<II", img, opt + 56, 0x4000, size_of_headers)  # SizeOfImage, headers
    struct.pack_into("<I", img, opt + 64, 0xDEADBEEF)  # CheckSum: not hashed
    struct.pack_into("<I", img, opt + (92 if pe32 else 108), 16)  # NumberOfRvaAndSizes
    table = opt + opt_size
    for slot, i in enumerate(order):
        h = table + slot * 40
        img[h : h + 8] = f".s{i}".encode().ljust(8, b"\0")
        struct.pack_into("<IIII", img, h + 8, 0x1000, 0x1000 * (i + 1), len(raws[i]), ptrs[i])
        struct.pack_into("<I", img, h + 36, 0x60000020)
    return bytes(img) + b"".join(raws) + tail


@pytest.mark.parametrize(
    "name,image",
    [
        ("pe32plus", lambda: pe_image()),
        ("pe32", lambda: pe_image(pe32=True)),
        ("headers-out-of-order", lambda: pe_image(order=(2, 0, 1))),
        ("data-after-sections", lambda: pe_image(tail=b"appended data!!!" * 4)),
    ],
)
@pytest.mark.parametrize("algorithm", ["sha256", "sha384"])
def test_digest_equals_osslsigncodes(name, image, algorithm, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / f"{name}.efi"
    path.write_bytes(image())
    theirs, signed = _osslsigncode(path, algorithm, tmp_path)
    assert authenticode.digest(path.read_bytes(), algorithm) == theirs
    assert authenticode.digest(signed.read_bytes(), algorithm) == theirs  # cert table skipped


def test_the_debian_kernel(tmp_path: Path) -> None:
    from testing.qemu import harness

    vmlinuz = harness.kernel().vmlinuz
    theirs, signed = _osslsigncode(vmlinuz, "sha256", tmp_path)
    assert authenticode.digest(vmlinuz.read_bytes(), "sha256") == theirs
    assert authenticode.digest(signed.read_bytes(), "sha256") == theirs


def test_the_checksum_and_certificate_entry_are_not_hashed() -> None:
    img = bytearray(pe_image())
    before = authenticode.digest(bytes(img), "sha256")
    opt = 0x80 + 24
    struct.pack_into("<I", img, opt + 64, 0x12345678)
    struct.pack_into("<II", img, opt + 112 + 4 * 8, 0x1234, 0)
    assert authenticode.digest(bytes(img), "sha256") == before
    img[-1] ^= 1  # a section byte is
    assert authenticode.digest(bytes(img), "sha256") != before


@pytest.mark.parametrize(
    "data,message",
    [
        (b"", "no MZ header"),
        (b"\x7fELF" + bytes(100), "no MZ header"),
        (b"MZ" + bytes(0x3A) + struct.pack("<I", 0x40) + b"NE\0\0", "no PE signature"),
        (pe_image()[:0x300], "runs past the end"),
    ],
)
def test_not_a_pe_image_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        authenticode.digest(data, "sha256")
