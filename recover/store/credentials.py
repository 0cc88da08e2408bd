"""Credential store files (recover.core.credstore), and the hand-over at boot.

The store is one file, rewritten atomically with mode 0600. At boot ``write_to_dir``
hands the credentials to the recovery root as one 0400 file each in a tmpfs directory,
the way systemd passes credentials (``$CREDENTIALS_DIRECTORY``, LoadCredential=).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from typing import TYPE_CHECKING

from recover.atomicfile import atomic_output
from recover.core.credstore import MAX_STORE, Store, list_names, next_generation, seal, unseal
from recover.errors import IntegrityError, UsageError
from recover.store.safefile import read_capped

if TYPE_CHECKING:
    from recover.config import Config
    from recover.tpm import Tpm

log = logging.getLogger(__name__)

TMPFS_MAGIC = 0x01021994


RAMFS_MAGIC = 0x858458F6


def load(path: str | os.PathLike[str], master: bytes) -> Store:
    """Read and open the store (a regular file, never a FIFO or device, at most
    MAX_STORE bytes)."""
    if not os.path.lexists(path):
        raise UsageError(
            f"no credential store at {os.fspath(path)}",
            hint="create it with `host-recover credential add NAME FILE`",
        )
    try:
        data = read_capped(path, MAX_STORE)
    except UsageError as e:
        if "larger than" in e.message:
            raise IntegrityError(f"credential store {os.fspath(path)} is too large") from None
        raise
    return unseal(data, master)


def save(
    path: str | os.PathLike[str], store: Store, master: bytes, generation: int | None = None
) -> Store:
    """Write ``store`` with ``generation`` (default: the next one) atomically (0600);
    return what was saved."""
    saved = Store(store.entries, store.generation + 1 if generation is None else generation)
    data = seal(saved, master)
    with atomic_output(path) as out:
        out.write_all(data, 0)
        out.commit()
    return saved


def tpm_floor(t: Tpm, cfg: Config) -> int | None:
    """The lowest accepted store generation (``tpm.credentials_nv``), or None when no
    floor is set yet (the index is missing, or defined by provision and not written
    until the first ``credential add|remove`` raises it)."""
    index = cfg.tpm_credentials_nv
    if index not in t.nv_indices() or not t.nv_written(index):
        return None
    return t.counter_read(index)


def save_with_floor(
    cfg: Config,
    path: str | os.PathLike[str],
    store: Store,
    master: bytes,
    owner_auth: bytes | None,
) -> tuple[Store, int | None]:
    """Write ``store`` as the next generation (never below the TPM floor) and raise the
    floor to it, so that no older copy is accepted at boot any more. The floor is
    owner-write only: raised when ``owner_auth`` is given or the owner auth is empty;
    otherwise the store is written and the floor stays (a warning). Returns what was
    saved and the floor after it.

    Order (a crash anywhere leaves a store the boot accepts, except in the one-time
    initialisation of a fresh counter, whose first value may exceed the old store's
    generation until the store is written a moment later: run the command again):
    initialise the counter if it was never written → write the store at
    max(generation + 1, floor) → advance the floor to it. Without a reachable TPM (an
    offline edit with --key-file; no waiting for a device then unless ``owner_auth``
    says the floor must be raised) the store is written and no floor is raised."""
    from recover.errors import TpmUnavailable
    from recover.tpm import Tpm

    index = cfg.tpm_credentials_nv
    wait = cfg.tpm_timeout if owner_auth is not None else 0.0
    with contextlib.ExitStack() as stack:
        try:
            t = stack.enter_context(Tpm.open(cfg.tpm_tcti, timeout=wait))
        except TpmUnavailable as e:
            if owner_auth is not None:
                raise
            log.warning("no TPM (%s): the credential floor is not raised", e.message)
            return save(path, store, master), None
        is_set = t.owner_auth_set()
        if owner_auth is not None:
            t.use_owner_auth(owner_auth)
        may_raise = owner_auth is not None or not is_set
        if index not in t.nv_indices():
            log.warning(
                "no credential floor counter 0x%08x in the TPM: run `host-recover provision`",
                index,
            )
            may_raise = False
        elif may_raise and not t.nv_written(index):
            t.counter_increment(index)  # the first value: the TPM's highest counter ever
        floor = tpm_floor(t, cfg)
        saved = save(path, store, master, next_generation(store, floor))
        if may_raise:
            floor = t.counter_advance_to(index, saved.generation)
        else:
            log.warning(
                "the credential floor stays at %s (the owner auth is set: pass --owner-auth "
                "FILE to raise it): older stores down to it are still accepted at boot",
                floor,
            )
    return saved, floor


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
