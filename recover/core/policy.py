"""TPM policy digests computed in Python, and the signed PCR policy file. Pure.

Digests follow TPM 2.0 Part 3 (PolicyUpdate): for PolicyPCR
``H(old ‖ TPM_CC_PolicyPCR ‖ TPML_PCR_SELECTION ‖ H(PCR values))`` and for
PolicyAuthorize ``H(H(old ‖ TPM_CC_PolicyAuthorize ‖ keyName) ‖ policyRef)``, all
SHA-256 starting from 32 zero bytes. They agree with the TPM (trial and real sessions)
and with ``tpm2_createpolicy`` (tests/tpm/test_tpm_crosscheck.py).

The approved policy of a signed policy of version v is PolicyPCR(values, lock PCR at 0)
followed by ``PolicyNV(policy counter, v, TPM_EO_UNSIGNED_LE)``: the TPM itself refuses
it once the policy counter is above v (``host-recover policy install`` raises the
counter), so superseded policies stop working at the TPM (docs/tpm.md, "Revocation").

The signed policy file (docs/tpm.md, "Signed policy file v2") is versioned JSON. It
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
CC_POLICY_NV = 0x00000149
CC_POLICY_COMMAND_CODE = 0x0000016C
CC_NV_INCREMENT = 0x00000134
CC_NV_WRITE = 0x00000137
EO_UNSIGNED_LE = 0x0009  # TPM_EO: NV contents <= operandB (unsigned)
ALG_IDS = {"sha1": 0x0004, "sha256": 0x000B, "sha384": 0x000C, "sha512": 0x000D}
ALG_SHA256 = 0x000B
ALG_NULL = 0x0010
ALG_ECC = 0x0023
ECC_NIST_P256 = 0x0003
# TPMA_OBJECT of the external policy key: sign | userWithAuth (verification only).
EXTERNAL_KEY_ATTRS = 0x00040000 | 0x00000040
FORMAT = "host-recover-signed-policy"
FORMAT_VERSION = 2  # v2: the approved digest includes PolicyNV(policy counter <= version)

# TPMA_NV bits (Part 2, 13.4) and the layout of the policy counter, whose TPM name is
# part of every approved policy digest (so it is fixed here, in the pure core).
NV_OWNERWRITE = 0x2
NV_AUTHWRITE = 0x4
NV_POLICYWRITE = 0x8
NV_TPM_NT_COUNTER = 0x1 << 4
NV_OWNERREAD = 0x20000
NV_AUTHREAD = 0x40000
NV_NO_DA = 0x2000000
NV_ORDERLY = 0x4000000
NV_WRITTEN = 0x20000000
# Only the owner (auth held offline once provision set it) may raise the policy counter;
# anyone may read it (PolicyNV reads it with the index's empty authValue).
OWNER_COUNTER_ATTRS = NV_TPM_NT_COUNTER | NV_OWNERWRITE | NV_OWNERREAD | NV_AUTHREAD | NV_NO_DA
POLICY_COUNTER_ATTRS = OWNER_COUNTER_ATTRS
ROLLBACK_COUNTER_ATTRS = OWNER_COUNTER_ATTRS  # raised by `image floor --owner-auth`
CREDENTIALS_COUNTER_ATTRS = OWNER_COUNTER_ATTRS  # raised by `credential add|remove`
DEFAULT_POLICY_NV = 0x01500013
# The evidence indices (hybrid counter, decision record): written only through their
# write policy (lock PCR at its reset value + the write command), never with an auth
# value or the owner auth; reads stay open; undefined with the owner auth (no
# POLICY_DELETE). docs/tpm.md "NV indices".
EVIDENCE_ATTRS = NV_POLICYWRITE | NV_OWNERREAD | NV_AUTHREAD | NV_NO_DA
HYBRID_COUNTER_ATTRS = EVIDENCE_ATTRS | NV_TPM_NT_COUNTER | NV_ORDERLY
RECORD_BLOB_ATTRS = EVIDENCE_ATTRS

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


def nv_name(index: int, attrs: int, size: int, auth_policy: bytes = b"") -> bytes:
    """TPM name of an NV index: nameAlg ‖ SHA-256(TPMS_NV_PUBLIC). ``attrs`` as the TPM
    holds them (TPMA_NV_WRITTEN set once the index was written)."""
    public = (
        struct.pack(">IHI", index, ALG_SHA256, attrs)
        + _tpm2b(auth_policy)
        + struct.pack(">H", size)
    )
    return struct.pack(">H", ALG_SHA256) + hashlib.sha256(public).digest()


@dataclasses.dataclass(frozen=True)
class WriteLock:
    """The write policy of the evidence indices: PolicyPCR over the lock PCR at its
    reset value (zeros) in ``bank`` — the first bank of ``tpm.pcrs``, the one the sealed
    object's policy checks too — then PolicyCommandCode(the write command). Only the
    payload before the lock satisfies it; the lock extends every allocated bank at once
    and no PCR 0-15 can be reset without a reboot."""

    bank: str
    pcr: int

    @classmethod
    def of(cls, selection: str | Selection, lock_pcr: int) -> WriteLock:
        sel = parse_selection(selection) if isinstance(selection, str) else selection
        return cls(sel[0][0], lock_pcr)

    @property
    def selection(self) -> str:
        return f"{self.bank}:{self.pcr}"

    @property
    def reset_digest(self) -> bytes:
        """H(the lock PCR at its reset value): PolicyPCR's pcrDigest."""
        return pcr_composite(parse_selection(self.selection), self.reset_values())

    def reset_values(self) -> dict[str, dict[int, bytes]]:
        return {self.bank: {self.pcr: bytes(HASH_SIZES[self.bank])}}

    def digest(self, command_code: int) -> bytes:
        """authPolicy: PolicyPCR(lock PCR = reset value) ; PolicyCommandCode(cc)."""
        pcr = policy_pcr_digest(self.selection, self.reset_values(), None)
        return hashlib.sha256(
            pcr + struct.pack(">II", CC_POLICY_COMMAND_CODE, command_code)
        ).digest()


