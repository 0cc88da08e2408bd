"""Key hierarchy below the TPM-held master secret. Pure (cryptography's HKDF only).

    master secret (32 bytes, sealed in the TPM)
      ├─ image root key   = HKDF-SHA256(master, info="host-recover/v1/image-root")
      │    └─ per-image data key = HKDF(image root key, header salt, "host-recover/v1/image-data")
      └─ credentials key  = HKDF-SHA256(master, info="host-recover/v1/credentials")

The image factory is handed the image root key (``provision --export-image-key``), never
the master secret, so it cannot read the credential store.
"""

from __future__ import annotations

MASTER_SIZE = 32
INFO_IMAGE_ROOT = b"host-recover/v1/image-root"
INFO_CREDENTIALS = b"host-recover/v1/credentials"


def hkdf(ikm: bytes, info: bytes, salt: bytes | None = None, length: int = 32) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def image_root_key(master: bytes) -> bytes:
    _check(master)
    return hkdf(master, INFO_IMAGE_ROOT)


def credentials_key(master: bytes) -> bytes:
    _check(master)
    return hkdf(master, INFO_CREDENTIALS)


def _check(master: bytes) -> None:
    if len(master) != MASTER_SIZE:
        raise ValueError(f"master secret must be {MASTER_SIZE} bytes, got {len(master)}")
