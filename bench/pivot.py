"""Time to pivot against recovery image size, container v1 against v2, in one run.

The lab of qemu-env/ (OVMF, TCG unless KVM works, a 1 GiB guest, 3 peers): the guest
provisions its TPM with a master secret the host chose (``Lab(master=...)``), so the host
can make recovery images of any size for it. For each size (the lab's recovery root plus
one large file of random data, uncompressed squashfs; cached under
/var/cache/host-recover/bench-images/ by size) and each format, a store disk with that
image and the guest's credential store is made, the host and 2 of 3 peers lose power,
and the recovery boot is judged by its console: the payload's step timings (decision
record), the dm steps of v2 (loop, verity, crypt) and the console time of the new root's
init. A boot that does not reach the recovery root is reported as such (v1 needs the
whole image in RAM: it cannot work for images near the guest's memory).

    .venv/bin/python -m bench.pivot [--sizes 64M,1G,4G] [--repeats 3] [--json OUT] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from testing.qemu import harness
from testing.qemu import lab as labmod
from testing.qemu import vm as vmmod

from bench import perfdoc
from bench.boot import revision

CACHE = Path(os.environ.get("HOST_RECOVER_CACHE", "/var/cache/host-recover")) / "bench-images"
FORMATS = (2, 1)  # v2 first: a v1 boot that runs out of memory may take long
CLEAN = "clean boot (baseline)"
TITLE = "## Time to pivot against image size (container v1 against v2)"


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def label(size: int) -> str:
    return f"{size >> 30} GiB" if size >= 1 << 30 else f"{size >> 20} MiB"


def size_arg(text: str) -> str:
    """The ``--sizes`` word of a :func:`label` ("4 GiB" → "4G")."""
    number, unit = text.split()
    return number + unit[0]


def plain_image(size: int) -> Path:
    """The lab's recovery root plus /bench.bin (random) as uncompressed squashfs of about
    ``size`` bytes; cached by size (and the recovery root's inputs)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    init = harness.QEMU_ENV / "guest-recovery-init.sh"
    digest = harness._digest(init, harness.GUEST_TOOLS, harness.APPLETS, size)
    out = CACHE / f"plain-{size}.squashfs"
    if harness._fresh(out, digest):
        return out
    tree = CACHE / f"tree-{size}"
    harness._rootfs_tree(tree, init)
    base = sum(f.stat().st_size for f in tree.rglob("*") if f.is_file() and not f.is_symlink())
    fill = max(0, size - base - (1 << 20))
    pseudo = f"bench.bin f 444 root root head -c {fill} /dev/urandom"
    harness.sh("mksquashfs", tree, out, "-noappend", "-all-root", "-noD", "-noF", "-quiet",
               "-no-progress", "-p", pseudo)  # fmt: skip
    shutil.rmtree(tree)
    harness._stamp(out, digest)
    return out


def store_disk(lab: labmod.Lab, plain: Path, fmt: int, work: Path) -> Path:
    """A store (ext4, HRSTORE) with ``plain`` encrypted as format ``fmt`` for the guest's
    image key, and the credential store the guest made at provisioning."""
    from recover.core import keys
    from recover.store import image

    assert lab.master is not None and lab.vm is not None and lab.vm.disks[1] is not None
    tree = work / "store.d"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    harness.sh(
        "debugfs", "-R", f"dump /credentials.hrc {tree / 'credentials.hrc'}", lab.vm.disks[1]
    )
    image.encrypt_file(plain, tree / "recovery.hri", keys.image_root_key(lab.master),
                       image_version=1, format_version=fmt)  # fmt: skip
    out = work / f"store-v{fmt}.img"
    out.unlink(missing_ok=True)
    size_mb = ((tree / "recovery.hri").stat().st_size >> 20) * 105 // 100 + 64
    harness.sh("mkfs.ext4", "-q", "-F", "-L", "HRSTORE", "-d", tree, out, f"{size_mb}M")
    shutil.rmtree(tree)
    return out


def one_boot(lab: labmod.Lab, store: Path, timeout: float) -> dict[str, Any]:
    lab.prepare("cut", peers_cut=2)
    t0 = time.monotonic()
    try:
        res = lab.boot("poweroff", store=store, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - a boot that never ends is a finding
        assert lab.vm is not None
        tail = [line for _, line in lab.vm.console.all(r"host-recover|Out of memory|oom")][-3:]
        lab.vm.power_cut()
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:200], "console": tail}
    rec: dict[str, Any] = dict(res.record or {})
    img: dict[str, Any] = rec.get("image") or {}
    out: dict[str, Any] = {
        "ok": res.root == "recovery" and bool(res.proof_ok),
        "root": res.root,
        "wall_s": round(time.monotonic() - t0, 1),
        "phases": res.phases,
        "steps_ms": dict(rec.get("timeline_ms") or {}),
        "dm_ms": img.get("steps_ms", {}),
        "key_passing": img.get("key_passing"),
    }
    if not out["ok"]:
        out["error"] = rec.get("error") or res.console.text()[-300:]
    return out


