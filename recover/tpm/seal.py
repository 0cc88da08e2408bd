"""The secure store: NODA SRK, the sealed master secret, PCR and signed policies.

Every session is salted with the SRK and parameter-encrypted, so the secret crosses the
TPM bus encrypted on sealing (command encryption) and on unsealing (response
encryption). Sealed objects and the SRK are NODA: power cuts must never lock a host out
of its own recovery key (DESIGN.md §3).
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

from recover.core import policy as pol
from recover.core.pcrsel import format_selection
from recover.errors import IntegrityError, PolicyMismatch, TpmUnavailable, UsageError
from recover.tpm.core import (
    RC_POLICY,
    RC_SIGNATURE,
    RC_VALUE,
    PcrChanged,
    TpmCore,
    translate,
)

if TYPE_CHECKING:
    from recover.core.policy import SignedPolicy

log = logging.getLogger(__name__)


# TPMA_OBJECT bits (Part 2, 8.3).
FIXEDTPM = 0x2
FIXEDPARENT = 0x10
SENSITIVEDATAORIGIN = 0x20
USERWITHAUTH = 0x40
NODA = 0x400
RESTRICTED = 0x10000
DECRYPT = 0x20000
SIGN = 0x40000

SRK_ATTRS = (
    FIXEDTPM | FIXEDPARENT | SENSITIVEDATAORIGIN | USERWITHAUTH | NODA | RESTRICTED | DECRYPT
)
# No USERWITHAUTH: the sealed object can only be used through its policy.
SEAL_ATTRS = FIXEDTPM | FIXEDPARENT | NODA


class SealOps(TpmCore):
    def ensure_srk(self, handle: int) -> bool:
        """Persist a NODA ECC P-256 storage key at ``handle`` unless present."""
        from tpm2_pytss import ESYS_TR, TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE

        if handle in self.persistent_handles():
            return False
        tmpl = TPM2B_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=SRK_ATTRS)
        with translate("creating the storage key"):
            primary, *_ = self.ectx.create_primary(TPM2B_SENSITIVE_CREATE(), tmpl, ESYS_TR.OWNER)
        try:
            with translate(f"persisting the storage key at 0x{handle:08x}"):
                self.ectx.evict_control(ESYS_TR.OWNER, primary, handle)
        finally:
            self._flush(primary)
        log.info("created storage key 0x%08x", handle)
        return True

    def _srk(self, handle: int) -> Any:
        return self._tr(handle, "storage key")

    def seal_master(
        self,
        secret: bytes,
        *,
        srk_handle: int,
        seal_handle: int,
        selection: str,
        lock_pcr: int,
        policy: str,
        policy_pubkey_pem: bytes | None,
        force: bool,
        values: pol.PcrValues | None = None,
    ) -> None:
        """Seal ``secret`` under a PCR (or signed) policy and persist it at ``seal_handle``;
        a PCR policy over ``values`` (predicted: ``reseal``) or else the current ones."""
        from tpm2_pytss import (
            ESYS_TR,
            TPM2B_PUBLIC,
            TPM2B_SENSITIVE_CREATE,
            TPMS_SENSITIVE_CREATE,
            TPMT_PUBLIC,
        )

        if not 1 <= len(secret) <= 128:
            raise UsageError(f"a sealed secret must be 1..128 bytes, got {len(secret)}")
        if policy == "pcr":
            values = values if values is not None else self.pcr_read(selection)
            auth_policy = pol.policy_pcr_digest(selection, values, lock_pcr)
        elif policy == "signed":
            if not policy_pubkey_pem:
                raise UsageError("policy = signed needs the policy public key (tpm.policy_pubkey)")
            auth_policy = pol.policy_authorize_digest(policy_pubkey_pem)
        else:
            raise UsageError(f"unknown policy {policy!r} (pcr or signed)")
        exists = seal_handle in self.persistent_handles()
        if exists and not force:
            raise UsageError(
                f"a sealed object already exists at 0x{seal_handle:08x}",
                hint="use --force to replace it (images encrypted for the old secret "
                "become unreadable)",
            )
        srk = self._srk(srk_handle)
        pub, _ = TPMT_PUBLIC.unmarshal(_keyedhash_public(SEAL_ATTRS, auth_policy))
        sens = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(data=secret))
        session = self.salted_session(srk)
        obj = None
        try:
            with translate("sealing the master secret"):
                priv, public, *_ = self.ectx.create(srk, sens, TPM2B_PUBLIC(pub), session1=session)
                obj = self.ectx.load(srk, priv, public, session1=session)
            if exists:
                old = self._tr(seal_handle, "sealed object")
                with translate(f"removing the old sealed object 0x{seal_handle:08x}"):
                    self.ectx.evict_control(ESYS_TR.OWNER, old, seal_handle)
            with translate(f"persisting the sealed object at 0x{seal_handle:08x}"):
                self.ectx.evict_control(ESYS_TR.OWNER, obj, seal_handle)
        finally:
            self._flush(session)
            self._flush(obj)
        log.info(
            "sealed %d bytes at 0x%08x (%s policy over %s + lock PCR %d)",
            len(secret),
            seal_handle,
            policy,
            selection,
            lock_pcr,
        )

    def object_name(self, handle: int, what: str = "object") -> bytes:
        """The TPM name (nameAlg ‖ H(public area)) of a persistent object or NV index."""
        return bytes(self.ectx.tr_get_name(self._tr(handle, what)))

    def _check_pin(
        self, tr: Any, pinned: bytes | None, what: str, handle: int, setting: str
    ) -> None:
        if not pinned:
            return
        name = bytes(self.ectx.tr_get_name(tr))
        if name != pinned:
            raise IntegrityError(
                f"the {what} at 0x{handle:08x} is not the provisioned one (name {name.hex()}, "
                f"pinned {pinned.hex()} in {setting}): refusing to use it",
                hint="someone replaced it; if you re-provisioned on purpose, rebuild the "
                "initramfs with the new host-recover.conf.d/50-provisioned.conf",
            )

    def sealed_policy_digest(self, seal_handle: int) -> bytes:
        """authPolicy of the persisted sealed object."""
        obj = self._tr(seal_handle, "sealed object")
        with translate("reading the sealed object"):
            public, _, _ = self.ectx.read_public(obj)
        return bytes(public.publicArea.authPolicy)

    def unseal_master(
        self,
        *,
        srk_handle: int,
        seal_handle: int,
        selection: str,
        lock_pcr: int,
        policy: str,
        signed_policy: SignedPolicy | None = None,
        retries: int = 3,
        policy_pubkey_pem: bytes | None = None,
        min_policy_version: int = 0,
        policy_nv: int | None = None,
        srk_name: bytes | None = None,
        seal_name: bytes | None = None,
    ) -> bytes:
        """Unseal through a salted, response-encrypted policy session.

        ``policy = "signed"`` needs ``signed_policy`` and ``policy_pubkey_pem``; the file
        is checked in software (signatures, digest, ``min_policy_version``, the policy
        counter it names is ``policy_nv``) and then by the TPM (PolicyPCR, PolicyNV:
        policy counter <= its version, VerifySignature → PolicyAuthorize). Raises
        PolicyMismatch (exit 4). ``srk_name`` / ``seal_name``: the pinned TPM names;
        another object at either handle is an IntegrityError (exit 5), checked before the
        SRK salts a session and before the sealed object is used.
        """
        if policy == "signed":
            if signed_policy is None or policy_pubkey_pem is None:
                raise UsageError("policy = signed needs a signed policy file and its public key")
            signed_policy.verify(policy_pubkey_pem, min_version=min_policy_version)
            if signed_policy.lock_pcr != lock_pcr:
                raise PolicyMismatch(
                    f"signed policy covers lock PCR {signed_policy.lock_pcr}, not {lock_pcr}",
                    hint="sign the policy with the configured tpm.lock_pcr",
                )
            if policy_nv is not None and signed_policy.policy_nv != policy_nv:
                raise PolicyMismatch(
                    f"signed policy names policy counter 0x{signed_policy.policy_nv:08x}, "
                    f"not tpm.policy_nv 0x{policy_nv:08x}",
                    hint="sign the policy with the configured tpm.policy_nv",
                )
            selection = signed_policy.selection
        elif policy != "pcr":
            raise UsageError(f"unknown policy {policy!r} (pcr or signed)")
        srk = self._srk(srk_handle)
        self._check_pin(srk, srk_name, "storage key", srk_handle, "tpm.srk_name")
        sealed = self._tr(seal_handle, "sealed object")
        self._check_pin(sealed, seal_name, "sealed object", seal_handle, "tpm.seal_name")
        for attempt in range(max(1, retries + 1)):
            try:
                return self._unseal_once(
                    srk, sealed, selection, lock_pcr, signed_policy, policy_pubkey_pem
                )
            except PcrChanged:
                log.info("PCRs changed during unseal; retrying (%d)", attempt + 1)
        raise PolicyMismatch(
            f"PCRs kept changing during unseal ({retries} retries)",
            hint="something extends PCRs concurrently; retry later",
        )

    def _unseal_once(
        self,
        srk: Any,
        sealed: Any,
        selection: str,
        lock_pcr: int,
        signed: SignedPolicy | None,
        pubkey_pem: bytes | None,
    ) -> bytes:
        from tpm2_pytss import TPMA_SESSION, TPML_PCR_SELECTION, TSS2_Exception

        ticket = None
        if signed is not None and pubkey_pem is not None:
            ticket = self._verify_policy_signature(signed, pubkey_pem)
        sel = format_selection(pol.policy_selection(selection, lock_pcr))
        session = self.salted_session(srk, policy=True)
        flushed = False
        try:
            with translate("PolicyPCR"):
                self.ectx.policy_pcr(session, b"", TPML_PCR_SELECTION.parse(sel))
            if signed is not None:
                self._policy_counter_at_most(session, signed)
                try:
                    self.ectx.policy_authorize(
                        policy_session=session,
                        approved_policy=signed.approved_policy,
                        policy_ref=signed.policy_ref,
                        key_sign=signed.key_name,
                        check_ticket=ticket,
                    )
                except TSS2_Exception as e:
                    if getattr(e, "error", 0) == RC_VALUE:
                        raise PolicyMismatch(
                            "the current PCRs differ from the values in the signed policy",
                            hint="sign a policy for the current PCR values",
                        ) from None
                    with translate("PolicyAuthorize"):
                        raise
            # Response encryption only (Unseal has no command parameter to encrypt);
            # continueSession cleared: the session ends with this command on success.
            self.ectx.trsess_set_attributes(
                session,
                TPMA_SESSION.ENCRYPT,
                TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.ENCRYPT | TPMA_SESSION.DECRYPT,
            )
            with translate("unsealing the master secret"):
                data = self.ectx.unseal(sealed, session1=session)
            flushed = True
            return bytes(data)
        finally:
            if not flushed:
                self._flush(session)

    def _policy_counter_at_most(self, session: Any, signed: SignedPolicy) -> None:
        """PolicyNV: the TPM's policy counter <= the signed policy's version, checked by
        the TPM in the unseal session (revocation: `policy install` raises it)."""
        from tpm2_pytss import TPM2_EO, TPM2B_OPERAND, TSS2_Exception

        nv = self._tr(signed.policy_nv, "policy counter")
        try:
            self.ectx.policy_nv(
                nv,
                nv,
                session,
                TPM2B_OPERAND(pol.version_operand(signed.policy_version)),
                TPM2_EO.UNSIGNED_LE,
                0,
            )
        except TSS2_Exception as e:
            if getattr(e, "error", 0) == RC_POLICY:
                raise PolicyMismatch(
                    f"signed policy version {signed.policy_version} is revoked: the TPM's "
                    f"policy counter 0x{signed.policy_nv:08x} is above it",
                    hint="use the newest signed policy (`host-recover policy install`)",
                ) from None
            with translate("PolicyNV (policy counter)"):
                raise

    def _verify_policy_signature(self, signed: SignedPolicy, pubkey_pem: bytes) -> Any:
        """LoadExternal (OWNER hierarchy) + VerifySignature → a ticket for PolicyAuthorize."""
        from tpm2_pytss import (
            ESYS_TR,
            TPM2_ALG,
            TPM2_ST,
            TPM2B_PUBLIC,
            TPMT_PUBLIC,
            TPMT_SIGNATURE,
            TSS2_Exception,
        )

        from recover.tpm.quote import der_to_rs

        pub, _ = TPMT_PUBLIC.unmarshal(pol.ecc_public_area(pubkey_pem))
        r, s = der_to_rs(signed.signature)
        sig = TPMT_SIGNATURE(sigAlg=TPM2_ALG.ECDSA)
        sig.signature.ecdsa.hash = TPM2_ALG.SHA256
        sig.signature.ecdsa.signatureR = r
        sig.signature.ecdsa.signatureS = s
        digest = hashlib.sha256(signed.approved_policy + signed.policy_ref).digest()
        with translate("loading the policy key"):
            key = self.ectx.load_external(TPM2B_PUBLIC(pub), None, ESYS_TR.OWNER)
        try:
            ticket = self.ectx.verify_signature(key, digest, sig)
        except TSS2_Exception as e:
            if getattr(e, "error", 0) in (RC_SIGNATURE, RC_VALUE):
                raise PolicyMismatch("the TPM rejected the signed policy's signature") from None
            with translate("VerifySignature"):
                raise
        finally:
            self._flush(key)
        if int(ticket.tag) != TPM2_ST.VERIFIED:
            raise PolicyMismatch("the TPM did not issue a verification ticket")
        return ticket

    def has_object(self, handle: int) -> bool:
        try:
            self._tr(handle, "object")
        except TpmUnavailable:
            return False
        return True

    def evict(self, handle: int, what: str = "object") -> None:
        """EvictControl(OWNER): remove the persistent object at ``handle`` (deprovision;
        the owner auth, if set, through use_owner_auth)."""
        from tpm2_pytss import ESYS_TR

        obj = self._tr(handle, what)
        with translate(f"removing the {what} 0x{handle:08x} (owner auth)"):
            self.ectx.evict_control(ESYS_TR.OWNER, obj, handle)


def _keyedhash_public(attrs: int, auth_policy: bytes) -> bytes:
    """TPMT_PUBLIC of a sealed data object (keyedhash, NULL scheme, SHA-256 name)."""
    import struct

    return (
        struct.pack(">HHI", 0x0008, pol.ALG_SHA256, attrs)
        + struct.pack(">H", len(auth_policy))
        + auth_policy
        + struct.pack(">H", pol.ALG_NULL)  # TPMS_KEYEDHASH_PARMS: scheme NULL
        + struct.pack(">H", 0)  # unique: empty (the TPM fills it)
    )
