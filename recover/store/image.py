"""Recovery image files: encrypt, verify and decrypt containers v1 and v2
(recover.core.imageformat).

Version 2 (the default) is made here and checked offline here, in Python, on any host:
``verify_file`` recomputes the whole dm-verity tree; the boot maps it through the kernel
instead (recover.boot.dmimage). Nothing unauthenticated reaches a caller: ``decrypt_file`` writes into an anonymous
(O_TMPFILE) or hidden temporary file in the target's directory and links it into place
only after every chunk verified; on any failure the temporary file is dropped. Workers
(one per core) handle alternating chunks with pread → decrypt_into → pwrite; the
cipher releases the GIL, so threads scale.
"""

from __future__ import annotations

import functools
import hmac
import os
import threading
from collections.abc import Callable
from typing import Any

from recover.atomicfile import AtomicFile, atomic_output
from recover.core import verity
from recover.core.imageformat import (
    DEFAULT_CHUNK,
    DEFAULT_FORMAT,
    FORMAT_V2,
    FORMATS,
    HEADER_SIZE,
    MAX_CHUNK,
    MAX_CHUNKS,
    MIN_CHUNK,
    TAG_SIZE,
    V2_BLOCK,
    V2_HEADER_SIZE,
    AnyHeader,
    Header,
    HeaderV2,
    PayloadType,
    _build_header,
    _check_key,
    authenticate,
    build_header_v2,
    chunk_nonce,
    new_v2_keys,
    parse_header,
    v2_data_blocks,
    xts_tweak,
)
from recover.errors import IntegrityError, SystemFault, UsageError
from recover.store.safefile import open_read

ProgressFn = Callable[[int, int], None]


MAX_WORKERS = 16


def _open_read(path: str | os.PathLike[str]) -> int:
    """Open a regular file or block device for reading (never a FIFO or a device node
    of another kind); anything else is a usage error."""
    return open_read(path, block=True)


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
            raise SystemFault(f"read error at offset {offset}: {e.strerror}") from None
        if n <= 0:
            raise IntegrityError("image truncated while reading")
        got += n


def read_header(path: str | os.PathLike[str]) -> AnyHeader:
    fd = _open_read(path)
    try:
        return parse_header(os.pread(fd, V2_HEADER_SIZE, 0))
    finally:
        os.close(fd)


def default_workers() -> int:
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))


def _open_chunk(aead: Any, header: Header, fd: int, i: int, ct: memoryview, pt: memoryview) -> int:
    """Read, authenticate and decrypt v1 chunk ``i`` into ``pt``; its plaintext length.
    ``ct`` and ``pt`` hold a whole chunk (with and without its tag)."""
    from cryptography.exceptions import InvalidTag

    cs, n = header.chunk_size, header.chunks
    plen = min(cs, header.plaintext_length - i * cs)
    _pread_exact(fd, ct[: plen + TAG_SIZE], HEADER_SIZE + i * (cs + TAG_SIZE))
    nonce = chunk_nonce(header.nonce_prefix, i, i == n - 1)
    try:
        aead.decrypt_into(nonce, ct[: plen + TAG_SIZE], header.raw, pt[:plen])
    except InvalidTag:
        raise IntegrityError(
            f"chunk {i} of {n} failed authentication",
            hint="the image is tampered, truncated, reordered or corrupted",
        ) from None
    return plen


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
                plen = _open_chunk(aead, header, src_fd, i, ct, pt)
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
) -> tuple[int, AnyHeader, bytes]:
    _check_key(root_key)
    fd = _open_read(src)
    try:
        header = parse_header(os.pread(fd, V2_HEADER_SIZE, 0))
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


def open_v2(
    src: str | os.PathLike[str], key: bytes, *, min_version: int = 0
) -> tuple[HeaderV2, bytes]:
    """What the boot checks of a v2 image before mapping it: key id, header MAC,
    anti-rollback and the exact file size; returns (header, AES-XTS key). The blocks
    are checked by the kernel (dm-verity) as they are read."""
    fd, header, data_key = _open_authenticated(src, key, min_version)
    os.close(fd)
    if not isinstance(header, HeaderV2):
        raise IntegrityError(f"{os.fspath(src)} is a format {header.version} image, not 2")
    return header, data_key