def clean_boot(lab: labmod.Lab, timeout: float) -> dict[str, Any]:
    """The baseline: a boot after an orderly shutdown (verdict clean, the normal root)."""
    lab.prepare("provisioned", peers_cut=0)
    res = lab.boot("poweroff", timeout=timeout)
    rec: dict[str, Any] = dict(res.record or {})
    return {"ok": res.root == "normal", "root": res.root, "phases": res.phases,
            "steps_ms": dict(rec.get("timeline_ms") or {})}  # fmt: skip


def measure(
    sizes: list[int], timeout: float, repeats: int = 1, json_out: Path | None = None
) -> dict[str, Any]:
    """The whole matrix ``repeats`` times, interleaved (a clean boot, then every size and
    format, then again), so that the machine's load drifts over all rows alike; a v1 size
    that failed once is not booted again. With ``json_out`` the measurement so far is
    written after each boot."""
    from recover.core import imageformat, keys

    master = secrets.token_bytes(32)
    kid = imageformat.key_id(keys.image_root_key(master)).hex()
    lab = labmod.Lab(harness.BUILD / "bench-pivot-lab", n_peers=3, master=master)
    results: dict[str, list[dict[str, Any]]] = {}
    rev = revision()  # the tree the initramfs is built from (edits during the run are not)
    work = harness.BUILD / "bench-pivot"
    work.mkdir(parents=True, exist_ok=True)

    def record(name: str, r: dict[str, Any]) -> None:
        results.setdefault(name, []).append(r)
        print(f"{name}: {json.dumps(r)}", file=sys.stderr, flush=True)
        if json_out is not None:
            json_out.write_text(json.dumps(summary(sizes, results, rev), indent=1) + "\n")

    try:
        lab.setup()
        assert lab.provision_result is not None
        if lab.provision_result.console.find(f"image key id {kid}") is None:
            raise RuntimeError("the guest did not seal the bench's master (key id differs)")
        lab.prepare("provisioned", peers_cut=0)
        lab.boot("hold")
        lab.power_cut(peers=0)
        lab.save_host("cut")
        v1_failed: set[int] = set()
        for _ in range(repeats):
            record(CLEAN, clean_boot(lab, timeout))
            for size in sizes:
                plain = plain_image(size)
                for fmt in FORMATS:
                    if fmt == 1 and size in v1_failed:
                        continue
                    store = store_disk(lab, plain, fmt, work)
                    try:
                        r = one_boot(lab, store, timeout)
                    finally:
                        store.unlink(missing_ok=True)
                    r["plain_bytes"] = plain.stat().st_size
                    if fmt == 1 and not r["ok"]:
                        v1_failed.add(size)
                    record(f"v{fmt} {label(size)}", r)
    finally:
        lab.close()
    return summary(sizes, results, rev)


def summary(sizes: list[int], results: dict[str, Any], rev: str) -> dict[str, Any]:
    return {"accel": vmmod.accel(), "memory_mib": int(vmmod.MEMORY), "revision": rev,
            "sizes": [label(s) for s in sizes], "results": results}  # fmt: skip


def _pivot_ms(r: dict[str, Any]) -> float | None:
    s = r.get("steps_ms", {})
    return (
        round(s["image"] + s["mount"], 1) if r.get("ok") and "image" in s and "mount" in s else None
    )


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _spread(xs: list[float], fmt: str) -> str:
    """``median (min–max)`` of ``xs``; the median alone for one value."""
    if len(xs) == 1:
        return format(xs[0], fmt)
    return f"{_med(xs):{fmt}} ({min(xs):{fmt}}–{max(xs):{fmt}})"


