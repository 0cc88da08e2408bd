"""Recovery image container v1 (docs/image-format.md): a streamed AEAD wrapper.

A read-only file system image is split into fixed-size chunks, each sealed with
AES-256-GCM under a per-image data key and a nonce ``prefix(7) ‖ counter(4) ‖ last(1)``
(the STREAM construction of age and Tink); the 128-byte header is the AAD of every
chunk and carries a key id and an HMAC key commitment, so a wrong key or a tampered
header is rejected before a single chunk is touched.

Nothing unauthenticated reaches a caller: ``decrypt_file`` writes into an anonymous
(O_TMPFILE) or hidden temporary file in the target's directory and links it into place
only after every chunk verified; on any failure the temporary file is dropped. Workers
(one per core) handle alternating chunks with pread → decrypt_into → pwrite; the
cipher releases the GIL, so threads scale.

Header parsing (``parse_header``) is pure; cryptography is imported inside functions.
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
import os
import secrets
import stat
import struct
import threading
from collections.abc import Callable

from recover import keys
from recover.atomicfile import AtomicFile, atomic_output
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
MAX_WORKERS = 16

INFO_DATA = b"host-recover/v1/image-data"
INFO_COMMIT = b"host-recover/v1/image-commit"
INFO_KEY_ID = b"host-recover/v1/image-key-id"

# magic, version, suite, payload, reserved, header size, chunk size, reserved,
# plaintext length, image version, salt, nonce prefix, reserved, key id
_FIXED = struct.Struct(">8sHHBBHII QQ32s7sB16s")
_MAC_OFFSET = _FIXED.size  # 96: HMAC-SHA256 commitment over bytes [0, 96)
assert _MAC_OFFSET + 32 == HEADER_SIZE

ProgressFn = Callable[[int, int], None]


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


# --- header: pure parsing ----------------------------------------------------------


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


# --- files -------------------------------------------------------------------------


def _open_read(path: str | os.PathLike[str]) -> int:
    """Open a regular file or block device for reading; anything else is a usage error."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise UsageError(f"cannot open {os.fspath(path)}: {e.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        os.close(fd)
        raise UsageError(f"{os.fspath(path)} is not a regular file or block device")
    return fd


def _refuse_same_file(fd: int, src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """The output must not be the input (through any name): it would be replaced."""
    try:
        out = os.stat(dst)
    except OSError:
        return
    st = os.fstat(fd)
    if (out.st_dev, out.st_ino) == (st.st_dev, st.st_ino):
        os.close(fd)
        raise UsageError(
            f"the output {os.fspath(dst)} is the input {os.fspath(src)}",
            hint="write to a new file; the input is never replaced",
        )


def _size(fd: int) -> int:
    return os.lseek(fd, 0, os.SEEK_END)  # regular files and block devices


def _pread_exact(fd: int, buf: memoryview, offset: int) -> None:
    got = 0
    while got < len(buf):
        try:
            n = os.preadv(fd, [buf[got:]], offset + got)
        except OSError as e:
            raise UsageError(f"read error at offset {offset}: {e.strerror}") from None
        if n <= 0:
            raise IntegrityError("image truncated while reading")
        got += n


def read_header(path: str | os.PathLike[str]) -> Header:
    fd = _open_read(path)
    try:
        return parse_header(os.pread(fd, HEADER_SIZE, 0))
    finally:
        os.close(fd)


def default_workers() -> int:
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))


def _run_chunks(
    header: Header,
    data_key: bytes,
    src_fd: int,
    out: AtomicFile | None,
    workers: int,
    progress: ProgressFn | None,
) -> None:
    """Authenticate (and, with ``out``, write) every chunk; workers take i, i+N, ...

    Every worker has stopped when this returns or raises, so the caller may close ``out``.
    """
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(data_key)
    cs, n, total = header.chunk_size, header.chunks, header.plaintext_length
    nworkers = max(1, min(workers or default_workers(), n))
    done = [0] * nworkers
    failure: list[BaseException] = []
    stop = threading.Event()

    def work(w: int) -> None:
        ct = memoryview(bytearray(cs + TAG_SIZE))
        pt = memoryview(bytearray(cs))
        try:
            for i in range(w, n, nworkers):
                if stop.is_set():
                    return
                plen = min(cs, total - i * cs)
                _pread_exact(src_fd, ct[: plen + TAG_SIZE], HEADER_SIZE + i * (cs + TAG_SIZE))
                nonce = chunk_nonce(header.nonce_prefix, i, i == n - 1)
                try:
                    aead.decrypt_into(nonce, ct[: plen + TAG_SIZE], header.raw, pt[:plen])
                except InvalidTag:
                    raise IntegrityError(
                        f"chunk {i} of {n} failed authentication",
                        hint="the image is tampered, truncated, reordered or corrupted",
                    ) from None
                if out is not None:
                    out.write_all(pt[:plen], i * cs)
                done[w] += plen
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            failure.append(e)
            stop.set()

    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(1, nworkers)]
    for t in threads:
        t.start()
    try:
        if progress is None:
            work(0)
        else:
            # The caller's thread reports progress; worker 0 runs in a thread as well.
            t0 = threading.Thread(target=work, args=(0,), daemon=True)
            t0.start()
            threads.append(t0)
            for t in threads:
                while t.is_alive():  # bounded: each worker ends after its chunks
                    t.join(0.2)
                    progress(sum(done), total)
    except BaseException:  # e.g. KeyboardInterrupt: stop the workers before fds close
        stop.set()
        raise
    finally:
        for t in threads:
            t.join()
    if progress is not None and not failure:
        progress(sum(done), total)
    if failure:
        raise failure[0]


