"""Support code for tests, benchmarks and the demo: importable, with tests of its own.

swtpm       a real software TPM on loopback (start, power cut, orderly reboot)
peersim     simulated peers: the product's agent with software-signed quotes
tpmwire     a loopback relay in front of swtpm that timestamps the first TPM command
tpmrelay    a real-TPM model in front of swtpm: per-command latency, transient return codes
importtime  the ``python -X importtime`` report as rows with their importers
trees       checkouts of the project and how to run the payload from each of them
waiting     bounded waits for an observable event (tests wait for events, not time)
qemu/       the QEMU lab: artefacts (harness), one VM (vm), host + peers (lab)

Nothing here is part of the product: recover/ never imports it.
"""
