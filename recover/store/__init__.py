"""Secure-store I/O shared by the boot payload and the CLI: unseal, provision, the image
and credential store files, key files."""
