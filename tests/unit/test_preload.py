"""recover.boot.preload: one background modprobe for the recovery's kernel modules, the
store's file system first; the image step's bounded wait says whether it loaded them.
modprobe and blkid are stand-in scripts on PATH (this host's kernel is not touched)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from recover.boot import preload


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(preload, "_thread", None)
    monkeypatch.setattr(preload, "_result", {})
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    return tmp_path


def script(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_not_started_is_no_figure(tools: Path) -> None:
    assert preload.wait(timeout=1) is None


def test_store_file_system_first_then_the_image_modules(tools: Path) -> None:
    script(tools / "blkid", "echo ext4")
    script(tools / "modprobe", f'echo "$@" > {tools}/argv')
    preload.start("/dev/disk/by-id/store")
    preload.start("/dev/other")  # once per process
    assert preload.wait(timeout=60) is not None
    argv = (tools / "argv").read_text().split()
    assert argv == ["-a", "-q", "fs-ext4", *preload.MODULES]


def test_failed_modprobe_is_no_figure_and_says_why(
    tools: Path, caplog: pytest.LogCaptureFixture
) -> None:
    script(tools / "blkid", "exit 2")  # no file system found: no fs- name
    script(tools / "modprobe", f'echo "$@" > {tools}/argv; exit 1')
    preload.start("/dev/missing")
    assert preload.wait(timeout=60) is None
    assert (tools / "argv").read_text().split() == ["-a", "-q", *preload.MODULES]
    assert "modprobe exit 1" in caplog.text


@pytest.mark.parametrize("out", ["ext4 --force", "../x", "ext4\nvfat", "", "fs-ext4;"])
def test_a_strange_file_system_name_is_not_passed_on(out: str) -> None:
    assert preload.names(out) == list(preload.MODULES)
    assert preload.names("vfat") == ["fs-vfat", *preload.MODULES]


def test_cipher_warm_up_binds_af_alg_and_reports_what_worked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """This host may have no AF_ALG (a container): the names that bound are reported, a
    failure is no error. The guest kernel's answer is checked in QEMU (test_e2e_imagev2)."""
    import socket

    bound: list[tuple[str, str]] = []

    class Alg:
        def __init__(self, family: int, kind: int, proto: int) -> None:
            assert (family, kind) == (socket.AF_ALG, socket.SOCK_SEQPACKET)

        def __enter__(self) -> Alg:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def bind(self, addr: tuple[str, str]) -> None:
            if addr[1].startswith("nosuch"):
                raise FileNotFoundError(2, "No such file or directory")
            bound.append(addr)

    monkeypatch.setattr(socket, "socket", Alg)
    done = preload.instantiate((("skcipher", "xts(aes)"), ("skcipher", "nosuch(aes)")))
    assert done == ["xts(aes)"] and bound == [("skcipher", "xts(aes)")]


def test_cipher_warm_up_on_this_kernel_never_raises() -> None:
    assert set(preload.instantiate(preload.CIPHERS)) <= {"xts(aes)"}


def test_the_preload_reports_the_ciphers_it_built(tools: Path) -> None:
    script(tools / "blkid", "exit 2")
    script(tools / "modprobe", "exit 0")
    preload.start("")
    assert preload.wait(timeout=60) is not None
    assert set(preload.warmed()) <= {"xts(aes)"}
