"""Recovery image containers (docs/image-format.md): headers, key schedule, nonces. Pure.

Version 1: a read-only file system image is split into fixed-size chunks, each sealed
with AES-256-GCM under a per-image data key and a nonce ``prefix(7) ‖ counter(4) ‖
last(1)`` (the STREAM construction of age and Tink); the 128-byte header is the AAD of
every chunk and carries a key id and an HMAC key commitment, so a wrong key or a
tampered header is rejected before a single chunk is touched.

Version 2: the image encrypted with AES-256-XTS (dm-crypt's ``aes-xts-plain64``, 4 KiB
sectors) and a dm-verity tree over that ciphertext, so the kernel decrypts and checks
on demand (recover.boot.dmimage); the 4 KiB header carries the tree's root hash, salt
and geometry under the same key id and HMAC commitment. File I/O: recover.store.image.
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
import secrets
import struct

from recover.core import keys, verity
from recover.errors import IntegrityError, RollbackError, UsageError

MAGIC = b"\x89HRIMG\r\n"


FORMAT_VERSION = 1


FORMAT_V2 = 2


#: The container version ``image create`` writes.
DEFAULT_FORMAT = FORMAT_V2


FORMATS = (FORMAT_VERSION, FORMAT_V2)


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
    AES256XTS_VERITY_SHA256 = 2


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
    """The two keys derived from an image root key: data encryption and commitment."""

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


def parse_header(data: bytes) -> AnyHeader:
    """Parse and strictly validate a header (v1 or v2); raises only IntegrityError."""
    if len(data) < HEADER_SIZE:
        raise IntegrityError(
            f"image too short for a header ({len(data)} < {HEADER_SIZE} bytes)",
            hint="truncated or not a recovery image",
        )
    magic, version = struct.unpack_from(">8sH", data)
    if magic != MAGIC:
        raise IntegrityError(
            "not a host-recover image (bad magic)",
            hint="pass a file written by `host-recover image create`",
        )
    if version == FORMAT_V2:
        return parse_header_v2(data)
    if version != FORMAT_VERSION:
        raise IntegrityError(
            f"unsupported image format version {version}",
            hint=f"this host-recover reads versions {', '.join(map(str, FORMATS))}",
        )
    raw = bytes(data[:HEADER_SIZE])
    (magic, version, suite, payload, res1, hsize, chunk, res2, length, image_version, salt,
     prefix, res3, kid) = _FIXED.unpack_from(raw)  # fmt: skip
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
    header = parse_header(body + hmac.digest(k.commit, body, "sha256"))
    assert isinstance(header, Header)
    return header, k


def authenticate(header: AnyHeader, root_key: bytes, *, min_version: int = 0) -> bytes:
    """Check key id, key commitment and anti-rollback; return the data key (v1: the
    AES-GCM key; v2: the 64-byte AES-XTS key)."""
    _check_key(root_key)
    if not hmac.compare_digest(header.key_id, key_id(root_key)):
        raise IntegrityError(
            "wrong key for this image (key id mismatch)",
            hint=f"the image was made for key id {header.key_id.hex()}",
        )
    if isinstance(header, HeaderV2):
        data_key, commit_key = _derive_v2(root_key, header.salt)
        mac_end = _V2_MAC_OFFSET
    else:
        k = _derive(root_key, header.salt)
        data_key, commit_key, mac_end = k.data, k.commit, _MAC_OFFSET
    expected = hmac.digest(commit_key, header.raw[:mac_end], "sha256")
    if not hmac.compare_digest(expected, header.commitment):
        raise IntegrityError("image header failed authentication (tampered or wrong key)")
    if header.image_version < min_version:
        raise RollbackError(
            f"image version {header.image_version} is older than the minimum {min_version}",
            hint="an old (possibly vulnerable) image was presented; use a current one",
        )
    return data_key


def chunk_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if last else 0)


# --- container v2: dm-crypt over dm-verity over the ciphertext -----------------------

V2_HEADER_SIZE = 4096


#: dm-verity data and hash block size, and the dm-crypt sector size (one page).
V2_BLOCK = 4096


XTS_KEY_SIZE = 64


INFO_XTS = b"host-recover/v2/image-xts"


INFO_COMMIT_V2 = b"host-recover/v2/image-commit"


_V2 = struct.Struct(">8sHHBBHIIQQ32s32s32sQQQ16s")


_V2_MAC_OFFSET = _V2.size  # 176: HMAC-SHA256 commitment over bytes [0, 176)


_V2_END = _V2_MAC_OFFSET + 32


@dataclasses.dataclass(frozen=True)
class HeaderV2:
    """A parsed (not yet authenticated) v2 header: a dm-verity tree over the AES-XTS
    ciphertext; the data area starts at ``data_offset``, the tree at ``hash_offset``."""

    version: int
    suite: Suite
    payload_type: PayloadType
    data_block_size: int
    hash_block_size: int
    plaintext_length: int
    image_version: int
    salt: bytes  # HKDF salt of the per-image keys
    verity_salt: bytes
    root_hash: bytes
    data_blocks: int
    hash_offset: int
    hash_blocks: int
    key_id: bytes
    commitment: bytes
    raw: bytes  # the whole 4096-byte header block

    data_offset = V2_HEADER_SIZE

    @property
    def container_length(self) -> int:
        return self.hash_offset + self.hash_blocks * self.hash_block_size

    @property
    def data_size(self) -> int:
        return self.data_blocks * self.data_block_size

    @property
    def geometry(self) -> verity.Geometry:
        return verity.geometry(self.data_blocks, self.hash_block_size)

    def as_dict(self) -> dict[str, object]:
        return {
            "format_version": self.version,
            "suite": self.suite.name.lower(),
            "payload_type": str(self.payload_type),
            "plaintext_length": self.plaintext_length,
            "image_version": self.image_version,
            "key_id": self.key_id.hex(),
            "salt": self.salt.hex(),
            "data_block_size": self.data_block_size,
            "hash_block_size": self.hash_block_size,
            "data_offset": self.data_offset,
            "data_blocks": self.data_blocks,
            "hash_offset": self.hash_offset,
            "hash_blocks": self.hash_blocks,
            "hash_algorithm": verity.DIGEST,
            "verity_salt": self.verity_salt.hex(),
            "root_hash": self.root_hash.hex(),
        }


AnyHeader = Header | HeaderV2


def _derive_v2(root_key: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """(AES-256-XTS key of dm-crypt, commit key): per image (the salt is random)."""
    return (
        keys.hkdf(root_key, INFO_XTS, salt=salt, length=XTS_KEY_SIZE),
        keys.hkdf(root_key, INFO_COMMIT_V2, salt=salt),
    )


def v2_data_blocks(plaintext_length: int) -> int:
    return max(1, -(-plaintext_length // V2_BLOCK))


def parse_header_v2(data: bytes) -> HeaderV2:
    if len(data) < V2_HEADER_SIZE:
        raise IntegrityError(
            f"image too short for a v2 header ({len(data)} < {V2_HEADER_SIZE} bytes)",
            hint="truncated or not a recovery image",
        )
    raw = bytes(data[:V2_HEADER_SIZE])
    (_, version, suite, payload, res1, hsize, dbs, hbs, length, image_version, salt, vsalt,
     root, dblocks, hoff, hblocks, kid) = _V2.unpack_from(raw)  # fmt: skip
    if suite != Suite.AES256XTS_VERITY_SHA256:
        raise IntegrityError(f"unsupported cipher suite {suite} for format version 2")
    if payload not in _PAYLOAD_BY_CODE:
        raise IntegrityError(f"unknown payload type {payload}")
    if res1 or any(raw[_V2_END:]):
        raise IntegrityError("reserved header fields are not zero")
    if hsize != V2_HEADER_SIZE:
        raise IntegrityError(f"bad header size {hsize}")
    if dbs != V2_BLOCK or hbs != V2_BLOCK:
        raise IntegrityError(f"unsupported verity block sizes {dbs}/{hbs} (want {V2_BLOCK})")
    if length >= 1 << 62 or dblocks != v2_data_blocks(length):
        raise IntegrityError(f"{dblocks} data blocks do not hold {length} bytes")
    if hoff != V2_HEADER_SIZE + dblocks * dbs:
        raise IntegrityError(f"hash offset {hoff} is not right after the data area")
    if hblocks != verity.geometry(dblocks, hbs).hash_blocks:
        raise IntegrityError(f"{hblocks} hash blocks do not fit {dblocks} data blocks")
    return HeaderV2(
        version=version,
        suite=Suite(suite),
        payload_type=_PAYLOAD_BY_CODE[payload],
        data_block_size=dbs,
        hash_block_size=hbs,
        plaintext_length=length,
        image_version=image_version,
        salt=salt,
        verity_salt=vsalt,
        root_hash=root,
        data_blocks=dblocks,
        hash_offset=hoff,
        hash_blocks=hblocks,
        key_id=kid,
        commitment=raw[_V2_MAC_OFFSET:_V2_END],
        raw=raw,
    )


def new_v2_keys(root_key: bytes) -> tuple[bytes, bytes, bytes]:
    """(HKDF salt, verity salt, XTS key) of a new image."""
    _check_key(root_key)
    salt = secrets.token_bytes(SALT_SIZE)
    return salt, secrets.token_bytes(SALT_SIZE), _derive_v2(root_key, salt)[0]


def build_header_v2(
    root_key: bytes,
    *,
    payload: PayloadType,
    length: int,
    image_version: int,
    salt: bytes,
    verity_salt: bytes,
    root_hash: bytes,
) -> HeaderV2:
    """The authenticated header of a v2 image whose tree has ``root_hash``."""
    dblocks = v2_data_blocks(length)
    body = _V2.pack(
        MAGIC, FORMAT_V2, Suite.AES256XTS_VERITY_SHA256, payload.code, 0, V2_HEADER_SIZE,
        V2_BLOCK, V2_BLOCK, length, image_version, salt, verity_salt, root_hash, dblocks,
        V2_HEADER_SIZE + dblocks * V2_BLOCK, verity.geometry(dblocks, V2_BLOCK).hash_blocks,
        key_id(root_key),
    )  # fmt: skip
    mac = hmac.digest(_derive_v2(root_key, salt)[1], body, "sha256")
    return parse_header_v2((body + mac).ljust(V2_HEADER_SIZE, b"\0"))


def xts_tweak(sector: int) -> bytes:
    """dm-crypt's plain64 IV with ``iv_large_sectors``: the 4 KiB sector number, 64-bit
    little-endian, zero-padded to the 16-byte XTS tweak."""
    return sector.to_bytes(16, "little")


# dm tables (docs/image-format.md#the-kernel-path). Sizes are in 512-byte sectors.


def verity_table(header: HeaderV2, device: str) -> str:
    """dm-verity over the data and hash areas of ``device`` (the container from its data
    offset on). No corruption mode argument: a bad block is an I/O error (EIO)."""
    bs = header.data_block_size
    return (
        f"0 {header.data_size // 512} verity 1 {device} {device} {bs} {header.hash_block_size} "
        f"{header.data_blocks} {header.data_blocks} {verity.DIGEST} {header.root_hash.hex()} "
        f"{header.verity_salt.hex()}"
    )


def crypt_table(header: HeaderV2, device: str, key: str) -> str:
    """dm-crypt AES-256-XTS with 4 KiB sectors over ``device`` (the verity target).
    ``key``: ``:64:logon:DESCRIPTION`` (a kernel keyring key) or the key in hex."""
    return (
        f"0 {header.data_size // 512} crypt aes-xts-plain64 {key} 0 {device} 0 "
        f"2 sector_size:{header.data_block_size} iv_large_sectors"
    )
