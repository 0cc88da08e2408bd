"""Attestation key (restricted ECC P-256 in the endorsement hierarchy) and quotes.

The AK lives in the ENDORSEMENT hierarchy: a quote by a key of the owner hierarchy has
its resetCount/restartCount/firmwareVersion obfuscated (DESIGN.md §3), and peers use
those fields. Verification is pure Python: recover/tpm/attest.py.
"""

from __future__ import annotations

import logging
from typing import Any

from recover.tpm.core import TpmCore, translate

log = logging.getLogger(__name__)


# fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | noDA | restricted | sign
AK_ATTRS = 0x2 | 0x10 | 0x20 | 0x40 | 0x400 | 0x10000 | 0x40000


def der_to_rs(der: bytes) -> tuple[bytes, bytes]:
    """DER ECDSA signature → (r, s), each 32 bytes big-endian."""
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big"), s.to_bytes(32, "big")


def rs_to_der(r: bytes, s: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    return encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))


def ecc_pem(x: bytes, y: bytes) -> bytes:
    """PEM (SubjectPublicKeyInfo) of a P-256 point (recover.core.p256: without
    cryptography's serialization package, on the boot's path)."""
    from recover.core import p256

    return p256.pem(x, y)


class QuoteOps(TpmCore):
    def ensure_ak(self, handle: int) -> bytes:
        """Persist the AK at ``handle`` unless present; return its public key PEM."""
        from tpm2_pytss import ESYS_TR, TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE

        if handle not in self.persistent_handles():
            tmpl = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=AK_ATTRS)
            with translate("creating the attestation key"):
                ak, *_ = self.ectx.create_primary(
                    TPM2B_SENSITIVE_CREATE(), tmpl, ESYS_TR.ENDORSEMENT
                )
            try:
                with translate(f"persisting the attestation key at 0x{handle:08x}"):
                    self.ectx.evict_control(ESYS_TR.OWNER, ak, handle)
            finally:
                self._flush(ak)
            log.info("created attestation key 0x%08x", handle)
        return self.ak_public(handle)

    def ak_public(self, handle: int) -> bytes:
        obj = self._tr(handle, "attestation key")
        with translate("reading the attestation key"):
            public, _, _ = self.ectx.read_public(obj)
        point = public.publicArea.unique.ecc
        return ecc_pem(bytes(point.x), bytes(point.y))

    def quote(self, ak_handle: int, qualifying_data: bytes, selection: str) -> tuple[bytes, bytes]:
        """TPM2_Quote over ``selection``: (TPMS_ATTEST bytes, DER ECDSA signature)."""
        from tpm2_pytss import TPM2_ALG, TPML_PCR_SELECTION, TPMT_SIG_SCHEME

        ak = self._tr(ak_handle, "attestation key")
        scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
        scheme.details.any.hashAlg = TPM2_ALG.SHA256
        with translate("quoting PCRs"):
            attest, sig = self.ectx.quote(
                ak, TPML_PCR_SELECTION.parse(selection), qualifying_data, scheme
            )
        ecdsa = sig.signature.ecdsa
        return bytes(attest), rs_to_der(bytes(ecdsa.signatureR), bytes(ecdsa.signatureS))


# --- AK enrolment anchored in the EK (docs/peer-protocol.md#ak-enrolment) ---------------

EK_TYPES = ("EK-RSA2048", "EK-ECC256")  # TCG EK Credential Profile, low range
# fixedTPM | fixedParent | restricted | sign: what the verifier requires of an AK
AK_REQUIRED = 0x2 | 0x10 | 0x10000 | 0x40000
AK_FORBIDDEN = 0x20000  # decrypt


def ak_name(ak_public: bytes) -> bytes:
    """The TPM name of an object from its marshalled TPMT_PUBLIC: nameAlg ‖ H(public)."""
    import hashlib

    from tpm2_pytss import TPM2_ALG, TPMT_PUBLIC

    pub, _ = TPMT_PUBLIC.unmarshal(ak_public)
    if pub.nameAlg != TPM2_ALG.SHA256:
        raise ValueError("the AK's name algorithm is not SHA-256")
    return int(TPM2_ALG.SHA256).to_bytes(2, "big") + hashlib.sha256(ak_public).digest()


def check_ak_public(ak_public: bytes) -> bytes:
    """Check that a marshalled TPMT_PUBLIC is an AK we accept (restricted signing key
    that never leaves its TPM, ECC P-256); return its PEM."""
    from tpm2_pytss import TPM2_ALG, TPM2_ECC, TPMT_PUBLIC

    pub, used = TPMT_PUBLIC.unmarshal(ak_public)
    attrs = int(pub.objectAttributes)
    if used != len(ak_public) or (attrs & AK_REQUIRED) != AK_REQUIRED or attrs & AK_FORBIDDEN:
        raise ValueError(
            "not an attestation key: needs fixedTPM, fixedParent, restricted, sign, no decrypt"
        )
    if pub.type != TPM2_ALG.ECC or pub.parameters.eccDetail.curveID != TPM2_ECC.NIST_P256:
        raise ValueError("the AK is not an ECC P-256 key")
    point = pub.unique.ecc
    return ecc_pem(bytes(point.x), bytes(point.y))