def _row(name: str, runs: list[dict[str, Any]]) -> str:
    ok = [r for r in runs if r.get("ok")]
    mib = runs[0].get("plain_bytes", 0) >> 20
    size = "–" if name == CLEAN else str(mib)
    if not ok:
        seen = " / ".join(runs[0].get("console") or []) or runs[0].get("error") or ""
        why = seen[:300].replace("|", "/").replace("\n", " ")
        return f"| {name} | {size} | 0 of {len(runs)} | failed: {why} | | | | | | |"

    def steps(key: str) -> list[float]:
        return [r["steps_ms"][key] for r in ok if key in r.get("steps_ms", {})]

    def med(key: str) -> str:
        xs = steps(key)
        return f"{_med(xs):.0f}" if xs else "–"

    roots = [r["phases"]["new-root"] for r in ok if "new-root" in r.get("phases", {})]
    total = _spread(steps("payload-total"), ".0f")
    waits = f"{med('decide.peers')} / {med('decide.answer-wait')}"
    if name == CLEAN:
        return (
            f"| {name} | – | {len(ok)} of {len(runs)} | {waits} | – | – | – | – | {total} | "
            f"{_spread(roots, '.1f')} |"
        )
    pivots = [p for p in map(_pivot_ms, ok) if p is not None]
    dm_keys = list(ok[0].get("dm_ms", {}))
    dm = (
        ", ".join(
            f"{k} {_med([r['dm_ms'][k] for r in ok if k in r.get('dm_ms', {})]):.0f}"
            for k in dm_keys
        )
        or "–"
    )
    return (
        f"| {name} | {size} | {len(ok)} of {len(runs)} | {waits} | {_med(steps('image')):.0f} | "
        f"{_med(steps('mount')):.0f} | **{_spread(pivots, '.0f')}** | {dm} | {total} | "
        f"{_spread(roots, '.1f')} |"
    )


