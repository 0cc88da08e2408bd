"""recover.boot.devmapper's buffers (<linux/dm-ioctl.h>) and its create sequence, at
the ioctl boundary: which requests, which flags, what is wiped, what a failure leaves.
The mapping itself runs in QEMU (tests/e2e/test_e2e_imagev2.py): this host's kernel has
no device-mapper."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from recover.boot import devmapper as dm


def test_structures_have_the_kernels_sizes_and_requests() -> None:
    assert dm._DM_IOCTL.size == 312  # sizeof(struct dm_ioctl)
    assert dm._TARGET_SPEC.size == 40  # sizeof(struct dm_target_spec)
    # DM_DEV_CREATE = _IOWR(0xfd, 3, struct dm_ioctl), as libdevmapper computes it
    assert dm._request(dm.DM_DEV_CREATE) == 0xC138FD03
    assert dm._request(dm.DM_TABLE_LOAD) == 0xC138FD09
    assert dm._request(dm.DM_DEV_SUSPEND) == 0xC138FD06


def test_table_buffer_layout() -> None:
    params = b"1 /dev/loop0 /dev/loop0 4096 4096 16 16 sha256 ab cd"
    buf = dm.pack("host-recover-verity", dm.DM_READONLY_FLAG, (128, "verity", params))
    f = dm._DM_IOCTL.unpack_from(buf)
    assert f[:3] == (4, 0, 0)
    assert f[3] == len(buf) == dm.BUFFER > 1024  # the kernel reads this buffer, no copy
    assert f[4] == 312 and f[5] == 1 and f[7] == dm.DM_READONLY_FLAG
    assert f[11].rstrip(b"\0") == b"host-recover-verity"
    start, length, status, nxt, kind = dm._TARGET_SPEC.unpack_from(buf, 312)
    assert (start, length, status, kind.rstrip(b"\0")) == (0, 128, 0, b"verity")
    assert nxt % 8 == 0 and nxt >= 40 + len(params) + 1
    assert bytes(buf[352 : 352 + len(params) + 1]) == params + b"\0"


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("", None),
        ("a/b", None),
        ("x" * 128, None),
        ("ok", (8, "crypt", b"bad\0param")),
        ("ok", (8, "crypt", b"p" * 4000)),
        ("ok", (8, "a-very-long-target-type", b"p")),
    ],
)
def test_malformed_requests_are_refused(name: str, target: tuple[int, str, bytes] | None) -> None:
    with pytest.raises(ValueError):
        dm.pack(name, 0, target)


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bytes]]:
    seen: list[tuple[int, bytes]] = []
    control = tmp_path / "control"
    control.write_bytes(b"")
    monkeypatch.setattr(dm, "CONTROL", str(control))
    monkeypatch.setattr(dm, "_node", lambda name, dev: f"/dev/mapper/{name}:{dev:x}")
    return seen


def _fake(seen: list[tuple[int, bytes]], fail_on: int | None = None):  # noqa: ANN202
    def ioctl(ctl: int, nr: int, buf: bytearray) -> None:
        seen.append((nr, bytes(buf)))
        if nr == fail_on:
            raise OSError(22, "Invalid argument")
        if nr == dm.DM_DEV_CREATE:
            struct.pack_into("=Q", buf, 40, (253 << 8) | 1)  # the kernel's answer: dev

    return ioctl


def test_create_sequence_with_a_key_wipes_every_buffer(
    calls: list[tuple[int, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dm, "_ioctl", _fake(calls))
    key = bytearray(b"0123456789abcdef" * 8)
    params = bytearray(b"aes-xts-plain64 " + key + b" 0 /dev/mapper/v 0")
    path = dm.create("host-recover-root", 64, "crypt", params, secure=True)
    assert path == "/dev/mapper/host-recover-root:fd01"
    assert [nr for nr, _ in calls] == [dm.DM_DEV_CREATE, dm.DM_TABLE_LOAD, dm.DM_DEV_SUSPEND]
    load = dm._DM_IOCTL.unpack_from(calls[1][1])
    assert load[7] == dm.DM_READONLY_FLAG | dm.DM_SECURE_DATA_FLAG
    assert bytes(key) in calls[1][1]  # what the kernel was given
    resume = dm._DM_IOCTL.unpack_from(calls[2][1])
    assert resume[7] & dm.DM_SUSPEND_FLAG == 0  # resume: the loaded table goes live
    assert params == bytearray(len(params))  # the caller's copy is wiped


def test_create_without_a_key_is_read_only_but_not_secure(
    calls: list[tuple[int, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dm, "_ioctl", _fake(calls))
    params = bytearray(b"1 /dev/loop0 /dev/loop0 4096 4096 16 16 sha256 ab cd")
    dm.create("host-recover-verity", 128, "verity", params, secure=False)
    assert dm._DM_IOCTL.unpack_from(calls[1][1])[7] == dm.DM_READONLY_FLAG
    assert params != bytearray(len(params))  # not key material: left as given


@pytest.mark.parametrize("fail_on", [dm.DM_TABLE_LOAD, dm.DM_DEV_SUSPEND])
def test_a_failed_load_or_resume_removes_the_device(
    calls: list[tuple[int, bytes]], monkeypatch: pytest.MonkeyPatch, fail_on: int
) -> None:
    monkeypatch.setattr(dm, "_ioctl", _fake(calls, fail_on))
    params = bytearray(b"key material")
    with pytest.raises(OSError):
        dm.create("host-recover-root", 64, "crypt", params, secure=True)
    assert calls[-1][0] == dm.DM_DEV_REMOVE
    assert dm._DM_IOCTL.unpack_from(calls[-1][1])[11].rstrip(b"\0") == b"host-recover-root"
    assert params == bytearray(len(params))


def test_a_missing_control_device_still_wipes_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dm, "CONTROL", str(tmp_path / "no-control"))
    monkeypatch.setattr(dm, "_ioctl", lambda *_a: pytest.fail("no ioctl without control"))
    params = bytearray(b"aes-xts-plain64 " + b"k" * 64 + b" 0 /dev/mapper/v 0")
    with pytest.raises(FileNotFoundError):
        dm.create("host-recover-root", 64, "crypt", params, secure=True)
    assert params == bytearray(len(params))
