"""The dracut module and hooks: lint, hook exit-code mapping (run under a real POSIX sh),
and an initramfs built by dracut 059 that carries the payload and the hooks."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HOOKS = REPO / "hooks"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck_clean() -> None:
    hooks = sorted(map(os.fspath, HOOKS.glob("*.sh")))
    subprocess.run(["shellcheck", "-s", "sh", *hooks], check=True, capture_output=True)
    module = sorted(map(os.fspath, (REPO / "dracut-module").glob("*.sh")))
    subprocess.run(["shellcheck", "-s", "bash", *module], check=True, capture_output=True)


def _run_lib(tmp_path: Path, rc: int, on_error: str | None, cmdline: str = "") -> str:
    """Source hooks/host-recover-lib.sh in dash with a fake payload exiting ``rc``."""
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    if on_error is not None:
        (state / "on-error").write_text(on_error + "\n")
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    fake = bindir / "host-recover"
    fake.write_text(f'#!/bin/sh\necho payload "$@"\nexit {rc}\n')
    fake.chmod(0o755)
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    lib = (HOOKS / "host-recover-lib.sh").read_text()
    lib = lib.replace("HR_STATE=/run/host-recover", f"HR_STATE={state}")
    lib = lib.replace("/proc/cmdline", os.fspath(tmp_path / "cmdline"))
    lib = lib.replace("/dev/console", "/dev/stdout").replace("/dev/kmsg", "/dev/null")
    script = lib + '\nhr_run /nonexistent-newroot\necho "ACTION=$HR_ACTION RC=$HR_RC"\n'
    proc = subprocess.run(
        ["dash" if shutil.which("dash") else "sh", "-c", script],
        capture_output=True,
        text=True,
        env={"PATH": f"{bindir}:/usr/bin:/bin"},
        timeout=30,
        check=True,
    )
    return proc.stdout


@pytest.mark.parametrize(
    ("rc", "on_error", "cmdline", "action"),
    [
        (0, None, "", "normal"),
        (10, None, "", "recover"),
        (4, "boot-normal", "", "normal"),
        (5, "halt", "", "halt"),
        (3, "shell", "", "shell"),
        (1, None, "rd.host_recover.on_error=halt", "halt"),  # payload died before recording
        (1, None, "", "normal"),  # nothing said: boot normally
        (11, "shell", "", "shell"),  # hold
        (11, "boot-normal", "", "halt"),  # hold never boots the normal root silently
    ],
)
def test_hook_maps_exit_codes(
    tmp_path: Path, rc: int, on_error: str | None, cmdline: str, action: str
) -> None:
    out = _run_lib(tmp_path, rc, on_error, cmdline)
    assert "payload boot --newroot /nonexistent-newroot" in out
    assert f"ACTION={action} RC={rc}" in out
    assert f"HR-ACTION {action} rc={rc}" in out


@pytest.mark.integration
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
        "usr/lib/python311.zip",
        "usr/lib/host-recover/site/recover/boot.pyc",
        "libtss2-tcti-device.so.0",
        "etc/host-recover/host-recover.conf",
        "hooks/pre-mount/50-host-recover-pre-mount.sh",
        "hooks/cmdline/30-host-recover-cmdline.sh",
        "lib/host-recover-lib.sh",
    ):
        assert needle in listing, needle
    assert "/work/" not in listing.replace("--tmpdir", "").split("========")[-1]


@pytest.mark.integration
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
