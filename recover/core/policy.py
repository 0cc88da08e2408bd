"""TPM policy digests computed in Python, and the signed PCR policy file. Pure.

Digests follow TPM 2.0 Part 3 (PolicyUpdate): for PolicyPCR
``H(old ‖ TPM_CC_PolicyPCR ‖ TPML_PCR_SELECTION ‖ H(PCR values))`` and for
PolicyAuthorize ``H(H(old ‖ TPM_CC_PolicyAuthorize ‖ keyName) ‖ policyRef)``, all
SHA-256 starting from 32 zero bytes. They agree with the TPM (trial and real sessions)
and with ``tpm2_createpolicy`` (tests/test_tpm_crosscheck.py).

The signed policy file (docs/tpm.md, "Signed policy file v1") is versioned JSON. It
carries two ECDSA P-256 signatures by the offline policy key:

* ``signature``: over SHA-256(approvedPolicy ‖ policyRef); the TPM checks this one
  (VerifySignature → ticket → PolicyAuthorize), so a forged file cannot unseal.
* ``payload_signature``: over the canonical JSON of every other field, checked in
  software, so the ``policy_version`` (anti-rollback of old policies) is authentic.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from collections.abc import Mapping
from typing import Any

from recover.core.pcrsel import (
    HASH_SIZES,
    Selection,
    add_pcr,
    format_selection,
    parse_selection,
)
from recover.errors import ConfigError, PolicyMismatch

CC_POLICY_PCR = 0x0000017F
CC_POLICY_AUTHORIZE = 0x0000016A
ALG_IDS = {"sha1": 0x0004, "sha256": 0x000B, "sha384": 0x000C, "sha512": 0x000D}
ALG_SHA256 = 0x000B
ALG_NULL = 0x0010
ALG_ECC = 0x0023
ECC_NIST_P256 = 0x0003
# TPMA_OBJECT of the external policy key: sign | userWithAuth (verification only).
EXTERNAL_KEY_ATTRS = 0x00040000 | 0x00000040
FORMAT = "host-recover-signed-policy"
FORMAT_VERSION = 1

PcrValues = Mapping[str, Mapping[int, bytes]]


def marshal_pcr_selection(sel: Selection) -> bytes:
    """TPML_PCR_SELECTION with 3-byte bitmaps (PCRs 0..23)."""
    out = bytearray(struct.pack(">I", len(sel)))
    for alg, pcrs in sel:
        bits = bytearray(3)
        for p in pcrs:
            bits[p // 8] |= 1 << (p % 8)
        out += struct.pack(">HB", ALG_IDS[alg], 3) + bits
    return bytes(out)


def policy_selection(selection: str | Selection, lock_pcr: int | None) -> Selection:
    """The selection the policy covers: ``selection`` plus the lock PCR in its first bank."""
    sel = parse_selection(selection) if isinstance(selection, str) else selection
    if lock_pcr is None:
        return sel
    return add_pcr(sel, sel[0][0], lock_pcr)


def pcr_composite(sel: Selection, values: PcrValues) -> bytes:
    """SHA-256 over the selected PCR values, banks in selection order, PCRs ascending."""
    h = hashlib.sha256()
    for alg, pcrs in sel:
        for p in pcrs:
            try:
                v = values[alg][p]
            except KeyError:
                raise ConfigError(f"no value for PCR {alg}:{p}") from None
            if len(v) != HASH_SIZES[alg]:
                raise ConfigError(f"PCR {alg}:{p} value has {len(v)} bytes, not {HASH_SIZES[alg]}")
            h.update(v)
    return h.digest()


def expected_values(selection: str | Selection, values: PcrValues, lock_pcr: int | None) -> dict:
    """``values`` restricted to the selection, with the lock PCR at zero."""
    sel = policy_selection(selection, None)
    out: dict[str, dict[int, bytes]] = {alg: {p: values[alg][p] for p in pcrs} for alg, pcrs in sel}
    if lock_pcr is not None:
        bank = sel[0][0]
        out[bank][lock_pcr] = bytes(HASH_SIZES[bank])
    return out


def policy_pcr_digest(
    selection: str | Selection, pcr_values: PcrValues, lock_pcr: int | None
) -> bytes:
    """PolicyPCR digest over ``selection`` ∪ {lock_pcr}; the lock PCR is expected at zero."""
    sel = policy_selection(selection, lock_pcr)
    values = expected_values(selection, pcr_values, lock_pcr)
    composite = pcr_composite(sel, values)
    return hashlib.sha256(
        bytes(32) + struct.pack(">I", CC_POLICY_PCR) + marshal_pcr_selection(sel) + composite
    ).digest()


def _tpm2b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def ecc_public_area(pubkey_pem: bytes) -> bytes:
    """TPMT_PUBLIC of an external ECC P-256 verification key, coordinates padded to 32."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(pubkey_pem)
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ConfigError("the policy key must be an ECC P-256 public key")
    nums = key.public_numbers()
    return (
        struct.pack(">HHI", ALG_ECC, ALG_SHA256, EXTERNAL_KEY_ATTRS)
        + _tpm2b(b"")
        + struct.pack(">HHHH", ALG_NULL, ALG_NULL, ECC_NIST_P256, ALG_NULL)
        + _tpm2b(nums.x.to_bytes(32, "big"))
        + _tpm2b(nums.y.to_bytes(32, "big"))
    )


def key_name(pubkey_pem: bytes) -> bytes:
    """TPM name of the external policy key: nameAlg ‖ SHA-256(TPMT_PUBLIC)."""
    return struct.pack(">H", ALG_SHA256) + hashlib.sha256(ecc_public_area(pubkey_pem)).digest()


