"""Recovery image files: encrypt, verify and decrypt container v1 (recover.core.imageformat).

Nothing unauthenticated reaches a caller: ``decrypt_file`` writes into an anonymous
(O_TMPFILE) or hidden temporary file in the target's directory and links it into place
only after every chunk verified; on any failure the temporary file is dropped. Workers
(one per core) handle alternating chunks with pread → decrypt_into → pwrite; the
cipher releases the GIL, so threads scale.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from recover.atomicfile import AtomicFile, atomic_output
from recover.core.imageformat import (
    DEFAULT_CHUNK,
    HEADER_SIZE,
    MAX_CHUNK,
    MAX_CHUNKS,
    MIN_CHUNK,
    TAG_SIZE,
    Header,
    PayloadType,
    _build_header,
    _check_key,
    authenticate,
    chunk_nonce,
    parse_header,
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
