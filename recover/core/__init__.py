"""Pure core: stdlib and recover.errors only; no TPM, sockets, subprocess or argparse."""
