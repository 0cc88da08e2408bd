"""host-recover: early-boot host recovery from a TPM-sealed secure store."""

__version__ = "0.1.0"
