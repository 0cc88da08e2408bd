"""The TPM layer: ESAPI access (``Tpm``) and pure quote verification.

Importing this package does not import tpm2_pytss; the ``Tpm`` methods do.
"""

from __future__ import annotations

from recover.tpm.attest import QuoteInfo, verify_quote
from recover.tpm.device import Tpm

__all__ = ["QuoteInfo", "Tpm", "verify_quote"]
