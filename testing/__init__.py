"""Support code for tests, benchmarks and the demo: importable, with tests of its own.

swtpm       a real software TPM on loopback (start, power cut, orderly reboot)
peersim     simulated peers: the product's agent with software-signed quotes
qemu/       the QEMU lab: artefacts (harness), one VM (vm), host + peers (lab)

Nothing here is part of the product: recover/ never imports it.
"""
