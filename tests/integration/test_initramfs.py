"""An initramfs built by dracut 059 (root) with our module: it carries the payload and
the hooks, and a rebuild from the same inputs is byte-identical (PCR 9)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def test_initramfs_carries_payload_and_hooks() -> None:
    if os.geteuid() != 0 or shutil.which("dracut") is None:
        pytest.skip("needs root and dracut")
    from testing.qemu import harness

    kern = harness.kernel()
    img = harness.initramfs(kern, harness.default_confdir())
    listing = subprocess.run(
        ["lsinitrd", os.fspath(img)],
        capture_output=True,
        text=True,
        errors="replace",
        check=True,
        timeout=300,
    ).stdout
    for needle in (
        "usr/bin/host-recover",
        "usr/bin/python3.11",
        "usr/lib/python3.11/argparse.pyc",
        "usr/lib/host-recover/site/recover/boot/payload.pyc",
        "libtss2-tcti-device.so.0",
        "etc/host-recover/host-recover.conf",
        "hooks/pre-mount/50-host-recover-pre-mount.sh",
        "hooks/cmdline/30-host-recover-cmdline.sh",
        "lib/host-recover-lib.sh",
    ):
        assert needle in listing, needle
    assert "/work/" not in listing.replace("--tmpdir", "").split("========")[-1]


def test_initramfs_rebuild_is_byte_identical(tmp_path: Path) -> None:
    """PCR 9 measures the initramfs bytes: a rebuild from the same inputs must not move it."""
    if os.geteuid() != 0 or shutil.which("dracut") is None:
        pytest.skip("needs root and dracut")
    from testing.qemu import harness

    kern = harness.kernel()
    first = harness.initramfs(kern, harness.default_confdir())
    again = harness.initramfs(kern, harness.default_confdir(), name="repro-check.img")
    try:
        assert first.read_bytes() == again.read_bytes()
    finally:
        again.unlink(missing_ok=True)
        again.with_name(again.name + ".stamp").unlink(missing_ok=True)
