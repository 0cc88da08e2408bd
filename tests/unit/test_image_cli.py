"""`host-recover image ...` through `python -m recover`: exit codes 0/2/5 and outputs."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HOST_RECOVER_CONFIG="/nonexistent/host-recover.conf")
    return subprocess.run(
        [sys.executable, "-m", "recover", *map(str, argv)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.fixture(params=["1", "2"], ids=["v1", "v2"])
def setup(tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    key = tmp_path / "image.key"
    key.write_bytes(os.urandom(32))
    plain = tmp_path / "root.squashfs"
    plain.write_bytes(b"hsqs" + os.urandom(50_000))
    return {"key": key, "plain": plain, "img": tmp_path / "root.hri", "dir": tmp_path,
            "fmt": request.param}  # fmt: skip


def test_create_inspect_verify_decrypt(setup: dict[str, Any]) -> None:
    s = setup
    r = run("image", "create", s["plain"], s["img"], "--key-file", s["key"],
            "--image-version", "7", "--chunk-size", "4096", "--format", s["fmt"])  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = run("image", "inspect", s["img"], "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    units = "chunks" if s["fmt"] == "1" else "data_blocks"  # 4096-byte chunks or blocks
    assert info["image_version"] == 7 and info[units] == 13
    assert info["format_version"] == int(s["fmt"])
    assert info["header_authenticated"] is False
    r = run("image", "inspect", s["img"], "--json", "--key-file", s["key"])
    assert r.returncode == 0 and json.loads(r.stdout)["header_authenticated"] is True
    assert info["payload_type"] == "squashfs" and info["plaintext_length"] == 50_004
    r = run("image", "verify", s["img"], "--key-file", s["key"])
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr
    out = s["dir"] / "out.img"
    r = run("image", "decrypt", s["img"], out, "--key-file", s["key"], "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == s["plain"].read_bytes()


def test_integrity_failures_exit_5(setup: dict[str, Any]) -> None:
    s = setup
    assert run("image", "create", s["plain"], s["img"], "--key-file", s["key"],
               "--chunk-size", "4096", "--format", s["fmt"]).returncode == 0  # fmt: skip
    out = s["dir"] / "out.img"
    wrong = s["dir"] / "wrong.key"
    wrong.write_bytes(os.urandom(32))
    r = run("image", "decrypt", s["img"], out, "--key-file", wrong)
    assert r.returncode == 5 and "wrong key" in r.stderr and "Traceback" not in r.stderr
    r = run("image", "inspect", s["img"], "--key-file", wrong)
    assert r.returncode == 5 and "wrong key" in r.stderr
    r = run("image", "verify", s["img"], "--key-file", s["key"], "--min-version", "2")
    assert r.returncode == 5 and "older than the minimum 2" in r.stderr
    data = bytearray(s["img"].read_bytes())
    data[len(data) // 2] ^= 1
    s["img"].write_bytes(bytes(data))
    r = run("image", "decrypt", s["img"], out, "--key-file", s["key"])
    assert r.returncode == 5 and re.search("failed authentication|does not match", r.stderr)
    assert not out.exists()
    r = run("image", "verify", s["img"], "--key-file", s["key"])
    assert r.returncode == 5 and "tampered" in r.stderr, r.stderr
    assert sorted(p.name for p in s["dir"].iterdir()) == sorted(
        ["image.key", "root.squashfs", "root.hri", "wrong.key"]
    )


def test_usage_errors_exit_2(setup: dict[str, Any]) -> None:
    s = setup
    r = run("image", "inspect", s["dir"] / "missing.hri")
    assert r.returncode == 2 and "cannot open" in r.stderr
    short = s["dir"] / "short.key"
    short.write_bytes(b"x" * 31)
    r = run("image", "create", s["plain"], s["img"], "--key-file", short)
    assert r.returncode == 2 and "exactly 32" in r.stderr
    raw = s["dir"] / "data.bin"
    raw.write_bytes(os.urandom(100))
    r = run("image", "create", raw, s["img"], "--key-file", s["key"])
    assert r.returncode == 2 and "--payload-type raw" in r.stderr
    r = run("image", "create", raw, s["img"], "--key-file", s["key"], "--chunk-size", "10")
    assert r.returncode == 2 and "chunk size" in r.stderr
    assert not s["img"].exists()


def test_progress_only_on_a_terminal(setup: dict[str, Any]) -> None:
    s = setup
    assert run("image", "create", s["plain"], s["img"], "--key-file", s["key"],
               "--chunk-size", "4096", "--format", s["fmt"]).returncode == 0  # fmt: skip
    argv = [sys.executable, "-m", "recover", "image", "verify", str(s["img"]),
            "--key-file", str(s["key"])]  # fmt: skip
    r = run(*argv[3:])
    assert r.returncode == 0 and "verify:" not in r.stderr
    pid, fd = pty.fork()
    if pid == 0:  # child: stdio on the pty
        try:
            os.environ["HOST_RECOVER_CONFIG"] = "/nonexistent/host-recover.conf"
            os.execv(sys.executable, argv)
        finally:
            os._exit(127)
    out = b""
    for _ in range(10_000):  # bounded: ends at EOF (EIO on Linux when the child exits)
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        out += data
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert b"verify: 100%" in out and b"OK" in out
