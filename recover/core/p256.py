"""ECC P-256 public keys as PEM SubjectPublicKeyInfo, without cryptography's
``serialization`` package.

Every public key the boot handles is a P-256 point: this host's AK (its PEM is what peers
and the witness know it by), the AKs in peers' answers, the policy key and the fleet key.
cryptography's ``serialization`` package imports its SSH key support with it, and that
imports every key type cryptography has: on the recovery route this was the largest
single import (8 ms on a workstation, about half a second in the lab's TCG guest:
docs/performance.md). The SPKI of a P-256 point is a fixed 26-byte DER prefix and the
65-byte uncompressed point (RFC 5480), so it is written here, and read here when a PEM
has exactly the form :func:`pem` writes (the form cryptography writes too); a PEM in any
other form, or of another key type, goes to cryptography's own parser, unchanged. Either
way the point is checked to be on the curve by cryptography (``from_encoded_point``).
"""

from __future__ import annotations

import base64
import binascii
import threading
from typing import Any

#: DER of SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits) }
#: up to the point: RFC 5480, section 2.
SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")
COORDINATE = 32
POINT_SIZE = 1 + 2 * COORDINATE  # 0x04 ‖ X ‖ Y
DER_SIZE = len(SPKI_PREFIX) + POINT_SIZE  # 91
_BEGIN = b"-----BEGIN PUBLIC KEY-----\n"
_END = b"-----END PUBLIC KEY-----\n"
_LINE = 64  # base64 characters per PEM line (RFC 7468)


def _pem_of_der(der: bytes) -> bytes:
    text = base64.b64encode(der)
    lines = [text[i : i + _LINE] for i in range(0, len(text), _LINE)]
    return _BEGIN + b"\n".join(lines) + b"\n" + _END


def _key_of_point(point: bytes) -> Any:
    """The cryptography key of an uncompressed point; ValueError when it is not a point of
    P-256 (off the curve, the point at infinity, a wrong length or prefix)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)


def encoded_point(x: bytes | int, y: bytes | int) -> bytes:
    """The uncompressed point of coordinates given as big-endian bytes (a TPM's
    TPMS_ECC_POINT may leave out leading zero bytes) or integers; ValueError when a
    coordinate does not fit in 32 bytes."""
    xi = x if isinstance(x, int) else int.from_bytes(x, "big")
    yi = y if isinstance(y, int) else int.from_bytes(y, "big")
    try:
        return b"\x04" + xi.to_bytes(COORDINATE, "big") + yi.to_bytes(COORDINATE, "big")
    except OverflowError:
        raise ValueError("not a P-256 point: a coordinate is longer than 32 bytes") from None


def pem(x: bytes | int, y: bytes | int) -> bytes:
    """PEM (SubjectPublicKeyInfo) of the P-256 point (x, y), byte for byte what
    cryptography writes for it; ValueError when the point is not on the curve."""
    point = encoded_point(x, y)
    _key_of_point(point)
    return _pem_of_der(SPKI_PREFIX + point)


def spki_der(key: Any) -> bytes:
    """DER SubjectPublicKeyInfo of a cryptography P-256 public key object."""
    numbers = key.public_numbers()
    return SPKI_PREFIX + encoded_point(numbers.x, numbers.y)


def canonical_point(data: bytes) -> bytes | None:
    """The point of a PEM that is exactly what :func:`pem` writes for a P-256 key (not
    checked to be on the curve), else None."""
    if not (data.startswith(_BEGIN) and data.endswith(_END)):
        return None
    body = data[len(_BEGIN) : -len(_END)].replace(b"\n", b"")
    try:
        der = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(der) != DER_SIZE or not der.startswith(SPKI_PREFIX) or _pem_of_der(der) != data:
        return None
    return der[len(SPKI_PREFIX) :]


def public_key(data: bytes) -> Any:
    """The public key of a PEM, as cryptography's ``load_pem_public_key`` gives it;
    raises ValueError as it does. A P-256 key in the canonical form is read here, any
    other goes to cryptography's parser."""
    point = canonical_point(data)
    if point is None:
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        return load_pem_public_key(data)
    return _key_of_point(point)


_ecdsa: Any = None
_ecdsa_lock = threading.Lock()


def ecdsa_sha256() -> Any:
    """``ec.ECDSA(hashes.SHA256())`` (random nonces, not RFC 6979), made without running
    its constructor. That constructor imports cryptography's OpenSSL backend module, only
    to check that deterministic signing is supported when it is asked for, which it never
    is here; the import costs about 4 ms on a workstation and a quarter of a second in the
    lab's TCG guest, on the recovery route's first peer answer (docs/performance.md).
    The object is cryptography's own class, with the two attributes its constructor sets;
    the signature code reads them through the class's ``algorithm`` and
    ``deterministic_signing`` properties, and this checks that those properties return
    what was set. When they do not (another cryptography version keeps them elsewhere),
    the constructor is used, so the result is always what the constructor would give.
    Made once; an ECDSA object is not changed by signing or verifying."""
    global _ecdsa
    with _ecdsa_lock:
        if _ecdsa is None:
            _ecdsa = _make_ecdsa_sha256()
        return _ecdsa


def _make_ecdsa_sha256() -> Any:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    algorithm = hashes.SHA256()
    made = ec.ECDSA.__new__(ec.ECDSA)
    try:
        made._algorithm = algorithm
        made._deterministic_signing = False
        if made.algorithm is algorithm and made.deterministic_signing is False:
            return made
    except AttributeError:
        pass
    return ec.ECDSA(algorithm)