def make_credential(ek_public: bytes, ak_public: bytes, secret: bytes) -> tuple[bytes, bytes]:
    """TPM2_MakeCredential in software (the verifier's side, no TPM needed): encrypt
    ``secret`` to the EK (marshalled TPM2B_PUBLIC) for the AK's name. Only the TPM that
    holds that EK *and* that AK can get it back (ActivateCredential). Returns the
    marshalled (TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET)."""
    from tpm2_pytss import TPM2B_PUBLIC
    from tpm2_pytss.utils import make_credential as software_make_credential

    check_ak_public(ak_public)
    ek, _ = TPM2B_PUBLIC.unmarshal(ek_public)
    blob, enc = software_make_credential(ek, secret, ak_name(ak_public))
    return blob.marshal(), enc.marshal()


def ek_public_pem(ek_public: bytes) -> bytes:
    """PEM (SubjectPublicKeyInfo) of an EK given as a marshalled TPM2B_PUBLIC."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from tpm2_pytss import TPM2_ALG, TPM2_ECC, TPM2B_PUBLIC

    pub, _ = TPM2B_PUBLIC.unmarshal(ek_public)
    area = pub.publicArea
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    if area.type == TPM2_ALG.RSA:
        exponent = int(area.parameters.rsaDetail.exponent) or 65537
        key = rsa.RSAPublicNumbers(
            exponent, int.from_bytes(bytes(area.unique.rsa), "big")
        ).public_key()
    elif area.type == TPM2_ALG.ECC and area.parameters.eccDetail.curveID == TPM2_ECC.NIST_P256:
        key = ec.EllipticCurvePublicNumbers(
            int.from_bytes(bytes(area.unique.ecc.x), "big"),
            int.from_bytes(bytes(area.unique.ecc.y), "big"),
            ec.SECP256R1(),
        ).public_key()
    else:
        raise ValueError("unsupported EK type")
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class EnrolOps(TpmCore):
    def _nv_read_all(self, index: int) -> bytes:
        """A whole NV index (EK certificates: ~1 KB), in chunks the TPM accepts."""
        from tpm2_pytss import TPM2_PT_NV, TSS2_Exception
        from tpm2_pytss.utils import NoSuchIndex

        try:
            nv = self.ectx.tr_from_tpmpublic(index)
        except TSS2_Exception:
            raise NoSuchIndex(index) from None
        with translate(f"reading NV index 0x{index:08x}"):
            pub, _ = self.ectx.nv_read_public(nv)
            size = int(pub.nvPublic.dataSize)
            chunk = self._properties(TPM2_PT_NV.BUFFER_MAX, 1).get(TPM2_PT_NV.BUFFER_MAX, 512)
            out = b""
            while len(out) < size:
                n = min(chunk, size - len(out))
                out += bytes(self.ectx.nv_read(nv, n, len(out), auth_handle=nv))
        return out

    def _create_ek(self, ek_type: str) -> tuple[Any, bytes | None, bytes]:
        """The EK (transient, from the TCG template; the TPM derives the same key every
        time), its certificate (DER) if the TPM holds one, its marshalled TPM2B_PUBLIC."""
        from tpm2_pytss import ESYS_TR, TPM2B_SENSITIVE_CREATE
        from tpm2_pytss.utils import create_ek_template

        cert, template = create_ek_template(ek_type, self._nv_read_all)
        with translate("creating the endorsement key"):
            ek, public, *_ = self.ectx.create_primary(
                TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT
            )
        return ek, (bytes(cert) if cert else None), public.marshal()

    def endorsement(self, ek_type: str = "EK-RSA2048") -> tuple[bytes, bytes | None]:
        """(EK TPM2B_PUBLIC marshalled, EK certificate DER or None)."""
        ek, cert, public = self._create_ek(ek_type)
        self._flush(ek)
        return public, cert

    def ak_public_area(self, handle: int) -> bytes:
        """The AK's marshalled TPMT_PUBLIC (its name is nameAlg ‖ SHA-256 of this)."""
        obj = self._tr(handle, "attestation key")
        with translate("reading the attestation key"):
            public, _, _ = self.ectx.read_public(obj)
        return bytes(public.publicArea.marshal())

    def activate_credential(
        self, ak_handle: int, blob: bytes, enc_secret: bytes, ek_type: str = "EK-RSA2048"
    ) -> bytes:
        """TPM2_ActivateCredential: the secret a verifier made for this EK and this AK."""
        from tpm2_pytss import (
            ESYS_TR,
            TPM2_ALG,
            TPM2_SE,
            TPM2B_ENCRYPTED_SECRET,
            TPM2B_ID_OBJECT,
            TPMT_SYM_DEF,
        )

        ak = self._tr(ak_handle, "attestation key")
        ek, _, _ = self._create_ek(ek_type)
        session = None
        try:
            with translate("starting the endorsement policy session"):
                session = self.ectx.start_auth_session(
                    tpm_key=ESYS_TR.NONE,
                    bind=ESYS_TR.NONE,
                    session_type=TPM2_SE.POLICY,
                    symmetric=TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                    auth_hash=TPM2_ALG.SHA256,
                )
                # The EK's policy: PolicySecret(TPM_RH_ENDORSEMENT), empty endorsement auth.
                self.ectx.policy_secret(ESYS_TR.ENDORSEMENT, session, expiration=0)
            with translate("activating the enrolment credential"):
                cred = self.ectx.activate_credential(
                    ak,
                    ek,
                    TPM2B_ID_OBJECT.unmarshal(blob)[0],
                    TPM2B_ENCRYPTED_SECRET.unmarshal(enc_secret)[0],
                    session1=ESYS_TR.PASSWORD,
                    session2=session,
                )
        finally:
            self._flush(session)
            self._flush(ek)
        return bytes(cred)
