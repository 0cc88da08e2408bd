"""The TPM layer: the only importer of tpm2_pytss (``Tpm``); TPM return codes are
translated into recover.errors here and nowhere else.

Importing this package does not import tpm2_pytss; the ``Tpm`` methods do.
"""

from __future__ import annotations

from recover.tpm.device import Tpm

__all__ = ["Tpm"]
