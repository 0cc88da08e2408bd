"""Recovery image container v1 (docs/image-format.md): header, key schedule, nonces. Pure.

A read-only file system image is split into fixed-size chunks, each sealed with
AES-256-GCM under a per-image data key and a nonce ``prefix(7) ‖ counter(4) ‖ last(1)``
(the STREAM construction of age and Tink); the 128-byte header is the AAD of every
chunk and carries a key id and an HMAC key commitment, so a wrong key or a tampered
header is rejected before a single chunk is touched. File I/O: recover.store.image.
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
import secrets
import struct

from recover.core import keys
from recover.errors import IntegrityError, RollbackError, UsageError

MAGIC = b"\x89HRIMG\r\n"


FORMAT_VERSION = 1


HEADER_SIZE = 128


TAG_SIZE = 16


PREFIX_SIZE = 7


SALT_SIZE = 32


KEY_ID_SIZE = 16


KEY_SIZE = 32


MIN_CHUNK = 512


MAX_CHUNK = 1 << 26


MAX_CHUNKS = 1 << 32


DEFAULT_CHUNK = 1 << 20


INFO_DATA = b"host-recover/v1/image-data"


INFO_COMMIT = b"host-recover/v1/image-commit"


INFO_KEY_ID = b"host-recover/v1/image-key-id"


_FIXED = struct.Struct(">8sHHBBHII QQ32s7sB16s")


_MAC_OFFSET = _FIXED.size  # 96: HMAC-SHA256 commitment over bytes [0, 96)


class Suite(enum.IntEnum):
    AES256GCM_HKDFSHA256_STREAM = 1


class PayloadType(enum.StrEnum):
    """What the container holds (the file system type to mount it with)."""

    SQUASHFS = "squashfs"
    EROFS = "erofs"
    RAW = "raw"

    @property
    def code(self) -> int:
        return _PAYLOAD_CODES[self]

    @classmethod
    def from_name(cls, name: str) -> PayloadType:
        try:
            return cls(name.lower())
        except ValueError:
            raise UsageError(
                f"unknown payload type {name!r}", hint="squashfs, erofs or raw"
            ) from None


_PAYLOAD_CODES = {PayloadType.SQUASHFS: 1, PayloadType.EROFS: 2, PayloadType.RAW: 3}


_PAYLOAD_BY_CODE = {code: t for t, code in _PAYLOAD_CODES.items()}


@dataclasses.dataclass(frozen=True)
class Header:
    """A parsed (not yet authenticated) container header."""

    version: int
    suite: Suite
    payload_type: PayloadType
    chunk_size: int
    plaintext_length: int
    image_version: int
    salt: bytes
    nonce_prefix: bytes
    key_id: bytes
    commitment: bytes
    raw: bytes  # the 128 header bytes, the AAD of every chunk

    @property
    def chunks(self) -> int:
        return max(1, -(-self.plaintext_length // self.chunk_size))

    @property
    def container_length(self) -> int:
        return HEADER_SIZE + self.plaintext_length + TAG_SIZE * self.chunks

    def as_dict(self) -> dict[str, object]:
        return {
            "format_version": self.version,
            "suite": self.suite.name.lower(),
            "payload_type": str(self.payload_type),
            "chunk_size": self.chunk_size,
            "plaintext_length": self.plaintext_length,
            "chunks": self.chunks,
            "image_version": self.image_version,
            "key_id": self.key_id.hex(),
            "salt": self.salt.hex(),
        }


@dataclasses.dataclass(frozen=True)
class _Keys:
    data: bytes
    commit: bytes


def key_id(root_key: bytes) -> bytes:
    """Public identifier of an image root key (no secret: an HKDF output)."""
    _check_key(root_key)
    return keys.hkdf(root_key, INFO_KEY_ID, length=KEY_ID_SIZE)


def _derive(root_key: bytes, salt: bytes) -> _Keys:
    return _Keys(
        data=keys.hkdf(root_key, INFO_DATA, salt=salt),
        commit=keys.hkdf(root_key, INFO_COMMIT, salt=salt),
    )


def _check_key(root_key: bytes) -> None:
    if len(root_key) != KEY_SIZE:
        raise UsageError(
            f"the image key must be {KEY_SIZE} bytes, got {len(root_key)}",
            hint="use the file written by `provision --export-image-key`",
        )


def parse_header(data: bytes) -> Header:
    """Parse and strictly validate a header; raises only IntegrityError."""
    if len(data) < HEADER_SIZE:
        raise IntegrityError(
            f"image too short for a header ({len(data)} < {HEADER_SIZE} bytes)",
            hint="truncated or not a recovery image",
        )
    raw = bytes(data[:HEADER_SIZE])
    (magic, version, suite, payload, res1, hsize, chunk, res2, length, image_version, salt,
     prefix, res3, kid) = _FIXED.unpack_from(raw)  # fmt: skip
    if magic != MAGIC:
        raise IntegrityError(
            "not a host-recover image (bad magic)",
            hint="pass a file written by `host-recover image create`",
        )
    if version != FORMAT_VERSION:
        raise IntegrityError(
            f"unsupported image format version {version}",
            hint=f"this host-recover reads version {FORMAT_VERSION}",
        )
    if suite not in Suite._value2member_map_:
        raise IntegrityError(f"unsupported cipher suite {suite}")
    if payload not in _PAYLOAD_BY_CODE:
        raise IntegrityError(f"unknown payload type {payload}")
    if res1 or res2 or res3:
        raise IntegrityError("reserved header fields are not zero")
    if hsize != HEADER_SIZE:
        raise IntegrityError(f"bad header size {hsize}")
    if not MIN_CHUNK <= chunk <= MAX_CHUNK:
        raise IntegrityError(f"chunk size {chunk} out of range [{MIN_CHUNK}, {MAX_CHUNK}]")
    if length > chunk * MAX_CHUNKS:
        raise IntegrityError(f"plaintext length {length} needs more than 2^32 chunks")
    return Header(
        version=version,
        suite=Suite(suite),
        payload_type=_PAYLOAD_BY_CODE[payload],
        chunk_size=chunk,
        plaintext_length=length,
        image_version=image_version,
        salt=salt,
        nonce_prefix=prefix,
        key_id=kid,
        commitment=raw[_MAC_OFFSET:],
        raw=raw,
    )


def _build_header(
    root_key: bytes, payload: PayloadType, chunk: int, length: int, image_version: int
) -> tuple[Header, _Keys]:
    salt = secrets.token_bytes(SALT_SIZE)
    prefix = secrets.token_bytes(PREFIX_SIZE)
    k = _derive(root_key, salt)
    body = _FIXED.pack(
        MAGIC, FORMAT_VERSION, Suite.AES256GCM_HKDFSHA256_STREAM, payload.code, 0, HEADER_SIZE,
        chunk, 0, length, image_version, salt, prefix, 0, key_id(root_key),
    )  # fmt: skip
    raw = body + hmac.digest(k.commit, body, "sha256")
    return parse_header(raw), k


def authenticate(header: Header, root_key: bytes, *, min_version: int = 0) -> bytes:
    """Check key id, key commitment and anti-rollback; return the data key."""
    _check_key(root_key)
    if not hmac.compare_digest(header.key_id, key_id(root_key)):
        raise IntegrityError(
            "wrong key for this image (key id mismatch)",
            hint=f"the image was made for key id {header.key_id.hex()}",
        )
    k = _derive(root_key, header.salt)
    expected = hmac.digest(k.commit, header.raw[:_MAC_OFFSET], "sha256")
    if not hmac.compare_digest(expected, header.commitment):
        raise IntegrityError("image header failed authentication (tampered or wrong key)")
    if header.image_version < min_version:
        raise RollbackError(
            f"image version {header.image_version} is older than the minimum {min_version}",
            hint="an old (possibly vulnerable) image was presented; use a current one",
        )
    return k.data


def chunk_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if last else 0)
