"""STAND-IN for ``host-recover boot`` (recover/boot.py) while the real payload is written.

NOT part of the product: the harness installs it in place of the real verb only when
recover/boot.py does not exist (``harness.uses_standin()``). It keeps the exit contract
of docs/boot.md so the dracut hooks, the harness and the e2e tests can be built and run
before the real payload lands:

* TPM: the one real signal, ``TPMA_STARTUP_CLEAR.orderly``, read with a raw
  TPM2_GetCapability on /dev/tpmrm0 (no TSS, stdlib only).
* verdict: mode=never → 0; mode=force or orderly=0 → recover; else clean → 0.
* recover: mount the store (label HRSTORE), loop-mount its PLAIN recovery.squashfs
  (no decryption, no unsealing: that is the real payload's job), tmpfs overlay on
  NEWROOT, copy the store's plain credentials to /run/credentials/host-recover/, write
  /run/host-recover/decision.json, exit 10.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time

STATE = "/run/host-recover"
CREDS = "/run/credentials/host-recover"
STORE_LABEL = "/dev/disk/by-label/HRSTORE"
T0 = time.monotonic()
TIMELINE: dict[str, float] = {}


def mark(phase: str) -> None:
    TIMELINE[phase] = round((time.monotonic() - T0) * 1000, 1)
    print(f"HR-PHASE {phase}", flush=True)


def wait_for(path: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return True
        time.sleep(0.1)
    return os.path.exists(path)


def orderly_bit(dev: str = "/dev/tpmrm0") -> int:
    # TPM2_GetCapability(TPM_CAP_TPM_PROPERTIES, TPM_PT_STARTUP_CLEAR, 1)
    cmd = struct.pack(">HII", 0x8001, 22, 0x17A) + struct.pack(">III", 6, 0x201, 1)
    fd = os.open(dev, os.O_RDWR)
    try:
        os.write(fd, cmd)
        rsp = os.read(fd, 4096)
    finally:
        os.close(fd)
    _tag, _size, rc = struct.unpack(">HII", rsp[:10])
    if rc != 0:
        raise OSError(f"TPM2_GetCapability rc=0x{rc:x}")
    prop, value = struct.unpack(">II", rsp[19:27])
    assert prop == 0x201, hex(prop)
    return value >> 31


def cmdline_opts(path: str = "/proc/cmdline") -> dict[str, str]:
    out: dict[str, str] = {}
    with open(path) as f:
        for word in f.read().split():
            key, _, value = word.partition("=")
            if key.startswith("rd.host_recover."):
                out[key[len("rd.host_recover.") :].replace("-", "_")] = value
    return out


def run(*argv: str) -> None:
    subprocess.run(list(argv), check=True)


def record(decision: dict[str, object]) -> None:
    os.makedirs(STATE, exist_ok=True)
    decision["timeline_ms"] = TIMELINE
    with open(os.path.join(STATE, "decision.json"), "w") as f:
        json.dump(decision, f, indent=1, sort_keys=True)
        f.write("\n")


def recover(newroot: str) -> None:
    if not wait_for(STORE_LABEL, 30):
        raise OSError("store device HRSTORE did not appear")
    store, image, upper = f"{STATE}/store", f"{STATE}/image", f"{STATE}/upper"
    for d in (store, image, upper):
        os.makedirs(d, exist_ok=True)
    run("mount", "-o", "ro", "-t", "ext4", STORE_LABEL, store)
    mark("unseal")  # stand-in: nothing is sealed
    run("mount", "-o", "loop,ro", "-t", "squashfs", f"{store}/recovery.squashfs", image)
    run("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", upper)
    os.makedirs(f"{upper}/rw", exist_ok=True)
    os.makedirs(f"{upper}/work", exist_ok=True)
    run(
        "mount",
        "-t",
        "overlay",
        "overlay",
        "-o",
        f"lowerdir={image},upperdir={upper}/rw,workdir={upper}/work",
        newroot,
    )
    mark("image-ready")
    os.makedirs(CREDS, mode=0o700, exist_ok=True)
    src = f"{store}/credentials"
    for name in sorted(os.listdir(src)) if os.path.isdir(src) else []:
        dst = os.path.join(CREDS, name)
        shutil.copyfile(os.path.join(src, name), dst)
        os.chmod(dst, 0o400)
    mark("credentials")


def main(argv: list[str]) -> int:
    newroot = argv[argv.index("--newroot") + 1] if "--newroot" in argv else "/sysroot"
    mark("payload-python")
    opts = cmdline_opts()
    mode = opts.get("mode", "auto")
    on_error = opts.get("on_error", "boot-normal")
    base: dict[str, object] = {"version": 1, "payload": "stand-in", "mode": mode}
    base["on_error"] = on_error
    if mode == "never":
        record({**base, "action": "normal", "verdict": "skipped"})
        return 0
    try:
        if not wait_for("/dev/tpmrm0", 30):
            raise OSError("/dev/tpmrm0 did not appear")
        orderly = orderly_bit()
    except OSError as e:
        record({**base, "action": "error", "reason": str(e)})
        print(f"host-recover (stand-in): error: {e}", file=sys.stderr)
        return 3
    verdict = "clean" if orderly else "crash"
    mark("verdict")
    base.update(evidence={"orderly": orderly}, verdict=verdict)
    if mode != "force" and orderly:
        record({**base, "action": "normal"})
        return 0
    try:
        recover(newroot)
    except (OSError, subprocess.CalledProcessError) as e:
        record({**base, "action": "error", "reason": str(e)})
        print(f"host-recover (stand-in): error: {e}", file=sys.stderr)
        return 5
    record({**base, "action": "recover"})
    return 10


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
