"""The QEMU lab: build a boot of host-recover from nothing (harness), run one VM with its
own swtpm and firmware state (vm), and a host with its failure domain's peers (lab).

Its inputs and caches stay where they were: the guest scripts in qemu-env/, artefacts in
qemu-env/build (HOST_RECOVER_QEMU_BUILD), the kernel .deb in /var/cache/host-recover.
"""
