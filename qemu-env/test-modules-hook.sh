#!/bin/sh
# Test environment only (dracut --include): the test normal root has no kernel modules
# of its own, so load what it needs (ext4 for the store disk) before switch_root.
modprobe -q ext4