def verify_file(
    src: str | os.PathLike[str],
    key: bytes,
    *,
    min_version: int = 0,
    workers: int = 0,
    progress: ProgressFn | None = None,
) -> AnyHeader:
    """Authenticate the header and every chunk (v2: recompute the whole verity tree);
    write no plaintext anywhere."""
    fd, header, data_key = _open_authenticated(src, key, min_version)
    try:
        if isinstance(header, HeaderV2):
            _scan_v2(header, fd, None, None, progress)
        else:
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
) -> AnyHeader:
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
            if isinstance(header, HeaderV2):
                _scan_v2(header, fd, data_key, out, progress)
            else:
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
    format_version: int = DEFAULT_FORMAT,
) -> AnyHeader:
    """Encrypt ``src`` into a container at ``dst`` (written atomically): format v2 (the
    default; ``chunk_size`` is unused) or v1."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    _check_key(key)
    if isinstance(payload_type, str):
        payload_type = PayloadType.from_name(payload_type)
    if format_version not in FORMATS:
        raise UsageError(
            f"unknown image format version {format_version}",
            hint=f"one of {', '.join(map(str, FORMATS))}",
        )
    if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise UsageError(f"chunk size must be in [{MIN_CHUNK}, {MAX_CHUNK}], got {chunk_size}")
    if not 0 <= image_version < 1 << 64:
        raise UsageError(f"image version must be in [0, 2^64), got {image_version}")
    fd = _open_read(src)
    _refuse_same_file(fd, src, dst)
    try:
        length = _size(fd)
        _check_payload(fd, payload_type, os.fspath(src))
        if format_version == FORMAT_V2:
            read = functools.partial(_pread_exact, fd)
            return _encrypt_v2(read, dst, key, length, payload_type, image_version)
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


def convert_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    key: bytes,
    *,
    min_version: int = 0,
) -> HeaderV2:
    """A v1 image re-encrypted as v2 with the same key, image version and payload type.
    The plaintext exists only in memory, one chunk at a time, each authenticated before
    it is encrypted again; ``dst`` appears only when every chunk of ``src`` verified."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    fd, header, data_key = _open_authenticated(src, key, min_version)
    _refuse_same_file(fd, src, dst)  # closes fd when it refuses
    try:
        if isinstance(header, HeaderV2):
            raise UsageError(
                f"{os.fspath(src)} is a format 2 image already: nothing to convert",
                hint="`host-recover image verify` checks it",
            )
        aead, cs = AESGCM(data_key), header.chunk_size
        ct, pt = memoryview(bytearray(cs + TAG_SIZE)), memoryview(bytearray(cs))
        chunk, chunk_len = -1, 0  # the chunk in pt, its plaintext length
        if header.plaintext_length == 0:  # nothing to read: its one (empty) chunk still
            _open_chunk(aead, header, fd, 0, ct, pt)

        def read(buf: memoryview, offset: int) -> None:  # in order: each chunk opened once
            nonlocal chunk, chunk_len
            pos = 0
            while pos < len(buf):
                i, within = divmod(offset + pos, cs)
                if chunk != i:
                    chunk, chunk_len = i, _open_chunk(aead, header, fd, i, ct, pt)
                n = min(len(buf) - pos, chunk_len - within)
                buf[pos : pos + n] = pt[within : within + n]
                pos += n

        return _encrypt_v2(
            read, dst, key, header.plaintext_length, header.payload_type, header.image_version
        )
    finally:
        os.close(fd)


# --- container v2 -------------------------------------------------------------------

#: Data blocks per read in the v2 passes (1 MiB).
_BATCH = 256


