"""``Tpm``: the one object the rest of the program uses to talk to the TPM."""

from __future__ import annotations

from recover.tpm.nv import NvOps
from recover.tpm.pcr import PcrOps
from recover.tpm.quote import EnrolOps, QuoteOps
from recover.tpm.seal import SealOps


class Tpm(SealOps, NvOps, QuoteOps, EnrolOps, PcrOps):
    """``with Tpm.open(tcti) as t: ...`` — see docs/tpm.md for handles and policies."""
