"""Boot timeline of the clean and the recovery path, and the initramfs size cost.

Boots the lab of qemu-env/ (TCG unless KVM works): one clean boot and one recovery
boot after a correlated power loss (host + 2 of 3 peers), each judged by its console.
Phases are console arrival times since QEMU start; the payload's own steps come from
its decision record; the inside of ``decide`` (peer round, serving window) from the
payload's console lines. The initramfs is built with and without the host-recover module
(same kernel, same dracut modules otherwise), and the two sizes are compared.

Before/after: measure one tree with ``--save``, the other with ``--before`` that file.

    .venv/bin/python -m bench.boot [--runs N] [--save M.json] [--before M.json] [--write FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

from testing.qemu import harness
from testing.qemu import lab as labmod
from testing.qemu import vm as vmmod

from bench import perfdoc

REPO = Path(__file__).resolve().parents[1]

PHASES = ("kernel", "initramfs", "payload-start", "payload-exit", "switch-root", "new-root")
STEPS = ("tpm-wait", "decide", "unseal", "lock", "store", "image", "mount", "credentials")


def _median(xs: list[float]) -> float:
    return round(statistics.median(xs), 2) if xs else float("nan")


def revision() -> str:
    """The measured tree: commit, plus "+dirty" when recover/ has uncommitted changes."""
    git = ["git", "-C", os.fspath(REPO)]
    rev = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "recover"], check=False)
    return rev.stdout.strip() + ("+dirty" if dirty.returncode else "")


def inside_decide(res: labmod.BootResult) -> dict[str, float]:
    """The peer round and the serving window (ms) from the payload's console lines; the
    rest of ``decide`` is evidence, imports, the AK and starting the server."""
    out: dict[str, float] = {}
    steps = res.console.find(r"host-recover: decide steps \(ms\): ")
    if steps:  # the payload's own sub-steps (logged since d72df9b)
        for kv in steps[1].split("(ms): ", 1)[1].split():
            k, _, v = kv.partition("=")
            out[f"step {k}"] = float(v)
    rnd = res.console.find(r"host-recover: peers: \d+ of \d+ verified in (\d+) ms")
    if rnd:
        out["peer-round"] = float(re.findall(r"verified in (\d+) ms", rnd[1])[0])
    up = res.console.find(r"host-recover: answering peers on ")
    down = res.console.find(r"host-recover: answered \d+ of \d+ peers")
    if up and down:
        out["serving"] = round((down[0] - up[0]) * 1000, 1)
        if "peer-round" in out:
            out["answer-wait"] = round(max(out["serving"] - out["peer-round"], 0.0), 1)
    return out


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

    def decide_parts(results: list[labmod.BootResult]) -> dict[str, float]:
        parts = [inside_decide(r) for r in results]
        keys = dict.fromkeys(k for p in parts for k in p)
        return {k: _median([p[k] for p in parts if k in p]) for k in keys}

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
        "revision": revision(),
        "venv": sys.prefix,
        "runs": runs,
        "clean": table(clean),
        "recovery": table(recovery),
        "clean_steps": steps(clean),
        "recovery_steps": steps(recovery),
        "recovery_decide": decide_parts(recovery),
        "recovery_max_attempts": max(
            (
                int(r.get("attempts", 0))
                for res in recovery
                if res.record and isinstance(res.record.get("peers"), dict)
                for r in res.record["peers"]["results"]  # type: ignore[index]
            ),
            default=0,
        ),
        "initramfs_with": with_mod.stat().st_size,
        "initramfs_without": without.stat().st_size,
    }


#: The initramfs with the module as measured with the FAPI-linked tpm2-pytss (08b811b).
FAPI_INITRAMFS_MIB = 24.1


def _ratio(before: float, after: float) -> str:
    return f"{before / after:.2f}x" if after else ""


def compare(before: dict[str, object], after: dict[str, object]) -> list[str]:
    """Before/after rows of the recovery path (ratio = before / after: > 1 is faster)."""
    rows: list[tuple[str, float, float]] = []
    for key, name, unit in (
        ("recovery_decide", "answer-wait", "ms"),
        ("recovery_steps", "decide", "ms"),
        ("recovery_steps", "payload-total", "ms"),
        ("recovery", "payload-exit", "s"),
        ("recovery", "new-root", "s"),
        ("clean", "new-root", "s"),
    ):
        b, a = before.get(key, {}), after.get(key, {})
        assert isinstance(b, dict) and isinstance(a, dict)
        if name in b and name in a:
            rows.append((f"{key.split('_')[0]} {name} ({unit})", b[name], a[name]))
    lines = [
        "",
        f"Before/after (same session, same venv): before = `{before['revision']}`, "
        f"after = `{after['revision']}`; ratio = before / after.",
        "",
        "| metric | before | after | ratio |",
        "|---|---|---|---|",
    ]
    lines += [f"| {n} | {b} | {a} | {_ratio(b, a)} |" for n, b, a in rows]
    return lines


def render(m: dict[str, object], before: dict[str, object] | None = None, note: str = "") -> str:
    clean, rec = m["clean"], m["recovery"]
    assert isinstance(clean, dict) and isinstance(rec, dict)
    mib = 1 << 20
    w, wo = int(m["initramfs_with"]), int(m["initramfs_without"])  # type: ignore[call-overload]
    lines = [
        "## Boot",
        "",
        f"<!-- written by `{perfdoc.reproduce('boot', '--write docs/performance.md')}` -->",
        "",
        f"QEMU q35, OVMF (measured direct kernel boot), swtpm, accel **{m['accel']}**, "
        f"1 vCPU, 1 GiB; median of {m['runs']} run(s); seconds since QEMU start, read from "
        f"the serial console. Tree `{m.get('revision', '?')}`, venv `{m.get('venv', '?')}`.",
        "",
        *([note, ""] if note else []),
        "| phase | clean | recovery |",
        "|---|---|---|",
    ]
    for p in PHASES:
        lines.append(f"| {p} | {clean.get(p, '')} | {rec.get(p, '')} |")
    over = round(rec["new-root"] - clean["new-root"], 2)
    ratio = round(rec["new-root"] / clean["new-root"], 2)
    lines += [
        "",
        f"Recovery overhead to the new root's /sbin/init: **{over:+} s** ({ratio}x the clean boot).",
        "",
        "Payload steps (ms, the payload's own clock, from the decision record):",
        "",
        "| step | clean | recovery |",
        "|---|---|---|",
    ]
    cs, rs, rd = m["clean_steps"], m["recovery_steps"], m.get("recovery_decide", {})
    assert isinstance(cs, dict) and isinstance(rs, dict) and isinstance(rd, dict)
    for s in (*STEPS, "payload-total"):
        if s in cs or s in rs:
            lines.append(f"| {s} | {cs.get(s, '')} | {rs.get(s, '')} |")
    if rd:
        lines += [
            "",
            "Inside `decide` on the recovery path (ms, from the payload's console lines; "
            "`step X` from its `decide steps` line): "
            + ", ".join(f"{k} {v}" for k, v in rd.items())
            + ". `serving` runs from the status server's start to its stop; `answer-wait` "
            "is the part of it after the payload's own peer round, spent answering peers "
            "that may still ask.",
        ]
    attempts = m.get("recovery_max_attempts", "?")
    if before is not None:
        lines += compare(before, m)
    lines += [
        "",
        "Where `decide` went: after its own peer round the payload keeps answering peers "
        "that may still ask it, for at most `peers.timeout` (5 s in the lab). The lab's "
        "peers are `host-recover agent`s (their normal OS), which only answer and never "
        "ask, so before d72df9b every recovery boot waited the full timeout. Now a peer "
        "whose verified reply says `role: agent` is not waited for (docs/peer-protocol.md); "
        "peers in their own payload and unverified ones still are, every reply is still "
        "verified, and the payload answers peers during its whole round. The rest is the "
        "round itself (one quote, the guestfwd `busybox nc` spawn per connection, "
        "verifying 3 ECDSA quotes under TCG; at most "
        f"{attempts} attempt(s) per peer{': no retries' if attempts == 1 else ''}), "
        "starting the status server, the AK and the peer-stack imports.",
    ]
    lines += [
        "",
        f"Initramfs (zstd, dracut 059, shell init): {wo / mib:.1f} MiB without the module, "
        f"{w / mib:.1f} MiB with it: **+{(w - wo) / mib:.1f} MiB** "
        f"({w / wo:.2f}x) for Python, the payload, cryptography, tpm2-pytss and libtss2 "
        f"(with the FAPI-linked tpm2-pytss it was {FAPI_INITRAMFS_MIB} MiB: "
        f"{w / mib - FAPI_INITRAMFS_MIB:+.1f} MiB now).",
        "",
        "Reproduce from the repository root (root, ~5 min per tree; both trees measured "
        "by this checkout's bench and lab, with the same venv and build dir): "
        "`R=$PWD; P=$R/.venv/bin/python; export HOST_RECOVER_QEMU_BUILD=/tmp/hr-build; "
        "for t in before:REV^ after:REV; do git worktree add /tmp/hr-${t%%:*} ${t#*:}; "
        "cp -r bench testing /tmp/hr-${t%%:*}/; cp qemu-env/*.sh /tmp/hr-${t%%:*}/qemu-env/; "
        "done; "
        "(cd /tmp/hr-before && $P -m bench.boot --runs 2 --save /tmp/before.json); "
        "(cd /tmp/hr-after && $P -m bench.boot --runs 2 --before /tmp/before.json "
        "--write $R/docs/performance.md)` with REV the commit under test.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--save", metavar="JSON", help="also write the measurement to JSON")
    ap.add_argument("--before", metavar="JSON", help="a --save of the baseline tree")
    ap.add_argument("--write", metavar="FILE", help="update the Boot section of FILE")
    ap.add_argument("--note", default="", help="a line about the conditions of this run")
    ap.add_argument("--render", metavar="JSON", help="do not boot: render a --save file")
    args = ap.parse_args()
    before = json.loads(Path(args.before).read_text()) if args.before else None
    m = json.loads(Path(args.render).read_text()) if args.render else measure(args.runs)
    if args.save:
        Path(args.save).write_text(json.dumps(m, indent=1) + "\n")
    section = render(m, before, args.note)
    print(section)
    if args.write:
        perfdoc.write_section("## Boot", section, Path(args.write))
    return 0


if __name__ == "__main__":
    sys.exit(main())