def goals(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Issue 12's two goals, from the medians: v2's pivot at each size against the
    smallest, and each v2 recovery boot's new root against the clean boot's."""

    def medians(name: str, value: Any) -> float | None:
        xs = [v for v in (value(r) for r in results.get(name, []) if r.get("ok")) if v is not None]
        return _med(xs) if xs else None

    v2 = [n for n in results if n.startswith("v2 ")]
    out = []
    pivot = {n: medians(n, _pivot_ms) for n in v2}
    known = [(n, v) for n, v in pivot.items() if v is not None]
    if len(known) >= 2:
        (first, base), rest = known[0], known[1:]
        diffs = ", ".join(f"{n[3:]}: {v - base:+.0f} ms" for n, v in rest)
        out.append(
            f"v2's median pivot against its {first[3:]} boot: {diffs} (goal: within 1000 ms)."
        )
    root = lambda r: r.get("phases", {}).get("new-root")  # noqa: E731

    def against(value: Any, base: float) -> str:
        """Each v2 size's median of ``value`` less ``base``, in seconds."""
        return ", ".join(
            f"{n[3:]}: {v - base:+.1f} s" for n in v2 if (v := medians(n, value)) is not None
        )

    clean = medians(CLEAN, root)
    if clean is not None and (diffs := against(root, clean)):
        out.append(
            f"v2 recovery boot's median time to the new root's init against the clean "
            f"boot's ({clean:.1f} s): {diffs} (goal: within 1 s); without its peer "
            f"rounds and answer wait: {against(_without_peers, clean)}."
        )
    clean_run = medians(CLEAN, _from_payload)
    if clean_run is not None and (diffs := against(_from_payload, clean_run)):
        out.append(
            "The same from the payload's start (what happens before it, firmware, "
            "kernel and initramfs, varies by seconds from boot to boot and is the same "
            "work for both): the clean boot's payload start to its new root's init "
            f"{clean_run:.1f} s; v2 recovery boots against it: {diffs}."
        )
    return out


def _from_payload(r: dict[str, Any]) -> float | None:
    """Seconds from the payload's start to the new root's init (console times)."""
    phases = r.get("phases", {})
    if "new-root" not in phases or "payload-start" not in phases:
        return None
    return float(phases["new-root"] - phases["payload-start"])


def _without_peers(r: dict[str, Any]) -> float | None:
    """The new root's console time less the payload's peer rounds and answer wait (s)."""
    at = r.get("phases", {}).get("new-root")
    s = r.get("steps_ms", {})
    if at is None:
        return None
    return float(at - (s.get("decide.peers", 0) + s.get("decide.answer-wait", 0)) / 1000)


#: The recovery-path steps a before/after comparison shows (payload timeline keys).
COMPARED_STEPS = ("decide", "store", "image", "mount", "payload-total")


def compare(before: dict[str, Any], after: dict[str, Any]) -> str:
    """A before/after table of two measurements (``--before``): the v2 boots' medians
    of the recovery-path steps and of the new root against each run's own clean boot."""

    def med(runs: list[dict[str, Any]], value: Any) -> float | None:
        xs = [v for v in (value(r) for r in runs if r.get("ok")) if v is not None]
        return _med(xs) if xs else None

    def root(r: dict[str, Any]) -> float | None:
        return r.get("phases", {}).get("new-root")

    def cell(b: float | None, a: float | None, fmt: str) -> str:
        if b is None or a is None:
            return "–"
        return f"{b:{fmt}} → {a:{fmt}}"

    head = " | ".join(COMPARED_STEPS)
    lines = [
        f"| boot | {head} | new root − clean boot (s) | same, without the peer steps (s) |",
        "|---" * (len(COMPARED_STEPS) + 3) + "|",
    ]
    clean_b = med(before["results"].get(CLEAN, []), root)
    clean_a = med(after["results"].get(CLEAN, []), root)
    for name in (n for n in after["results"] if n.startswith("v2 ")):
        rb, ra = before["results"].get(name, []), after["results"].get(name, [])
        steps = " | ".join(
            cell(
                med(rb, lambda r, k=k: r.get("steps_ms", {}).get(k)),
                med(ra, lambda r, k=k: r.get("steps_ms", {}).get(k)),
                ".0f",
            )
            for k in COMPARED_STEPS
        )
        deltas = []
        for value in (root, _without_peers):
            b, a = med(rb, value), med(ra, value)
            deltas.append(
                cell(
                    b - clean_b if b is not None and clean_b is not None else None,
                    a - clean_a if a is not None and clean_a is not None else None,
                    "+.1f",
                )
            )
        lines.append(f"| {name} | {steps} | {deltas[0]} | {deltas[1]} |")

    def pooled(m: dict[str, Any], keys: tuple[str, ...]) -> float | None:
        runs = [r for n, rs in m["results"].items() if n.startswith("v2 ") for r in rs]
        return med(runs, lambda r: sum(r["steps_ms"].get(k, 0) for k in keys) or None)

    moved = [
        f"{what}: {cell(pooled(before, keys), pooled(after, keys), '.0f')} ms"
        for what, keys in (
            ("store + image + mount", ("store", "image", "mount")),
            ("decide", ("decide",)),
            ("payload total", ("payload-total",)),
        )
    ]
    return (
        f"Before (tree {before['revision']}) → after (tree {after['revision']}), medians in ms "
        f"unless said, each run against its own clean boot:\n\n"
        + "\n".join(lines)
        + "\n\nOver every v2 boot of each run: "
        + "; ".join(moved)
        + "."
    )


def section(m: dict[str, Any], before: dict[str, Any] | None = None) -> str:
    """The docs section of a measurement; its Reproduce line names the measurement's own
    sizes and rounds (also when it is rendered from ``--json`` by another command)."""
    results: dict[str, list[dict[str, Any]]] = m["results"]
    sizes_arg = ",".join(size_arg(s) for s in m["sizes"])
    rows = [_row(name, runs) for name, runs in results.items()]
    repeats = max((len(r) for r in results.values()), default=0)
    waits = [
        r["steps_ms"]["decide.answer-wait"]
        for rs in results.values()
        for r in rs
        if r.get("ok") and "decide.answer-wait" in r.get("steps_ms", {})
    ]
    if waits and _med(waits) >= 1000:
        waited = (
            "Most of it is not the image but the answer wait: after its verdict the payload "
            "kept answering the peers seen in their payload that had not said they were done "
            "asking (`asking`, docs/peer-protocol.md), up to max(`peers.timeout`, "
            "`peers.deadline`) (20 s in this lab, set for TCG; 5 s by default), and the "
            'lab\'s peers that lost power never ask (docs/verdict.md, "Staggered boots"). '
            "The last goal line takes the peer steps out."
        )
    else:
        waited = (
            "The answer wait is short: the lab's peers that lost power say they will not ask "
            "(`asking: false`, docs/peer-protocol.md), and the peer left out once the verdict "
            "settled (`skipped`) is still heard from: its query runs on into the answer "
            "wait, and its answer (the normal OS) ends the wait for it (since 3fad204; "
            "before, such a boot waited peers.timeout, 5 s). The last goal line takes the "
            "peer steps out."
        )
    compared = f"\n{compare(before, m)}\n" if before is not None else ""
    killed = ""
    if any("Killed" in " ".join(r.get("console") or []) for rs in results.values() for r in rs):
        killed = (
            "\nIn the failed v1 rows the kernel killed the payload (out of memory) while it "
            "filled the tmpfs; the hook then halts the host, as it does whenever the payload "
            "leaves no action after an unseal (fail closed): neither a recovery nor a "
            "normal boot. A v1 size that failed is not booted again."
        )
    return f"""{TITLE}

{m["accel"].upper()}, OVMF, a {m["memory_mib"]} MiB guest, tree {m["revision"]}, {repeats}
rounds, interleaved: each round boots the clean baseline (an orderly shutdown before, the
normal root after) and then every size and format once, each a recovery boot after a
correlated power loss (host + 2 of 3 peers). The recovery image is the lab's recovery
root plus one file of random data (uncompressed squashfs). "image" is the payload's image
step (v1: decrypt the whole image into a tmpfs; v2: check the header, loop device,
dm-verity and dm-crypt tables, of which the "dm" column), "peers / answer wait" the
payload's peer rounds and, after its verdict, the time it kept answering peers that had
not been answered yet (docs/verdict.md, "Staggered boots"), "mount" is mounting the file
system under the overlay, "pivot" their sum — the part that depends on the image — and
"new root" the console time (s since QEMU start) of the new root's init. Steps in ms,
medians over the boots that reached their root; (min–max) where there are several.

| boot | MiB | boots ok | peers / answer wait | image | mount | pivot | dm (ms) | payload total | new root (s) |
|---|---:|---|---|---:|---:|---|---|---|---|
{chr(10).join(rows)}

{chr(10).join(goals(results))}
{compared}
A shared 2-core machine under TCG: the dm steps are ioctls (recover/boot/sysmount.py,
recover/boot/devmapper.py; before 2458b23 losetup and dmsetup processes), in which the
kernel builds the targets, and, where the background preload had not loaded them yet
("modules": the step's wait for it, recover/boot/preload.py), kernel module loads; their
times vary with the machine's load; nothing in them reads the image. "store" and "mount"
are mount(2) calls since 2458b23 (before: blkid, mount and umount processes); the store
step also pays the first import of ctypes. The clean boot's payload stops at its verdict (no unseal, image or
credentials step, which the recovery boot must do): the difference in "new root" is
what a recovery costs. {waited}

v1 keeps the whole plaintext in RAM (a tmpfs sized for the image): in a 1 GiB guest an
image of 1 GiB or more cannot be recovered at all, and below that its time grows with
the size. v2 maps the image and reads only what the recovery OS touches.{killed}

Reproduce: `{perfdoc.reproduce("pivot", f"--sizes {sizes_arg} --repeats {repeats} --write")}`
(`--json OUT` keeps a run, `--before OLD.json` adds the comparison with an earlier one)
(root, QEMU, swtpm; the images are cached under /var/cache/host-recover/bench-images/).
"""


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64M,1G,4G")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per boot")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the whole matrix")
    ap.add_argument("--json", metavar="OUT", help="also write the measurement as JSON")
    ap.add_argument("--write", action="store_true", help="update docs/performance.md")
    ap.add_argument("--from-json", metavar="IN", help="render a measurement --json wrote")
    ap.add_argument("--before", metavar="OLD", help="compare with an earlier --json run")
    args = ap.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    if args.from_json:
        m = json.loads(Path(args.from_json).read_text())
    else:
        m = measure(sizes, args.timeout, args.repeats, Path(args.json) if args.json else None)
    before = json.loads(Path(args.before).read_text()) if args.before else None
    text = section(m, before)
    print(text)
    if args.write:
        perfdoc.write_section(TITLE, text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
