"""The credential store v1 (docs/credentials.md): name → bytes, sealed under the master.

One file, AES-256-GCM under ``keys.credentials_key(master)`` with the 32-byte header as
AAD, rewritten atomically with mode 0600. At boot ``write_to_dir`` hands the credentials
to the recovery root as one 0400 file each in a tmpfs directory, the way systemd passes
credentials (``$CREDENTIALS_DIRECTORY``, LoadCredential=).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import secrets
import struct
import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from recover import keys
from recover.atomicfile import atomic_output
from recover.errors import IntegrityError, UsageError

MAGIC = b"\x89HRCRED\n"
FORMAT_VERSION = 1
SUITE_AES256GCM = 1
NONCE_SIZE = 12
TAG_SIZE = 16
_HEADER = struct.Struct(">8sHHI Q12s4x")  # magic, version, suite, reserved, generation, nonce
HEADER_SIZE = _HEADER.size  # 40
MAX_NAME = 255
MAX_VALUE = 1 << 20  # systemd's CREDENTIAL_SIZE_MAX
MAX_ENTRIES = 4096
MAX_STORE = 64 << 20

TMPFS_MAGIC = 0x01021994
RAMFS_MAGIC = 0x858458F6

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+:-]*")


@dataclasses.dataclass(frozen=True)
class Store:
    """An immutable credential set; ``generation`` counts saves."""

    entries: Mapping[str, bytes] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    generation: int = 0


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


# --- format: pure --------------------------------------------------------------------


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


# --- files ---------------------------------------------------------------------------


def load(path: str | os.PathLike[str], master: bytes) -> Store:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_STORE + 1)
    except FileNotFoundError:
        raise UsageError(
            f"no credential store at {os.fspath(path)}",
            hint="create it with `host-recover credential add NAME FILE`",
        ) from None
    except OSError as e:
        raise UsageError(f"cannot read {os.fspath(path)}: {e.strerror}") from None
    if len(data) > MAX_STORE:
        raise IntegrityError(f"credential store {os.fspath(path)} is too large")
    return unseal(data, master)


def save(path: str | os.PathLike[str], store: Store, master: bytes) -> Store:
    """Write ``store`` with the next generation atomically (0600); return what was saved."""
    saved = Store(store.entries, store.generation + 1)
    data = seal(saved, master)
    with atomic_output(path) as out:
        out.write_all(data, 0)
        out.commit()
    return saved


def fs_type(fd: int) -> int:
    """statfs(2) f_type of the file system holding ``fd`` (Linux; f_type is the 1st word)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if libc.fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ctypes.c_long.from_buffer(buf).value) & 0xFFFFFFFF


def fs_type_name_from_mountinfo(fd: int, mountinfo: str = "/proc/self/mountinfo") -> str:
    """The file system type of ``fd``'s mount by its device number (no ctypes needed)."""
    st = os.fstat(fd)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    with open(mountinfo, encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[2] == dev and " - " in line:
                return line.split(" - ", 1)[1].split()[0]
    return ""


def on_memory_fs(fd: int) -> bool:
    """True if ``fd`` is on tmpfs or ramfs: statfs f_type, else /proc/self/mountinfo."""
    try:
        return fs_type(fd) in (TMPFS_MAGIC, RAMFS_MAGIC)
    except (ImportError, OSError, AttributeError):
        return fs_type_name_from_mountinfo(fd) in ("tmpfs", "ramfs")


def write_to_dir(
    store: Store, directory: str | os.PathLike[str], *, allow_non_tmpfs: bool = False
) -> list[str]:
    """Write each credential as a 0400 file into ``directory`` (tmpfs/ramfs only).

    The directory is created 0700 if missing and left 0500, like systemd's credential
    directories. Returns the names written.
    """
    directory = os.fspath(directory)
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise UsageError(f"cannot open credential directory {directory}: {e.strerror}") from None
    try:
        if not allow_non_tmpfs and not on_memory_fs(dfd):
            raise UsageError(
                f"{directory} is not on tmpfs or ramfs: refusing to write credentials to disk",
                hint="mount a tmpfs there first",
            )
        os.fchmod(dfd, 0o700)
        for name in list_names(store):
            tmp = f".{name}.{secrets.token_hex(4)}"
            fd = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o400,
                dir_fd=dfd,
            )
            try:
                os.write(fd, store.entries[name])
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        os.fchmod(dfd, 0o500)
    finally:
        os.close(dfd)
    return list_names(store)


# --- CLI -----------------------------------------------------------------------------


def _master(args: argparse.Namespace, cfg: Any) -> bytes:
    from recover.imagecli import read_key_file, tpm_master

    return read_key_file(args.key_file, "master secret") if args.key_file else tpm_master(cfg)


def cmd_add(args: argparse.Namespace, cfg: Any) -> int:
    validate_name(args.name)
    master = _master(args, cfg)
    path = cfg.store_credentials
    if os.path.islink(path) and not os.path.exists(path):
        raise UsageError(
            f"{path} is a symbolic link to a missing file", hint="fix or remove the link"
        )
    store = load(path, master) if os.path.lexists(path) else Store()
    if args.file == "-":
        value = sys.stdin.buffer.read(MAX_VALUE + 1)
    else:
        try:
            with open(args.file, "rb") as f:
                value = f.read(MAX_VALUE + 1)
        except OSError as e:
            raise UsageError(f"cannot read {args.file}: {e.strerror}") from None
    saved = save(path, add(store, args.name, value), master)
    print(f"{args.name}: {len(value)} bytes stored ({len(saved.entries)} credentials)")
    return 0


def cmd_list(args: argparse.Namespace, cfg: Any) -> int:
    store = load(cfg.store_credentials, _master(args, cfg))
    if args.json:
        items = [{"name": n, "size": len(store.entries[n])} for n in list_names(store)]
        print(json.dumps({"generation": store.generation, "credentials": items}, indent=2))
    else:
        for name in list_names(store):
            print(name)
    return 0


def cmd_remove(args: argparse.Namespace, cfg: Any) -> int:
    master = _master(args, cfg)
    path = cfg.store_credentials
    save(path, remove(load(path, master), args.name), master)
    print(f"{args.name}: removed")
    return 0
