"""recover.boot.dmimage against this host's real kernel: the logon key in a session
keyring of its own (the kernel keeps it, user space cannot read it back, it is gone once
invalidated), and a failed mapping that leaves no loop device and no key bytes behind.
The mapping itself needs device-mapper: tests/e2e/test_e2e_imagev2.py boots it in QEMU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recover.core.imageformat import HeaderV2
from recover.errors import SystemFault
from recover.store import image

_CHILD = r"""
import json, subprocess
from recover.boot.dmimage import _Keyring, KEY_DESCRIPTION
ring = _Keyring()
ring.join_session()
serial = ring.add_logon(KEY_DESCRIPTION, bytearray(b"k" * 64))
def keyctl(*a):
    p = subprocess.run(["keyctl", *a], capture_output=True, text=True)
    return p.returncode, p.stdout.strip(), p.stderr.strip()
out = {"serial": serial, "describe": keyctl("describe", str(serial)),
       "read": keyctl("read", str(serial)), "pipe": keyctl("pipe", str(serial))}
ring.invalidate(serial)
out["after"] = keyctl("describe", str(serial))
print(json.dumps(out))
"""


def test_logon_key_in_own_session_keyring_is_unreadable_and_invalidated() -> None:
    if shutil.which("keyctl") is None:
        pytest.fail("keyctl (keyutils) is needed to look at the key from outside")
    env = dict(os.environ, PYTHONPATH=os.fspath(Path(__file__).resolve().parents[2]))
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    rc, text, _ = out["describe"]
    assert rc == 0 and text.endswith("logon: host-recover:image-xts"), text
    for what in ("read", "pipe"):  # a logon key's payload never goes back to user space
        rc, text, _ = out[what]
        assert rc != 0 and "kkkk" not in text
    assert out["after"][0] != 0  # invalidated: gone
    # and the key never was in this (the parent's) keyrings
    show = subprocess.run(["keyctl", "show", "@s"], capture_output=True, text=True, timeout=30)
    assert "host-recover" not in show.stdout


def _dm_usable() -> bool:
    proc = subprocess.run(["dmsetup", "version"], capture_output=True, text=True, timeout=30)
    return proc.returncode == 0 and "Driver version" in proc.stdout


def _v2_image(tmp_path: Path) -> tuple[Path, HeaderV2, bytes]:
    """A v2 container of 50 kB of random data: its path, header and XTS key."""
    src = tmp_path / "p.raw"
    src.write_bytes(os.urandom(50_000))
    img = tmp_path / "i.hri"
    key = os.urandom(32)
    image.encrypt_file(src, img, key, image_version=1, payload_type="raw")
    header, xts = image.open_v2(img, key)
    return img, header, xts


def test_failed_mapping_leaves_no_loop_and_wipes_the_key(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("losetup") is None or shutil.which("dmsetup") is None:
        pytest.fail("needs root, losetup and dmsetup")
    if _dm_usable():
        pytest.skip("device-mapper works here: the failure is not reproducible this way")
    from recover.boot import dmimage

    img, header, xts = _v2_image(tmp_path)
    secret = bytearray(xts)
    with pytest.raises(SystemFault, match="device-mapper|dmsetup"):
        dmimage.map_image(os.fspath(img), header, secret)
    assert secret == bytearray(len(xts))  # wiped
    left = subprocess.run(["losetup", "-j", os.fspath(img)], capture_output=True, text=True)
    assert left.stdout.strip() == ""


@pytest.mark.parametrize("control", ["real", "missing"])
def test_the_loop_device_holds_exactly_the_data_area(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, control: str
) -> None:
    """The loop under dm-verity: read-only, the container's data area (hash tree and
    ciphertext) and nothing else, by ioctl, or by losetup where /dev/loop-control is
    missing (the loop driver not loaded yet)."""
    from recover.boot import dmimage, sysmount

    if control == "missing":
        monkeypatch.setattr(sysmount, "LOOP_CONTROL", os.fspath(tmp_path / "loop-control"))
    img, header, _ = _v2_image(tmp_path)
    tools: list[str] = []
    loop = dmimage._attach_loop(os.fspath(img), header, tools)
    assert tools == ([] if control == "real" else ["losetup"])
    try:
        name = os.path.basename(loop)
        assert Path(f"/sys/block/{name}/ro").read_text().strip() == "1"
        with open(loop, "rb") as d:
            seen = d.read()
        data = img.read_bytes()[header.data_offset : header.container_length]
        assert seen == data and len(data) > 0
    finally:
        sysmount.detach_loop(loop)
    assert not Path(f"/sys/block/{os.path.basename(loop)}/loop").exists()
