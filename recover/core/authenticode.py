"""The Authenticode digest of a PE/COFF image: what UEFI firmware (and shim) extend into
PCR 4 for each EFI application they load, per PCR bank (TCG PC Client PFP,
EV_EFI_BOOT_SERVICES_APPLICATION). A Linux kernel built with the EFI stub is such an
image, so a new kernel's PCR 4 measurement can be computed from its file.

The digest is the one of the PE/COFF specification ("Calculating the PE Image Hash"), as
EDK2's measured-boot library computes it: the headers without the CheckSum field and the
certificate table's directory entry, then every section with raw data in file order,
then whatever follows the sections except the certificate table (a signed image and its
unsigned original have the same digest).
"""

from __future__ import annotations

import hashlib
import struct

from recover.errors import UsageError

_PE32, _PE32_PLUS = 0x10B, 0x20B
_SECURITY = 4  # IMAGE_DIRECTORY_ENTRY_SECURITY: the certificate table
_SECTION_HEADER = 40


def _u16(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<H", data, off)[0])


def _u32(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", data, off)[0])


def digest(image: bytes, algorithm: str) -> bytes:
    """The Authenticode digest of ``image`` with ``algorithm`` (a hashlib name). Raises
    UsageError when ``image`` is not a PE/COFF image this can hash."""
    try:
        return _digest(image, algorithm)
    except struct.error:
        raise UsageError("not a PE/COFF image: a header runs past the end of the file") from None


def _digest(image: bytes, algorithm: str) -> bytes:
    if image[:2] != b"MZ":
        raise UsageError("not a PE/COFF image (no MZ header): an EFI-stub kernel is one")
    pe = _u32(image, 0x3C)
    if image[pe : pe + 4] != b"PE\0\0":
        raise UsageError("not a PE/COFF image (no PE signature): an EFI-stub kernel is one")
    n_sections = _u16(image, pe + 6)
    opt_size = _u16(image, pe + 20)
    opt = pe + 24
    magic = _u16(image, opt)
    if magic == _PE32:
        n_dirs_at, dirs_at = opt + 92, opt + 96
    elif magic == _PE32_PLUS:
        n_dirs_at, dirs_at = opt + 108, opt + 112
    else:
        raise UsageError(f"unknown PE optional header magic 0x{magic:x}")
    size_of_headers = _u32(image, opt + 60)
    checksum = opt + 64
    n_dirs = _u32(image, n_dirs_at)
    if size_of_headers > len(image) or n_dirs_at + 4 > len(image):
        raise UsageError("not a PE/COFF image: the headers run past the end of the file")
    h = hashlib.new(algorithm)
    h.update(image[:checksum])
    if n_dirs <= _SECURITY:  # no certificate table entry
        cert_size = 0
        h.update(image[checksum + 4 : size_of_headers])
    else:
        cert_dir = dirs_at + 8 * _SECURITY
        cert_size = _u32(image, cert_dir + 4)
        h.update(image[checksum + 4 : cert_dir])
        h.update(image[cert_dir + 8 : size_of_headers])
    table = opt + opt_size
    sections = []
    for i in range(n_sections):
        at = table + i * _SECTION_HEADER
        raw_size, raw_ptr = _u32(image, at + 16), _u32(image, at + 20)
        if raw_size:
            if raw_ptr + raw_size > len(image):
                raise UsageError("not a PE/COFF image: a section runs past the end of the file")
            sections.append((raw_ptr, raw_size))
    hashed = size_of_headers
    for ptr, size in sorted(sections):
        h.update(image[ptr : ptr + size])
        hashed += size
    if len(image) > hashed:
        if len(image) < hashed + cert_size:
            raise UsageError("not a PE/COFF image: the certificate table overlaps the sections")
        h.update(image[hashed : len(image) - cert_size])
    return h.digest()
