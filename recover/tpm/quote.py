"""Attestation key (restricted ECC P-256 in the endorsement hierarchy) and quotes.

The AK lives in the ENDORSEMENT hierarchy: a quote by a key of the owner hierarchy has
its resetCount/restartCount/firmwareVersion obfuscated (DESIGN.md §3), and peers use
those fields. Verification is pure Python: recover/tpm/attest.py.
"""

from __future__ import annotations

import logging

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
    """PEM (SubjectPublicKeyInfo) of a P-256 point."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.EllipticCurvePublicNumbers(
        int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
    ).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


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
