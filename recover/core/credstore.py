"""The credential store v1 (docs/credentials.md): name → bytes, sealed under the master.

AES-256-GCM under ``keys.credentials_key(master)`` with the 40-byte header as AAD. File
I/O and the hand-over to the recovery root: recover.store.credentials.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import struct
from collections.abc import Mapping
from types import MappingProxyType

from recover.core import keys
from recover.errors import IntegrityError, UsageError

MAGIC = b"\x89HRCRED\n"


FORMAT_VERSION = 1


NONCE_SIZE = 12


SUITE_AES256GCM = 1


TAG_SIZE = 16


_HEADER = struct.Struct(">8sHHI Q12s4x")  # magic, version, suite, reserved, generation, nonce


HEADER_SIZE = _HEADER.size  # 40


MAX_NAME = 255


MAX_VALUE = 1 << 20  # systemd's CREDENTIAL_SIZE_MAX


MAX_ENTRIES = 4096


MAX_STORE = 64 << 20


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+:-]*")


@dataclasses.dataclass(frozen=True)
class Store:
    """An immutable credential set; ``generation`` counts saves."""

    entries: Mapping[str, bytes] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    generation: int = 0


def next_generation(store: Store, floor: int | None) -> int:
    """The generation a save writes: above the store's, and never below the TPM floor
    (which may start above it: a new TPM counter starts at the highest value any counter
    of the TPM ever had)."""
    return max(store.generation + 1, floor or 0)


def require_generation(store: Store, floor: int | None, path: str) -> None:
    """Anti-rollback: a store older than the TPM's floor (``tpm.credentials_nv``) is an
    authentic but superseded copy put back on the disk."""
    if floor is not None and store.generation < floor:
        raise IntegrityError(
            f"credential store {path} is generation {store.generation}, below the TPM's "
            f"floor {floor}: rolled back to an older copy",
            hint="write the current credentials again (`host-recover credential add`) "
            "from the normal OS or restore the newest store",
        )


def validate_name(name: str) -> str:
    """A credential name is a safe file name: no '/', no leading '.', no NUL, <= 255."""
    if not (
        0 < len(name.encode()) <= MAX_NAME and _NAME.fullmatch(name) and name not in (".", "..")
    ):
        raise UsageError(
            f"invalid credential name {name[:64]!r}{'...' if len(name) > 64 else ''}",
            hint="use letters, digits and _.@+:- (not starting with '.' or '-'), "
            f"at most {MAX_NAME} bytes",
        )
    return name


def add(store: Store, name: str, value: bytes) -> Store:
    validate_name(name)
    if len(value) > MAX_VALUE:
        raise UsageError(f"credential {name!r} is larger than {MAX_VALUE} bytes")
    entries = dict(store.entries)
    entries[name] = bytes(value)
    if len(entries) > MAX_ENTRIES:
        raise UsageError(f"the store holds at most {MAX_ENTRIES} credentials")
    return Store(MappingProxyType(entries), store.generation)


def remove(store: Store, name: str) -> Store:
    if name not in store.entries:
        raise UsageError(f"no credential named {name!r}", hint="see `credential list`")
    entries = {k: v for k, v in store.entries.items() if k != name}
    return Store(MappingProxyType(entries), store.generation)


def list_names(store: Store) -> list[str]:
    return sorted(store.entries)


def encode_entries(entries: Mapping[str, bytes]) -> bytes:
    parts = [struct.pack(">I", len(entries))]
    for name in sorted(entries):
        raw = name.encode()
        parts += [struct.pack(">B", len(raw)), raw, struct.pack(">I", len(entries[name]))]
        parts.append(entries[name])
    return b"".join(parts)


def decode_entries(data: bytes) -> dict[str, bytes]:
    """Strict inverse of ``encode_entries`` (names sorted, unique, valid; no trailing data)."""

    def bad(why: str) -> IntegrityError:
        return IntegrityError(f"credential store is malformed: {why}")

    if len(data) < 4:
        raise bad("too short")
    (count,) = struct.unpack_from(">I", data)
    if count > MAX_ENTRIES:
        raise bad("too many entries")
    pos, entries, prev = 4, {}, ""
    for _ in range(count):
        if pos + 1 > len(data):
            raise bad("truncated")
        nlen = data[pos]
        if pos + 1 + nlen + 4 > len(data):
            raise bad("truncated")
        try:
            name = data[pos + 1 : pos + 1 + nlen].decode()
            validate_name(name)
        except (UnicodeDecodeError, UsageError):
            raise bad("invalid name") from None
        if name <= prev:
            raise bad("names not sorted and unique")
        (vlen,) = struct.unpack_from(">I", data, pos + 1 + nlen)
        pos += 1 + nlen + 4
        if vlen > MAX_VALUE or pos + vlen > len(data):
            raise bad("bad value length")
        entries[name] = bytes(data[pos : pos + vlen])
        pos, prev = pos + vlen, name
    if pos != len(data):
        raise bad("trailing data")
    return entries


def seal(store: Store, master: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = secrets.token_bytes(NONCE_SIZE)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, SUITE_AES256GCM, 0, store.generation, nonce)
    body = AESGCM(keys.credentials_key(master)).encrypt(
        nonce, encode_entries(store.entries), header
    )
    return header + body


def unseal(data: bytes, master: bytes) -> Store:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if len(data) < HEADER_SIZE + TAG_SIZE:
        raise IntegrityError("credential store is truncated")
    magic, version, suite, reserved, generation, nonce = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise IntegrityError("not a host-recover credential store (bad magic)")
    if version != FORMAT_VERSION or suite != SUITE_AES256GCM or reserved:
        raise IntegrityError(f"unsupported credential store version {version}/suite {suite}")
    if data[HEADER_SIZE - 4 : HEADER_SIZE] != b"\0\0\0\0":
        raise IntegrityError("credential store header padding is not zero")
    try:
        plain = AESGCM(keys.credentials_key(master)).decrypt(
            nonce, data[HEADER_SIZE:], data[:HEADER_SIZE]
        )
    except InvalidTag:
        raise IntegrityError(
            "credential store failed authentication (tampered or wrong master secret)",
            hint="--key-file takes the master secret from `provision --export-master`, not "
            "the image key; after `provision --force` re-create the store under the new master",
        ) from None
    return Store(MappingProxyType(decode_entries(plain)), generation)
