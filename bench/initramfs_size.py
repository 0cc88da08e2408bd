"""Initramfs size with and without the host-recover module, for both init systems.

Builds four images with dracut 059 (zstd, no hostonly, the harness's module set and
drivers) from the same kernel and the same baked-in configuration, and reports the
module's cost as a delta and a ratio against the image without it, built in the same
run. Needs root (dracut). Reproduce:

    .venv/bin/python -m bench.initramfs_size --write-docs
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from testing.qemu import harness

from bench import perfdoc

SECTION = "## Initramfs size"
MIB = 1 << 20


def measure() -> dict[str, tuple[int, int]]:
    kern = harness.kernel()
    with tempfile.TemporaryDirectory(prefix="hr-size-") as tmp:
        conf = Path(tmp)
        (conf / "host-recover.conf").write_text("[tpm]\npcrs = sha256:0,2,4,7,9\n")
        out: dict[str, tuple[int, int]] = {}
        for init in ("shell", "systemd"):
            sizes = []
            for with_module in (False, True):
                img = harness.initramfs(kern, conf, with_module=with_module, init=init)
                sizes.append(img.stat().st_size)
            out[init] = (sizes[0], sizes[1])
    return out


def render(sizes: dict[str, tuple[int, int]]) -> str:
    lines = [
        SECTION,
        "",
        "dracut 059, zstd, `--no-hostonly`, the harness's module set and drivers, one Debian "
        f"kernel ({harness.kernel().version}); the payload bundled from the venv running the "
        "bench (tpm2-pytss built without FAPI by `make venv`). Reproduce:",
        "",
        f"    {perfdoc.reproduce('initramfs_size', '--write-docs')}",
        "",
        "| init system | without the module | with it | delta | ratio |",
        "|---|---|---|---|---|",
    ]
    for init, (without, with_mod) in sizes.items():
        lines.append(
            f"| {init} | {without / MIB:.1f} MiB | {with_mod / MIB:.1f} MiB | "
            f"+{(with_mod - without) / MIB:.1f} MiB | {with_mod / without:.2f}x |"
        )
    lines += [
        "",
        "The delta is Python 3.11 (interpreter, zipped sourceless stdlib), the payload, "
        "cryptography (its `_rust.abi3.so` with a bundled OpenSSL is ~14 MiB before "
        "compression), tpm2-pytss and libtss2 with the device TCTI.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-docs", action="store_true", help=f"update {SECTION!r}")
    args = ap.parse_args()
    text = render(measure())
    print(text)
    if args.write_docs:
        perfdoc.write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
