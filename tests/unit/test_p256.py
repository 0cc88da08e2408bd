"""recover/core/p256.py: P-256 public keys as PEM without cryptography's serialization
package, checked against cryptography's own writer and parser. No TPM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from recover.core import p256

ROOT = Path(__file__).resolve().parents[2]
PEM = serialization.Encoding.PEM
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


def _reference(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(PEM, SPKI)


def _minimal(value: int) -> bytes:
    """Big-endian bytes without leading zeros (what a TPM may hand over)."""
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


@pytest.fixture(scope="module")
def keys() -> list[ec.EllipticCurvePublicKey]:
    return [ec.generate_private_key(ec.SECP256R1()).public_key() for _ in range(64)]


def test_what_is_written_is_what_cryptography_writes(keys: list) -> None:
    for key in keys:
        n = key.public_numbers()
        want = _reference(key)
        assert p256.pem(n.x.to_bytes(32, "big"), n.y.to_bytes(32, "big")) == want
        assert p256.pem(_minimal(n.x), _minimal(n.y)) == want
        assert p256.pem(n.x, n.y) == want
        assert p256.spki_der(key) == key.public_bytes(serialization.Encoding.DER, SPKI)


def test_a_canonical_pem_is_read_here_as_cryptography_reads_it(keys: list) -> None:
    for key in keys:
        pem = _reference(key)
        assert p256.canonical_point(pem) == key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        got = p256.public_key(pem)
        assert isinstance(got, ec.EllipticCurvePublicKey)
        assert got.public_numbers() == key.public_numbers()


def _other_forms(key: ec.EllipticCurvePublicKey) -> list[bytes]:
    pem = _reference(key)
    return [
        pem.replace(b"\n", b"\r\n"),
        pem.rstrip(b"\n"),
        b"a comment before the key\n" + pem,
        pem + b"\n",
        pem.replace(b"\n", b"", 2),  # the body on one line
        ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(PEM, SPKI),
        rsa.generate_private_key(65537, 2048).public_key().public_bytes(PEM, SPKI),
        ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(PEM, SPKI),
        key.public_bytes(PEM, serialization.PublicFormat.SubjectPublicKeyInfo).replace(
            b"PUBLIC KEY", b"EC PUBLIC KEY"
        ),
    ]


def _outcome(load, data: bytes) -> tuple[str, bytes]:  # type: ignore[no-untyped-def]
    try:
        return "key", load(data).public_bytes(serialization.Encoding.DER, SPKI)
    except ValueError:
        return "ValueError", b""
    except Exception as e:  # noqa: BLE001  # the same other error, or a difference
        return type(e).__name__, b""


def test_any_other_form_goes_to_cryptography_and_ends_the_same(keys: list) -> None:
    for data in _other_forms(keys[0]):
        assert p256.canonical_point(data) is None, data
        want = _outcome(serialization.load_pem_public_key, data)
        assert _outcome(p256.public_key, data) == want, data


def _canonical_pem_of(point: bytes) -> bytes:
    """A PEM in exactly the form p256 reads itself, of any 65 bytes."""
    import base64

    text = base64.b64encode(p256.SPKI_PREFIX + point)
    return (
        b"-----BEGIN PUBLIC KEY-----\n"
        + text[:64]
        + b"\n"
        + text[64:]
        + b"\n-----END PUBLIC KEY-----\n"
    )


def test_a_point_off_the_curve_is_refused_both_ways(keys: list) -> None:
    n = keys[0].public_numbers()
    with pytest.raises(ValueError):
        p256.pem(n.x, n.y + 1)
    off = p256.encoded_point(n.x, n.y + 1)
    data = _canonical_pem_of(off)
    assert p256.canonical_point(data) == off  # the fast path's form: the curve check refuses
    with pytest.raises(ValueError):
        serialization.load_pem_public_key(data)
    with pytest.raises(ValueError):
        p256.public_key(data)
    with pytest.raises(ValueError):  # the point at infinity has no uncompressed form
        p256.pem(0, 0)
    compressed = bytes([0x02]) + n.x.to_bytes(32, "big") + bytes(32)
    assert _outcome(p256.public_key, _canonical_pem_of(compressed))[0] != "key"


def test_a_coordinate_longer_than_32_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="longer than 32 bytes"):
        p256.pem(b"\x01" + bytes(32), bytes(32))
    with pytest.raises(ValueError):
        p256.encoded_point(1 << 256, 1)


def test_garbage_is_a_value_error() -> None:
    for data in (
        b"",
        b"-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n",
        b"-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n",
        b"not a pem at all",
    ):
        assert p256.canonical_point(data) is None
        assert _outcome(p256.public_key, data) == ("ValueError", b""), data


def test_the_boot_s_key_handling_never_loads_the_serialization_package() -> None:
    """In a fresh interpreter: this host's AK PEM, a peer's quote key read and a
    signature verified with it, the policy key's TPM public area and the fleet key's id
    load neither cryptography's serialization package nor its SSH key support."""
    code = textwrap.dedent(
        """
        import json, sys
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from recover.core import endorse, p256, policy
        from recover.tpm.quote import ecc_pem
        private = ec.generate_private_key(ec.SECP256R1())
        n = private.public_key().public_numbers()
        pem = ecc_pem(n.x.to_bytes(32, "big"), n.y.to_bytes(32, "big"))
        key = p256.public_key(pem)
        key.verify(private.sign(b"m", ec.ECDSA(hashes.SHA256())), b"m", ec.ECDSA(hashes.SHA256()))
        policy.ecc_public_area(pem)
        endorse.key_id(pem)
        print(json.dumps(sorted(m for m in sys.modules if "serialization" in m)))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.fspath(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    assert "cryptography.hazmat.primitives.serialization" not in loaded, loaded
    assert "cryptography.hazmat.primitives.serialization.ssh" not in loaded, loaded


# --- ECDSA without its constructor ---------------------------------------------------


def test_ecdsa_sha256_is_what_the_constructor_makes() -> None:
    from cryptography.hazmat.primitives import hashes

    made = p256.ecdsa_sha256()
    built = ec.ECDSA(hashes.SHA256())
    assert type(made) is ec.ECDSA
    assert isinstance(made.algorithm, hashes.SHA256)
    assert made.deterministic_signing is False
    assert {k: type(v) for k, v in vars(made).items()} == {
        k: type(v) for k, v in vars(built).items()
    }
    assert made is p256.ecdsa_sha256(), "made once"


def test_ecdsa_sha256_signatures_verify_both_ways_and_forgeries_do_not() -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes

    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    built = ec.ECDSA(hashes.SHA256())
    by_helper = key.sign(b"message", p256.ecdsa_sha256())
    by_constructor = key.sign(b"message", built)
    assert by_helper != key.sign(b"message", p256.ecdsa_sha256()), "random nonces"
    key.public_key().verify(by_helper, b"message", built)
    key.public_key().verify(by_constructor, b"message", p256.ecdsa_sha256())
    with pytest.raises(InvalidSignature):
        key.public_key().verify(by_constructor, b"massage", p256.ecdsa_sha256())
    with pytest.raises(InvalidSignature):
        other.public_key().verify(by_constructor, b"message", p256.ecdsa_sha256())
    # the hash really is SHA-256: a signature over SHA-384 does not verify
    with pytest.raises(InvalidSignature):
        key.public_key().verify(
            key.sign(b"message", ec.ECDSA(hashes.SHA384())), b"message", p256.ecdsa_sha256()
        )


def test_ecdsa_sha256_runs_no_constructor(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("ECDSA's constructor ran")

    monkeypatch.setattr(ec.ECDSA, "__init__", refuse)
    made = p256._make_ecdsa_sha256()
    assert made.algorithm.name == "sha256" and made.deterministic_signing is False


def test_ecdsa_sha256_uses_the_constructor_when_the_class_keeps_its_fields_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cryptography whose properties read other attributes: the object made without
    the constructor would not say SHA-256, so the constructor makes it."""
    ran: list[object] = []

    def init(self: object, algorithm: object, deterministic_signing: bool = False) -> None:
        ran.append(algorithm)
        self.__dict__["_hash"] = algorithm
        self.__dict__["_rfc6979"] = deterministic_signing

    monkeypatch.setattr(ec.ECDSA, "__init__", init)
    monkeypatch.setattr(ec.ECDSA, "algorithm", property(lambda self: self._hash))
    monkeypatch.setattr(ec.ECDSA, "deterministic_signing", property(lambda self: self._rfc6979))
    made = p256._make_ecdsa_sha256()
    assert len(ran) == 1
    assert made.algorithm is ran[0] and made.deterministic_signing is False


def test_checking_a_quote_does_not_load_the_openssl_backend_module() -> None:
    """In a fresh interpreter: a quote signed and checked (attest.verify_quote), and a
    forged one refused, without importing cryptography's OpenSSL backend module."""
    code = textwrap.dedent(
        """
        import json, sys
        from cryptography.hazmat.primitives.asymmetric import ec
        from recover.core import attest, p256
        from recover.errors import IntegrityError
        private = ec.generate_private_key(ec.SECP256R1())
        n = private.public_key().public_numbers()
        pem = p256.pem(n.x, n.y)
        att = attest.make_attest(
            qualified_signer=b"\\x00\\x0b" + bytes(32), extra_data=b"nonce",
            selection="sha256:0", pcr_values={"sha256": {0: bytes(32)}},
            reset_count=1, restart_count=0, clock=1,
        )
        sig = private.sign(att, p256.ecdsa_sha256())
        attest.verify_quote(pem, att, sig, qualifying_data=b"nonce")
        try:
            attest.verify_quote(pem, att[:-1] + b"\\x01", sig, qualifying_data=b"nonce")
        except IntegrityError:
            refused = True
        else:
            refused = False
        print(json.dumps([refused, sorted(m for m in sys.modules if ".backends" in m)]))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.fspath(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    refused, loaded = json.loads(proc.stdout)
    assert refused
    assert "cryptography.hazmat.backends.openssl.backend" not in loaded, loaded
