"""Key files: the 32-byte keys provisioning exports, each armoured with its kind.

Format (text, PEM-like; docs/key-files.md)::

    -----BEGIN HOST-RECOVER IMAGE KEY-----
    <base64 of the 32 key bytes>
    -----END HOST-RECOVER IMAGE KEY-----

The kinds are ``IMAGE KEY`` (the image root key: `image create|inspect --key-file`),
``MASTER SECRET`` (the sealed master: `credential --key-file`, `provision --master-from`)
and ``OWNER AUTH`` (the owner hierarchy auth: `--owner-auth`). A file of another kind is
refused with a hint naming the file that fits (`image create --key-file master.key` used to
make an image the host could never open). A raw 32-byte file from before the armour is
accepted with a warning, since its kind cannot be checked (docs/key-files.md says how to
armour one by hand).
"""

from __future__ import annotations

import base64
import binascii
import enum
import logging
import os

from recover.errors import UsageError

log = logging.getLogger(__name__)

KEY_FILE_SIZE = 32
MAX_FILE_SIZE = 4096
_PREFIX = "-----BEGIN HOST-RECOVER "


class KeyKind(enum.StrEnum):
    IMAGE_KEY = "IMAGE KEY"
    MASTER_SECRET = "MASTER SECRET"
    OWNER_AUTH = "OWNER AUTH"

    @property
    def noun(self) -> str:
        return self.value.lower()


#: where each kind comes from, for the hint when the wrong one is given
SOURCE = {
    KeyKind.IMAGE_KEY: "`host-recover provision --export-image-key FILE`",
    KeyKind.MASTER_SECRET: "`host-recover provision --export-master FILE`",
    KeyKind.OWNER_AUTH: "`host-recover provision --export-owner-auth FILE`",
}


def encode_key_file(kind: KeyKind, key: bytes) -> bytes:
    """The armoured text of ``key`` (32 bytes) as a ``kind`` key file."""
    if len(key) != KEY_FILE_SIZE:
        raise ValueError(f"a {kind.noun} is {KEY_FILE_SIZE} bytes, not {len(key)}")
    body = base64.b64encode(key).decode()
    return (
        f"-----BEGIN HOST-RECOVER {kind}-----\n{body}\n-----END HOST-RECOVER {kind}-----\n".encode()
    )


def decode_key_file(data: bytes, kind: KeyKind, where: str) -> bytes:
    """The key of an armoured ``kind`` key file; UsageError (with the fitting file in the
    hint) for another kind or a damaged file."""
    try:
        lines = data.decode("ascii").strip().splitlines()
    except UnicodeDecodeError:
        lines = []
    label = ""
    if len(lines) == 3 and lines[0].startswith(_PREFIX) and lines[0].endswith("-----"):
        label = lines[0][len(_PREFIX) : -len("-----")]
    if label and label != kind.value and label in KeyKind._value2member_map_:
        got = KeyKind(label)
        raise UsageError(
            f"{where} holds a {got.noun}, not the {kind.noun} this needs",
            hint=f"give the {kind.noun} written by {SOURCE[kind]} (the {got.noun} is for "
            + {
                KeyKind.IMAGE_KEY: "`image create|inspect|verify|decrypt --key-file`)",
                KeyKind.MASTER_SECRET: "`credential --key-file` and `provision --master-from`)",
                KeyKind.OWNER_AUTH: "`--owner-auth`)",
            }[got],
        )
    if label != kind.value or lines[2] != f"-----END HOST-RECOVER {kind}-----":
        raise UsageError(
            f"{where} is not a host-recover {kind.noun} file",
            hint=f"use the file written by {SOURCE[kind]}",
        )
    try:
        key = base64.b64decode(lines[1], validate=True)
    except binascii.Error:
        key = b""
    if len(key) != KEY_FILE_SIZE:
        raise UsageError(
            f"{where}: damaged {kind.noun} file (not {KEY_FILE_SIZE} bytes of base64)",
            hint=f"use the file written by {SOURCE[kind]}",
        )
    return key


def read_key_file(path: str | os.PathLike[str], kind: KeyKind | str) -> bytes:
    """The 32-byte key of the ``kind`` key file at ``path`` (a raw 32-byte file of the
    time before key kinds: accepted, with a warning). ``kind`` may be given by its noun
    ("image key", "master secret", "owner auth")."""
    kind = KeyKind(kind.upper())
    where = f"{kind.noun} file {os.fspath(path)}"
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_SIZE + 1)
    except OSError as e:
        raise UsageError(f"cannot read {where}: {e.strerror}") from None
    if data.startswith(_PREFIX.encode()):
        return decode_key_file(data, kind, where)
    if len(data) != KEY_FILE_SIZE:
        raise UsageError(
            f"{where} must be a host-recover {kind.noun} file (or, from before key files "
            f"carried their kind, exactly {KEY_FILE_SIZE} raw bytes)",
            hint=f"use the file written by {SOURCE[kind]}",
        )
    log.warning(
        "%s is a raw 32-byte key (written before key files carried their kind): used as the "
        "%s unchecked; export it again, or armour it (docs/key-files.md)",
        os.fspath(path),
        kind.noun,
    )
    return data
