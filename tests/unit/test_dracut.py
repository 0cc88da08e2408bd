"""The dracut module and hooks: lint, hook exit-code mapping (run under a real POSIX sh).
The initramfs dracut 059 builds with them: tests/integration/test_initramfs.py."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
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
