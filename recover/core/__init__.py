"""Pure core: no TPM, sockets, subprocess or argparse; stdlib, recover.errors, recover.settings and recover.config (cryptography only inside functions)."""