def policy_authorize_digest(pubkey_pem: bytes, policy_ref: bytes = b"") -> bytes:
    """PolicyAuthorize digest for the policy key (the sealed object's authPolicy)."""
    d = hashlib.sha256(
        bytes(32) + struct.pack(">I", CC_POLICY_AUTHORIZE) + key_name(pubkey_pem)
    ).digest()
    return hashlib.sha256(d + policy_ref).digest()


# --- signed policy file -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SignedPolicy:
    """A PCR policy approved by the offline policy key (file format v1)."""

    selection: str
    lock_pcr: int
    pcrs: dict[str, dict[int, bytes]]
    approved_policy: bytes
    key_name: bytes
    policy_version: int
    signature: bytes  # DER ECDSA over SHA-256(approved_policy ‖ policy_ref); TPM-checked
    payload_signature: bytes  # DER ECDSA over canonical payload(); software-checked
    policy_ref: bytes = b""

    def payload(self) -> bytes:
        body = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "selection": self.selection,
            "lock_pcr": self.lock_pcr,
            "pcrs": {
                alg: {str(p): v.hex() for p, v in sorted(vals.items())}
                for alg, vals in self.pcrs.items()
            },
            "approved_policy": self.approved_policy.hex(),
            "key_name": self.key_name.hex(),
            "policy_ref": self.policy_ref.hex(),
            "policy_version": self.policy_version,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def to_json(self) -> str:
        doc = json.loads(self.payload())
        doc["signature"] = self.signature.hex()
        doc["payload_signature"] = self.payload_signature.hex()
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, origin: str = "policy") -> SignedPolicy:
        try:
            doc: dict[str, Any] = json.loads(text)
            if doc.get("format") != FORMAT or doc.get("version") != FORMAT_VERSION:
                raise ValueError(f"not a {FORMAT} v{FORMAT_VERSION} file")
            return cls(
                selection=str(doc["selection"]),
                lock_pcr=int(doc["lock_pcr"]),
                pcrs={
                    str(alg): {int(p): bytes.fromhex(v) for p, v in vals.items()}
                    for alg, vals in doc["pcrs"].items()
                },
                approved_policy=bytes.fromhex(doc["approved_policy"]),
                key_name=bytes.fromhex(doc["key_name"]),
                policy_ref=bytes.fromhex(doc.get("policy_ref", "")),
                policy_version=int(doc["policy_version"]),
                signature=bytes.fromhex(doc["signature"]),
                payload_signature=bytes.fromhex(doc["payload_signature"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise PolicyMismatch(
                f"{origin}: malformed signed policy ({e})",
                hint="sign a new one with `host-recover policy sign`",
            ) from None

    @classmethod
    def from_bytes(cls, data: bytes, origin: str) -> SignedPolicy:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyMismatch(f"{origin}: not UTF-8 text", hint=_SIGN_HINT) from None
        return cls.from_json(text, origin)

    def save(self, path: str | os.PathLike[str]) -> None:
        write_atomic(path, self.to_json().encode(), mode=0o644)

    def verify(self, pubkey_pem: bytes, *, min_version: int = 0) -> None:
        """Software checks before the TPM sees it: key, digest, both signatures, version.

        Raises PolicyMismatch (exit 4): a forged, stale or inconsistent policy is a
        policy the host does not satisfy.
        """
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        if self.key_name != key_name(pubkey_pem):
            raise PolicyMismatch(
                "signed policy is for another policy key",
                hint="check tpm.policy_pubkey and the key used by `policy sign`",
            )
        if self.approved_policy != policy_pcr_digest(self.selection, self.pcrs, self.lock_pcr):
            raise PolicyMismatch("signed policy: approved digest does not match its PCR values")
        key = load_pem_public_key(pubkey_pem)
        assert isinstance(key, ec.EllipticCurvePublicKey)
        try:
            key.verify(
                self.signature, self.approved_policy + self.policy_ref, ec.ECDSA(hashes.SHA256())
            )
            key.verify(self.payload_signature, self.payload(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise PolicyMismatch(
                "signed policy: bad signature (forged or corrupted)",
                hint="sign a new one with `host-recover policy sign`",
            ) from None
        if self.policy_version < min_version:
            raise PolicyMismatch(
                f"signed policy version {self.policy_version} is stale "
                f"(the TPM has accepted version {min_version})",
                hint="use the newest signed policy",
            )


_SIGN_HINT = "sign one with `host-recover policy sign`"


def sign_policy(
    private_pem: bytes,
    selection: str,
    pcr_values: PcrValues,
    lock_pcr: int,
    policy_version: int,
) -> SignedPolicy:
    """Sign ``pcr_values`` for ``selection`` with the offline policy key."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_pem_private_key(private_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigError(
            "the policy signing key must be an ECC P-256 private key",
            hint="create one with `host-recover policy keygen`",
        )
    pub_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    sel = parse_selection(selection)
    values = {alg: {p: bytes(pcr_values[alg][p]) for p in pcrs} for alg, pcrs in sel}
    approved = policy_pcr_digest(sel, values, lock_pcr)
    unsigned = SignedPolicy(
        selection=format_selection(sel),
        lock_pcr=lock_pcr,
        pcrs=values,
        approved_policy=approved,
        key_name=key_name(pub_pem),
        policy_version=policy_version,
        signature=key.sign(approved, ec.ECDSA(hashes.SHA256())),
        payload_signature=b"",
    )
    return dataclasses.replace(
        unsigned, payload_signature=key.sign(unsigned.payload(), ec.ECDSA(hashes.SHA256()))
    )


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` atomically with ``mode`` (recover.atomicfile); errors are UsageErrors."""
    from recover.atomicfile import write_file

    write_file(path, data, mode)
