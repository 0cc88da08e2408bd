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


def test_payload_runs_in_the_initramfs_root(tmp_path: Path) -> None:
    """The image's own files, nothing of this machine's: unpack it and run the wrapper
    and the payload's imports (lazy ones too) under chroot. This is what proves the
    interpreter finds the bundle's stdlib directory as its prefix and that the DT_NEEDED
    closure dracut installed is complete, short of a QEMU boot."""
    if os.geteuid() != 0 or shutil.which("dracut") is None:
        pytest.skip("needs root and dracut")
    from testing.qemu import harness

    img = harness.initramfs(harness.kernel(), harness.default_confdir())
    root = tmp_path / "root"
    root.mkdir()
    payload = subprocess.run(
        ["/usr/lib/dracut/skipcpio", os.fspath(img)], capture_output=True, check=True, timeout=300
    ).stdout
    cpio = subprocess.run(["zstd", "-d", "-q"], input=payload, capture_output=True, check=True)
    subprocess.run(["cpio", "-id", "--quiet"], input=cpio.stdout, cwd=root, check=True)
    version = subprocess.run(
        ["chroot", os.fspath(root), "/usr/bin/host-recover", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert version.returncode == 0 and version.stdout.startswith("host-recover"), version
    probe = (
        "import sys; sys.path.insert(0, '/usr/lib/host-recover/site')\n"
        "import recover.cli.main, recover.boot.payload, recover.boot.gather\n"
        "import recover.boot.recovery, recover.store.unseal, recover.store.image\n"
        "import recover.store.credentials, recover.peers.client, recover.peers.server\n"
        "import tpm2_pytss, concurrent.futures.thread\n"
        "from cryptography.hazmat.primitives.ciphers.aead import AESGCM\n"
        "AESGCM(bytes(32)).encrypt(bytes(12), b'x', None)\n"
        "print(sys.prefix, [m.__file__ for m in (recover, tpm2_pytss)])\n"
    )
    run = subprocess.run(
        [
            "chroot",
            os.fspath(root),
            "/usr/bin/env",
            "-i",
            "/usr/bin/python3.11",
            "-I",
            "-S",
            "-B",
            "-c",
            probe,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("/usr ["), run.stdout
