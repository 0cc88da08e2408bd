"""Files that appear complete or not at all: write, then ``commit`` renames into place.

The data goes to an unnamed file (O_TMPFILE) in the target's directory, or, where that
is unsupported or /proc is missing, to a hidden ``.NAME.RANDOM`` file created 0600 with
O_EXCL. ``commit`` fsyncs, names the file, renames it over the target and fsyncs the
directory. Leaving the ``with`` block without ``commit`` drops the data: the unnamed
file vanishes with its descriptor, the hidden one is unlinked. Used by the recovery
image (plaintext must not be visible before every chunk verified) and the credential
store.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator

from recover.errors import HostRecoverError, SystemFault, UsageError


def _hidden_name(dst: str) -> str:
    return f".{os.path.basename(dst)}.{secrets.token_hex(6)}"


def _open_dir(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


class AtomicFile:
    """A writable descriptor ``fd`` whose data shows up at ``dst`` only on ``commit``."""

    def __init__(self, dst: str | os.PathLike[str], tmp_dir: str | os.PathLike[str] | None = None):
        self.dst = os.fspath(dst)
        self.dir = os.fspath(tmp_dir) if tmp_dir else os.path.dirname(os.path.abspath(self.dst))
        with contextlib.suppress(OSError):
            mode = os.stat(self.dst).st_mode
            if stat.S_ISDIR(mode):
                raise UsageError(
                    f"{self.dst} is a directory", hint="give the name of a file to write"
                )
            if not stat.S_ISREG(mode):  # a device or FIFO would be replaced by a file
                raise UsageError(
                    f"{self.dst} is not a regular file", hint="give the name of a file to write"
                )
        self.name: str | None = None  # the temporary name, while one exists
        self.fd = -1
        if os.path.isdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                self.fd = os.open(self.dir, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        if self.fd < 0:
            self.name = os.path.join(self.dir, _hidden_name(self.dst))
            try:
                self.fd = os.open(
                    self.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
                )
            except OSError as e:
                self.name = None
                hint = "create the directory first" if e.errno == errno.ENOENT else None
                raise UsageError(
                    f"cannot create a file in {self.dir}: {e.strerror}", hint
                ) from None

    def _failed(self, e: OSError) -> HostRecoverError:
        """A full disk or an I/O error is the system's fault (exit 7); a read-only file
        system or a missing permission is the caller's (exit 2)."""
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG):
            return SystemFault(
                f"cannot write {self.dst}: {e.strerror}",
                hint="is there enough space (a tmpfs must be sized for the whole file)?",
            )
        return UsageError(f"cannot write {self.dst}: {e.strerror}")

    def write_all(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data)
        done = 0
        try:
            while done < len(view):
                done += os.pwrite(self.fd, view[done:], offset + done)
        except OSError as e:
            raise self._failed(e) from None

    def commit(self) -> None:
        try:
            os.fsync(self.fd)
            if self.name is None:
                # linkat(AT_SYMLINK_FOLLOW) of the /proc magic link names the O_TMPFILE;
                # passing a dir_fd makes CPython call linkat() rather than link().
                name = _hidden_name(self.dst)
                dfd = _open_dir(self.dir)
                try:
                    os.link(f"/proc/self/fd/{self.fd}", name, dst_dir_fd=dfd, follow_symlinks=True)
                finally:
                    os.close(dfd)
                self.name = os.path.join(self.dir, name)
        except OSError as e:
            raise self._failed(e) from None
        try:
            os.replace(self.name, self.dst)
        except OSError as e:
            raise UsageError(
                f"cannot move the output to {self.dst}: {e.strerror}",
                hint="the temporary directory must be on the same file system as the output"
                if e.errno == errno.EXDEV
                else None,
            ) from None
        self.name = None
        dfd = _open_dir(os.path.dirname(os.path.abspath(self.dst)))
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.name)
            self.name = None


@contextlib.contextmanager
def atomic_output(
    dst: str | os.PathLike[str], tmp_dir: str | os.PathLike[str] | None = None
) -> Iterator[AtomicFile]:
    out = AtomicFile(dst, tmp_dir)
    try:
        yield out
    finally:
        out.close()


def write_file(dst: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Write a small file atomically with ``mode``; failures are one-line UsageErrors."""
    with atomic_output(dst) as out:
        try:
            os.fchmod(out.fd, mode)
        except OSError as e:
            raise out._failed(e) from None
        out.write_all(data, 0)
        out.commit()