def _open_authenticated(
    src: str | os.PathLike[str], root_key: bytes, min_version: int
) -> tuple[int, Header, bytes]:
    _check_key(root_key)
    fd = _open_read(src)
    try:
        header = parse_header(os.pread(fd, HEADER_SIZE, 0))
        data_key = authenticate(header, root_key, min_version=min_version)
        size = _size(fd)
        if size != header.container_length:
            what = "truncated" if size < header.container_length else "has trailing data"
            raise IntegrityError(
                f"image {what}: {size} bytes, the header says {header.container_length}"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd, header, data_key


def verify_file(
    src: str | os.PathLike[str],
    key: bytes,
    *,
    min_version: int = 0,
    workers: int = 0,
    progress: ProgressFn | None = None,
) -> Header:
    """Authenticate the header and every chunk; write no plaintext anywhere."""
    fd, header, data_key = _open_authenticated(src, key, min_version)
    try:
        _run_chunks(header, data_key, fd, None, workers, progress)
    finally:
        os.close(fd)
    return header


def decrypt_file(
    src: str | os.PathLike[str],
    dst_path: str | os.PathLike[str],
    key: bytes,
    *,
    min_version: int = 0,
    workers: int = 0,
    progress: ProgressFn | None = None,
    tmp_dir: str | os.PathLike[str] | None = None,
) -> Header:
    """Verify and decrypt ``src`` to ``dst_path``, which appears only if all verified.

    The plaintext goes to an unnamed temporary file (O_TMPFILE, else a hidden 0600 file)
    in ``tmp_dir`` (default: dst's directory; must be the same file system), which is
    linked into place after the last chunk verified. On failure nothing remains.
    """
    fd, header, data_key = _open_authenticated(src, key, min_version)
    _refuse_same_file(fd, src, dst_path)
    try:
        with atomic_output(dst_path, tmp_dir) as out:
            os.ftruncate(out.fd, header.plaintext_length)
            _run_chunks(header, data_key, fd, out, workers, progress)
            out.commit()
    finally:
        os.close(fd)
    return header


def _check_payload(fd: int, payload: PayloadType, path: str) -> None:
    magic = {PayloadType.SQUASHFS: (0, b"hsqs"), PayloadType.EROFS: (1024, b"\xe2\xe1\xf5\xe0")}
    if payload in magic:
        off, want = magic[payload]
        if os.pread(fd, len(want), off) != want:
            raise UsageError(
                f"{path} is not a {payload} image (no magic at offset {off})",
                hint="pass --payload-type raw for other data",
            )


def encrypt_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    key: bytes,
    *,
    image_version: int,
    payload_type: PayloadType | str = PayloadType.SQUASHFS,
    chunk_size: int = DEFAULT_CHUNK,
) -> Header:
    """Encrypt ``src`` into a container at ``dst`` (written atomically)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    _check_key(key)
    if isinstance(payload_type, str):
        payload_type = PayloadType.from_name(payload_type)
    if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise UsageError(f"chunk size must be in [{MIN_CHUNK}, {MAX_CHUNK}], got {chunk_size}")
    if not 0 <= image_version < 1 << 64:
        raise UsageError(f"image version must be in [0, 2^64), got {image_version}")
    fd = _open_read(src)
    _refuse_same_file(fd, src, dst)
    try:
        length = _size(fd)
        _check_payload(fd, payload_type, os.fspath(src))
        if length > chunk_size * MAX_CHUNKS:
            raise UsageError("input too large for this chunk size")
        header, k = _build_header(key, payload_type, chunk_size, length, image_version)
        aead = AESGCM(k.data)
        pt = memoryview(bytearray(chunk_size))
        ct = memoryview(bytearray(chunk_size + TAG_SIZE))
        with atomic_output(dst) as out:
            out.write_all(header.raw, 0)
            for i in range(header.chunks):
                plen = min(chunk_size, length - i * chunk_size)
                _pread_exact(fd, pt[:plen], i * chunk_size)
                nonce = chunk_nonce(header.nonce_prefix, i, i == header.chunks - 1)
                aead.encrypt_into(nonce, pt[:plen], header.raw, ct[: plen + TAG_SIZE])
                out.write_all(ct[: plen + TAG_SIZE], HEADER_SIZE + i * (chunk_size + TAG_SIZE))
            out.commit()
    finally:
        os.close(fd)
    return header
