"""Key files: the 32-byte image root key and master secret exported at provisioning."""

from __future__ import annotations

import os

from recover.errors import UsageError

KEY_FILE_SIZE = 32


def read_key_file(path: str | os.PathLike[str], what: str = "key") -> bytes:
    """Read a 32-byte raw key file (image root key or master secret)."""
    try:
        with open(path, "rb") as f:
            data = f.read(KEY_FILE_SIZE + 1)
    except OSError as e:
        raise UsageError(f"cannot read {what} file {os.fspath(path)}: {e.strerror}") from None
    if len(data) != KEY_FILE_SIZE:
        raise UsageError(
            f"{what} file {os.fspath(path)} must hold exactly {KEY_FILE_SIZE} raw bytes",
            hint="use the file written by `host-recover provision --export-...`",
        )
    return data
