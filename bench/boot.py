"""Boot timeline of the clean and the recovery path, and the initramfs size cost.

Boots the lab of qemu-env/ (TCG unless KVM works): one clean boot and one recovery
boot after a correlated power loss (host + 2 of 3 peers), each judged by its console.
Phases are console arrival times since QEMU start; the payload's own steps come from
its decision record. The initramfs is built with and without the host-recover module
(same kernel, same dracut modules otherwise), and the two sizes are compared.

    python bench/boot.py [--runs N] [--write docs/performance.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.fspath(REPO / "qemu-env"))

import harness  # noqa: E402
import lab as labmod  # noqa: E402
import vm as vmmod  # noqa: E402

PHASES = ("kernel", "initramfs", "payload-start", "payload-exit", "switch-root", "new-root")
STEPS = ("tpm-wait", "decide", "unseal", "lock", "store", "image", "mount", "credentials")


def _median(xs: list[float]) -> float:
    return round(statistics.median(xs), 2) if xs else float("nan")


def measure(runs: int) -> dict[str, object]:
    lab = labmod.Lab(harness.BUILD / "bench-lab", n_peers=3)
    clean: list[labmod.BootResult] = []
    recovery: list[labmod.BootResult] = []
    try:
        lab.setup()
        for _ in range(runs):
            res = lab.boot("hold")
            assert res.root == "normal", res.console.text()[-2000:]
            clean.append(res)
            lab.power_cut(peers=2)
            res = lab.boot("poweroff")  # the recovery root powers off: orderly
            assert res.root == "recovery" and res.proof_ok, res.console.text()[-2000:]
            recovery.append(res)
            for p in lab.peers:
                p.clean_reboot()
    finally:
        lab.close()
    kern = harness.kernel()
    with_mod = harness.initramfs(kern, lab.confdir)
    without = harness.initramfs(kern, lab.confdir, with_module=False)

    def table(results: list[labmod.BootResult]) -> dict[str, float]:
        return {p: _median([r.phases[p] for r in results if p in r.phases]) for p in PHASES}

    def steps(results: list[labmod.BootResult]) -> dict[str, float]:
        out: dict[str, float] = {}
        for s in (*STEPS, "payload-total"):
            xs = [
                float(r.record["timeline_ms"][s])  # type: ignore[index]
                for r in results
                if r.record and s in r.record.get("timeline_ms", {})  # type: ignore[operator]
            ]
            if xs:
                out[s] = _median(xs)
        return out

    return {
        "accel": vmmod.accel(),
        "runs": runs,
        "clean": table(clean),
        "recovery": table(recovery),
        "clean_steps": steps(clean),
        "recovery_steps": steps(recovery),
        "initramfs_with": with_mod.stat().st_size,
        "initramfs_without": without.stat().st_size,
    }


def render(m: dict[str, object]) -> str:
    clean, rec = m["clean"], m["recovery"]
    assert isinstance(clean, dict) and isinstance(rec, dict)
    mib = 1 << 20
    w, wo = int(m["initramfs_with"]), int(m["initramfs_without"])  # type: ignore[call-overload]
    lines = [
        "## Boot",
        "",
        "<!-- written by `python bench/boot.py --write docs/performance.md` -->",
        "",
        f"QEMU q35, OVMF (measured direct kernel boot), swtpm, accel **{m['accel']}**, "
        f"1 vCPU, 1 GiB; median of {m['runs']} run(s); seconds since QEMU start, read from "
        "the serial console.",
        "",
        "| phase | clean | recovery |",
        "|---|---|---|",
    ]
    for p in PHASES:
        lines.append(f"| {p} | {clean.get(p, '')} | {rec.get(p, '')} |")
    over = round(rec["new-root"] - clean["new-root"], 2)
    ratio = round(rec["new-root"] / clean["new-root"], 2)
    lines += [
        "",
        f"Recovery overhead to the new root's /sbin/init: **+{over} s** ({ratio}x the clean boot).",
        "",
        "Payload steps (ms, the payload's own clock, from the decision record):",
        "",
        "| step | clean | recovery |",
        "|---|---|---|",
    ]
    cs, rs = m["clean_steps"], m["recovery_steps"]
    assert isinstance(cs, dict) and isinstance(rs, dict)
    for s in (*STEPS, "payload-total"):
        if s in cs or s in rs:
            lines.append(f"| {s} | {cs.get(s, '')} | {rs.get(s, '')} |")
    lines += [
        "",
        f"Initramfs (zstd, dracut 059, shell init): {wo / mib:.1f} MiB without the module, "
        f"{w / mib:.1f} MiB with it: **+{(w - wo) / mib:.1f} MiB** "
        f"({w / wo:.2f}x) for Python, the payload, cryptography, tpm2-pytss and libtss2.",
        "",
        "Reproduce: `python bench/boot.py --runs 2 --write docs/performance.md` (root).",
        "",
    ]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace (or append) the '## Boot' section, leaving the other sections alone."""
    text = path.read_text() if path.exists() else "# Performance\n\n"
    start = text.find("## Boot\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1 :] if end >= 0 else "")
    path.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--write", metavar="FILE", help="update the Boot section of FILE")
    args = ap.parse_args()
    section = render(measure(args.runs))
    print(section)
    if args.write:
        write_section(Path(args.write), section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
