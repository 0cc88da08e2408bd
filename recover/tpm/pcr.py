"""PCR banks and the lock: extend a PCR in every allocated bank and verify it."""

from __future__ import annotations

import hashlib

from recover.core.pcrsel import HASH_SIZES, format_selection
from recover.errors import TpmError
from recover.tpm.core import TpmCore, _alg_id, translate


class PcrOps(TpmCore):
    def pcr_banks(self) -> list[str]:
        """The hash algorithms of the PCR banks that have at least one PCR allocated
        (that the program knows: sha1, sha256, sha384, sha512)."""
        from tpm2_pytss import TPM2_CAP

        with translate("reading the PCR allocation"):
            _, data = self.ectx.get_capability(TPM2_CAP.PCRS, 0, 1)
        names = {v: k for k, v in ((a, _alg_id(a)) for a in HASH_SIZES)}
        banks = []
        for s in data.data.assignedPCR.pcrSelections[: data.data.assignedPCR.count]:
            bitmap = bytes(s.pcrSelect)[: s.sizeofSelect]
            if int(s.hash) in names and any(bitmap):
                banks.append(names[int(s.hash)])
        return banks

    def extend_all_banks(self, pcr: int, data: bytes) -> dict[str, bytes]:
        """Extend ``pcr`` with the digest of ``data`` in every allocated bank, in one
        PCR_Extend, then read every bank back and check the new value is exactly
        ``H(old ‖ H(data))``: a bank left out or an extend that did not happen raises
        TpmError. Returns the new values by bank."""
        from tpm2_pytss import ESYS_TR, TPML_DIGEST_VALUES, TPMT_HA

        banks = self.pcr_banks()
        if not banks:
            raise TpmError("the TPM reports no PCR bank", hint="check the TPM's PCR allocation")
        selection = format_selection(tuple((b, (pcr,)) for b in banks))
        before = self.pcr_read(selection)
        digests = []
        for bank in banks:
            ha = TPMT_HA(hashAlg=_alg_id(bank))
            setattr(ha.digest, bank, hashlib.new(bank, data).digest())
            digests.append(ha)
        with translate(f"extending PCR {pcr} in {', '.join(banks)}"):
            self.ectx.pcr_extend(ESYS_TR(ESYS_TR.PCR0 + pcr), TPML_DIGEST_VALUES(digests))
        after = self.pcr_read(selection)
        out = {}
        for bank in banks:
            want = hashlib.new(bank, before[bank][pcr] + hashlib.new(bank, data).digest()).digest()
            got = after.get(bank, {}).get(pcr)
            if got != want:
                raise TpmError(
                    f"PCR {bank}:{pcr} did not take the lock extension",
                    hint="the TPM may be failing: do not trust this boot's secure store",
                )
            out[bank] = got
        return out