def _xts(key: bytes) -> Callable[[int, bool], Any]:
    """A factory of per-sector AES-XTS contexts (tweak = the 4 KiB sector number)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    alg = algorithms.AES(key)

    def ctx(sector: int, encrypt: bool) -> Any:
        c = Cipher(alg, modes.XTS(xts_tweak(sector)))
        return c.encryptor() if encrypt else c.decryptor()

    return ctx


def _encrypt_v2(
    read: Callable[[memoryview, int], None],
    dst: str | os.PathLike[str],
    key: bytes,
    length: int,
    payload: PayloadType,
    image_version: int,
) -> HeaderV2:
    """Header block ‖ AES-XTS ciphertext (the plaintext, ``read(buf, offset)`` in order,
    zero-padded to 4 KiB blocks) ‖ the dm-verity tree over the ciphertext; the header,
    which needs the root hash, is written last, and the file appears only complete
    (atomic_output)."""
    salt, verity_salt, xts_key = new_v2_keys(key)
    blocks = v2_data_blocks(length)
    hasher = verity.Hasher(verity_salt, V2_BLOCK)
    ctx = _xts(xts_key)
    level0: list[bytes] = []
    buf = memoryview(bytearray(_BATCH * V2_BLOCK))
    with atomic_output(dst) as out:
        for first in range(0, blocks, _BATCH):
            n = min(_BATCH, blocks - first)
            want = max(0, min(n * V2_BLOCK, length - first * V2_BLOCK))
            buf[want : n * V2_BLOCK] = bytes(n * V2_BLOCK - want)  # zero padding
            read(buf[:want], first * V2_BLOCK)
            ct = bytearray()
            for j in range(n):
                c = ctx(first + j, True).update(buf[j * V2_BLOCK : (j + 1) * V2_BLOCK])
                level0.append(hasher.digest(c))
                ct += c
            out.write_all(memoryview(ct), V2_HEADER_SIZE + first * V2_BLOCK)
        area, root = verity.build_tree(hasher, verity.geometry(blocks, V2_BLOCK), level0)
        header = build_header_v2(
            key, payload=payload, length=length, image_version=image_version, salt=salt,
            verity_salt=verity_salt, root_hash=root,
        )  # fmt: skip
        out.write_all(area, header.hash_offset)
        out.write_all(header.raw, 0)
        out.commit()
    return header


def _scan_v2(
    header: HeaderV2,
    fd: int,
    xts_key: bytes | None,
    out: AtomicFile | None,
    progress: ProgressFn | None,
) -> None:
    """Recompute the dm-verity tree over the ciphertext and compare it with the stored
    tree and the authenticated root hash (with ``out``: decrypt into it on the way; the
    caller commits only if this returns)."""
    blocks = header.data_blocks
    hasher = verity.Hasher(header.verity_salt, header.hash_block_size)
    ctx = _xts(xts_key) if xts_key is not None else None
    level0: list[bytes] = []
    buf = memoryview(bytearray(_BATCH * V2_BLOCK))
    for first in range(0, blocks, _BATCH):
        n = min(_BATCH, blocks - first)
        _pread_exact(fd, buf[: n * V2_BLOCK], header.data_offset + first * V2_BLOCK)
        pt = bytearray()
        for j in range(n):
            block = buf[j * V2_BLOCK : (j + 1) * V2_BLOCK]
            level0.append(hasher.digest(block))
            if ctx is not None:
                pt += ctx(first + j, False).update(block)
        if out is not None:
            keep = max(0, min(n * V2_BLOCK, header.plaintext_length - first * V2_BLOCK))
            out.write_all(memoryview(pt)[:keep], first * V2_BLOCK)
        if progress is not None:
            progress(min(header.plaintext_length, (first + n) * V2_BLOCK), header.plaintext_length)
    area, root = verity.build_tree(hasher, header.geometry, level0)
    stored = memoryview(bytearray(len(area)))
    _pread_exact(fd, stored, header.hash_offset)
    if stored != area:
        raise IntegrityError(
            _first_difference(header, stored, area, level0),
            hint="the image is tampered or corrupted (data or hash area)",
        )
    if not hmac.compare_digest(root, header.root_hash):
        raise IntegrityError(
            "the data area does not match the authenticated root hash",
            hint="the image is tampered or corrupted",
        )


def _first_difference(
    header: HeaderV2, stored: memoryview, area: bytes, level0: list[bytes]
) -> str:
    """Name what differs, from the data blocks up: a data block whose stored digest is
    not its own, else the lowest tree level that is not what the level below gives."""
    bs, size = header.hash_block_size, verity.DIGEST_SIZE
    for level, (start, count) in enumerate(header.geometry.levels):
        lo, hi = start * bs, (start + count) * bs
        if stored[lo:hi] == area[lo:hi]:
            continue
        if level == 0:
            per = verity.per_block(bs)
            for i, digest in enumerate(level0):
                at = lo + (i // per) * bs + (i % per) * size
                if stored[at : at + size] != digest:
                    return f"data block {i} (offset {header.data_offset + i * bs}) does not match the hash tree"
        return f"hash tree level {level} differs from the recomputed tree"
    return "the hash tree differs from the recomputed tree"
