"""The dracut module and hooks: lint, and the hooks doing what the payload wrote (run under
a real POSIX sh). The initramfs dracut 059 builds with them: tests/integration/test_initramfs.py."""

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


def _run_lib(tmp_path: Path, rc: int, action: str | None) -> str:
    """Source hooks/host-recover-lib.sh in dash with a fake payload that writes ``action``
    (or nothing) to the state directory and exits ``rc``."""
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    fake = bindir / "host-recover"
    write = f'echo {action} > "{state}/action"\n' if action is not None else ""
    fake.write_text(f'#!/bin/sh\necho payload "$@"\n{write}exit {rc}\n')
    fake.chmod(0o755)
    lib = (HOOKS / "host-recover-lib.sh").read_text()
    lib = lib.replace("HR_STATE=/run/host-recover", f"HR_STATE={state}")
    lib = lib.replace("/proc/cmdline", os.fspath(tmp_path / "cmdline"))
    # securityfs "mounted" with a TPM log: the lib mounts nothing on this machine
    (tmp_path / "securityfs" / "tpm0").mkdir(parents=True, exist_ok=True)
    lib = lib.replace("HR_SECURITYFS=/sys/kernel/security", f"HR_SECURITYFS={tmp_path}/securityfs")
    assert f"HR_SECURITYFS={tmp_path}/securityfs" in lib
    (tmp_path / "cmdline").write_text("\n")
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
    ("rc", "written", "action"),
    [
        (0, "normal", "normal"),
        (10, "recover", "recover"),
        (4, "normal", "normal"),  # a failure after the lock, on_error = boot-normal
        (5, "halt", "halt"),
        (3, "shell", "shell"),
        (11, "halt", "halt"),  # hold
        (1, None, "halt"),  # the payload died before writing an action: not locked
        (127, None, "halt"),  # the interpreter never ran
        (0, "reboot-now", "halt"),  # an action the hooks do not know
    ],
)
def test_hook_does_what_the_payload_wrote(
    tmp_path: Path, rc: int, written: str | None, action: str
) -> None:
    out = _run_lib(tmp_path, rc, written)
    assert "payload boot --newroot /nonexistent-newroot" in out
    assert f"ACTION={action} RC={rc}" in out
    assert f"HR-ACTION {action} rc={rc}" in out
