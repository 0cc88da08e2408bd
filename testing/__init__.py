"""Support code for tests, benchmarks and the QEMU lab (not shipped in the initramfs)."""