def policy_counter_name(index: int) -> bytes:
    """TPM name of the (initialised) policy counter at ``index``."""
    return nv_name(index, POLICY_COUNTER_ATTRS | NV_WRITTEN, 8)


def policy_nv_digest(
    old: bytes, nv_index_name: bytes, operand_b: bytes, offset: int, operation: int
) -> bytes:
    """PolicyNV: ``H(old ‖ TPM_CC_PolicyNV ‖ H(operandB ‖ offset ‖ operation) ‖ nvName)``."""
    args = hashlib.sha256(operand_b + struct.pack(">HH", offset, operation)).digest()
    return hashlib.sha256(old + struct.pack(">I", CC_POLICY_NV) + args + nv_index_name).digest()


def version_operand(version: int) -> bytes:
    """A policy version as PolicyNV's operandB: 8 bytes big-endian, like the counter."""
    if not 0 <= version < 1 << 64:
        raise ConfigError(f"policy version {version} is out of range")
    return version.to_bytes(8, "big")


def approved_policy_digest(
    selection: str | Selection,
    pcr_values: PcrValues,
    lock_pcr: int | None,
    policy_nv: int,
    policy_version: int,
) -> bytes:
    """The digest a signed policy approves: PolicyPCR, then policy counter <= version."""
    return policy_nv_digest(
        policy_pcr_digest(selection, pcr_values, lock_pcr),
        policy_counter_name(policy_nv),
        version_operand(policy_version),
        0,
        EO_UNSIGNED_LE,
    )


def _tpm2b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def ecc_public_area(pubkey_pem: bytes) -> bytes:
    """TPMT_PUBLIC of an external ECC P-256 verification key, coordinates padded to 32."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from recover.core import p256

    key = p256.public_key(pubkey_pem)
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
    """A PCR policy approved by the offline policy key (file format v2)."""

    selection: str
    lock_pcr: int
    pcrs: dict[str, dict[int, bytes]]
    approved_policy: bytes
    key_name: bytes
    policy_version: int
    signature: bytes  # DER ECDSA over SHA-256(approved_policy ‖ policy_ref); TPM-checked
    payload_signature: bytes  # DER ECDSA over canonical payload(); software-checked
    policy_ref: bytes = b""
    policy_nv: int = DEFAULT_POLICY_NV  # the policy counter the approved digest names

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
            "policy_nv": f"0x{self.policy_nv:08x}",
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
                if doc.get("format") == FORMAT and doc.get("version") == 1:
                    raise ValueError(
                        "format v1 (before revocation in the TPM); sign it again and "
                        "install it with `host-recover policy install`"
                    )
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
                policy_nv=int(str(doc["policy_nv"]), 16),
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
        from cryptography.hazmat.primitives.asymmetric import ec

        from recover.core import p256

        if self.key_name != key_name(pubkey_pem):
            raise PolicyMismatch(
                "signed policy is for another policy key",
                hint="check tpm.policy_pubkey and the key used by `policy sign`",
            )
        approved = approved_policy_digest(
            self.selection, self.pcrs, self.lock_pcr, self.policy_nv, self.policy_version
        )
        if self.approved_policy != approved:
            raise PolicyMismatch("signed policy: approved digest does not match its PCR values")
        key = p256.public_key(pubkey_pem)
        assert isinstance(key, ec.EllipticCurvePublicKey)
        try:
            key.verify(self.signature, self.approved_policy + self.policy_ref, p256.ecdsa_sha256())
            key.verify(self.payload_signature, self.payload(), p256.ecdsa_sha256())
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
    policy_nv: int = DEFAULT_POLICY_NV,
) -> SignedPolicy:
    """Sign ``pcr_values`` for ``selection`` with the offline policy key, valid while the
    TPM's policy counter at ``policy_nv`` is at most ``policy_version``."""
    from cryptography.hazmat.primitives import serialization

    from recover.core import p256

    key = load_signing_key(private_pem, "policy")
    pub_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    sel = parse_selection(selection)
    values = {alg: {p: bytes(pcr_values[alg][p]) for p in pcrs} for alg, pcrs in sel}
    approved = approved_policy_digest(sel, values, lock_pcr, policy_nv, policy_version)
    unsigned = SignedPolicy(
        selection=format_selection(sel),
        lock_pcr=lock_pcr,
        pcrs=values,
        approved_policy=approved,
        key_name=key_name(pub_pem),
        policy_version=policy_version,
        policy_nv=policy_nv,
        signature=key.sign(approved, p256.ecdsa_sha256()),
        payload_signature=b"",
    )
    return dataclasses.replace(
        unsigned, payload_signature=key.sign(unsigned.payload(), p256.ecdsa_sha256())
    )


def load_signing_key(private_pem: bytes, what: str) -> Any:
    """An ECC P-256 private key from PEM (``policy keygen`` writes them), for signing
    ``what`` (policy, inventory); anything else is a ConfigError. Also used by
    recover.core.endorse."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_pem_private_key(private_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigError(
            f"the {what} signing key must be an ECC P-256 private key",
            hint="create one with `host-recover policy keygen`",
        )
    return key


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` atomically with ``mode`` (recover.atomicfile); errors are UsageErrors."""
    from recover.atomicfile import write_file

    write_file(path, data, mode)
