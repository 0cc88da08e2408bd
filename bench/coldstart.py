"""Benchmark: payload cold start, interpreter start + imports until the first TPM command.

    .venv/bin/python -m bench.coldstart [--rounds 10] [--before REV] [--after REV]
                                        [--nofapi DIR] [--write-docs]

Every row is timed from just before the child process is started (fork + exec are in
every row), in interleaved rounds after one warm-up round; medians and minima:

* baselines: ``python3 -I -S -c pass`` and ``python3 -I -c pass`` with the venv's
  interpreter (Debian's /usr/bin/python3.11), and ``-S -c pass`` in the bundle layout;
* the payload: ``host-recover boot`` against a real swtpm holding a provisioned store,
  after an orderly shutdown (verdict clean, exit 0: the common boot). A loopback TCP relay
  (testing/tpmwire.py) sits between the payload's TCTI and swtpm and timestamps the TCTI
  connection (``import tpm2_pytss`` and ESAPI init done) and the first command bytes
  (their command code is decoded), then the process exit is timed.

Three ways to load the payload's code, per tree (testing/trees.py): ``bundle``, what the
initramfs runs (dracut-module/module-setup.sh installs the staging directory of
``host-recover bundle``: sourceless .pyc, the stdlib as laid out by that tree's bundle,
``-S -P``, started by the ``-c`` statement of that bundle's /usr/bin/host-recover, so each
tree runs its own entry); ``src``, the source
tree with a warm bytecode cache (filled by the warm-up round), like an installed package;
``src-nopyc``, sources compiled at every start: what an initramfs that ships only .py
files pays.

``--before REV`` (and ``--after REV``, default the working tree) time two trees in the
same run; a REV is checked out with ``git worktree add --detach`` and removed at the end.
One ``-X importtime`` run of the bundle mode per tree gives the import breakdown
(testing/importtime.py); tpm2-pytss import variants are timed inside the process.
``--nofapi DIR`` adds the bundle with another tpm2-pytss in front of its site (mode
``bundle-nofapi``). The report and its findings: bench/coldstart_report.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from testing.importtime import Imported
from testing.importtime import parse as parse_importtime
from testing.swtpm import SwTpm
from testing.tpmwire import Relay
from testing.trees import BASE_ENV, EXTRA_MODES, MODES, ROOT, VENV_PY, Tree, checkout

from bench.coldstart_report import BUNDLE_PASS, NOFAPI, SECTION, VARIANTS, report
from bench.perfdoc import DOC, write_section


@dataclasses.dataclass(frozen=True)
class BootRun:
    connect_ms: float
    first_ms: float
    first_cpu_ms: float  # the child's CPU time from exec to the first command
    exit_ms: float
    cpu_ms: float  # user + system time of the child, to its exit: robust against load
    teardown_ms: float  # from the decision record's time to the exit: finalization
    command: int


class Payload:
    """``host-recover boot`` runs against one provisioned swtpm behind the relay."""

    def __init__(self, relay: Relay, work: Path) -> None:
        self.relay = relay
        self.work = work
        self.conf = work / "host-recover.conf"
        self.conf.write_text(
            f"[tpm]\ntcti = {relay.tcti}\n[peers]\ninventory = {work}/no-peers.json\n"
            f"[boot]\nstate_dir = {work}/state\n"
        )
        self.record = work / "state/decision.json"
        self.cmdline = work / "cmdline"
        self.cmdline.write_text("ro quiet\n")

    def argv(self, tree: Tree, mode: str, extra: Sequence[str] = ()) -> tuple[list[str], dict]:
        py, env = tree.python(mode)
        args = [*tree.entry(mode), "--config", str(self.conf), "boot",
                "--cmdline", str(self.cmdline), "--newroot", str(self.work / "newroot")]  # fmt: skip
        return [*py, *extra, *args], env

    def run(self, tree: Tree, mode: str) -> BootRun:
        argv, env = self.argv(tree, mode)
        self.relay.arm()
        self.record.unlink(missing_ok=True)
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, env=env, cwd=self.work, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)  # fmt: skip
        self.relay.pid = proc.pid
        _, err = proc.communicate(timeout=120)
        t_exit, wall_exit = time.monotonic(), time.time()
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) * 1000
        first, connected = self.relay.first, self.relay.connected
        first_cpu = self.relay.first_cpu_ns
        if proc.returncode != 0 or first is None or connected is None or first_cpu is None:
            tail = err.decode(errors="replace")[-600:]
            raise SystemExit(f"{tree.label}/{mode}: exit {proc.returncode}: {tail}")
        ms = [(t - t0) * 1000 for t in (connected, first[0], t_exit)]
        teardown = (wall_exit - json.loads(self.record.read_text())["time"]) * 1000
        return BootRun(ms[0], ms[1], first_cpu / 1e6, ms[2], cpu, teardown, first[1])

    def importtime(self, tree: Tree, mode: str) -> list[Imported]:
        argv, env = self.argv(tree, mode, ("-X", "importtime"))
        self.relay.arm()
        proc = subprocess.run(argv, env=env, cwd=self.work, capture_output=True, text=True)
        return parse_importtime(proc.stderr)


def import_ms(argv: list[str], env: dict[str, str], code: str) -> float:
    """In-process CPU time of ``code`` (no interpreter start-up, no finalization; CPU,
    not wall: the other jobs on a shared machine barely move it)."""
    timed = f"import time as _t\n_t0 = _t.process_time()\n{code}\nprint(_t.process_time() - _t0)"
    proc = subprocess.run([*argv, "-c", timed], env=env, cwd="/", check=True,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    return float(proc.stdout.split()[-1]) * 1000


def wall_ms(argv: list[str], env: dict[str, str] = BASE_ENV) -> float:
    t0 = time.monotonic()
    subprocess.run(argv, env=env, cwd="/", check=True, stdout=subprocess.DEVNULL, timeout=120)
    return (time.monotonic() - t0) * 1000


@dataclasses.dataclass
class Results:
    trees: list[str]
    base: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    boot: dict[tuple[str, str], list[BootRun]] = dataclasses.field(default_factory=dict)
    variants: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    imports: dict[str, list[Imported]] = dataclasses.field(default_factory=dict)


def measure(args: argparse.Namespace, work: Path, stack: contextlib.ExitStack) -> Results:
    trees: list[Tree] = []
    if args.before:
        trees.append(Tree("before", stack.enter_context(checkout(args.before, work)), work))
    after_path = stack.enter_context(checkout(args.after, work)) if args.after else ROOT
    trees.append(Tree("after" if args.before else "tree", after_path, work, args.nofapi))
    for t in trees:
        t.build_bundle()
    trees[-1].build_bundle(stdlib="zip")
    sw = SwTpm(work / "tpmstate")
    stack.callback(sw.close)
    sw.start()
    conf = work / "provision.conf"
    conf.write_text(f"[tpm]\ntcti = {sw.tcti}\n")
    py, env = trees[-1].python("src")
    subprocess.run([*py, "-m", "recover", "--config", str(conf), "provision",
                    "--allow-unbound", "--no-owner-auth"], env=env,
                   cwd=work, check=True, capture_output=True, timeout=120)  # fmt: skip
    sw.reboot_orderly()  # the boots below all follow an orderly shutdown
    relay = stack.enter_context(Relay(sw.port))
    payload = Payload(relay, work)

    res = Results([t.label for t in trees])
    bpy, benv = trees[-1].python("bundle")
    jobs: list[tuple[str, Callable[[], object]]] = [
        ("base:python3 -I -S -c pass", partial(wall_ms, [VENV_PY, "-I", "-S", "-c", "pass"])),
        ("base:python3 -I -c pass", partial(wall_ms, [VENV_PY, "-I", "-c", "pass"])),
        (f"base:{BUNDLE_PASS}", partial(wall_ms, [*bpy, "-c", "pass"], benv)),
    ]
    for label, code in VARIANTS:
        jobs.append((f"var:{label}", partial(import_ms, bpy, benv, code)))
    if args.nofapi:
        _, nenv = trees[-1].python("bundle-nofapi")
        jobs.append((f"var:{NOFAPI}", partial(import_ms, bpy, nenv, "import tpm2_pytss")))
    for t in trees:
        modes = list(MODES)
        if t is trees[-1]:
            modes += [m for m in EXTRA_MODES if m != "bundle-nofapi" or t.nofapi]
        for mode in modes:
            jobs.append((f"boot:{t.label}:{mode}", partial(payload.run, t, mode)))
    for rnd in range(args.rounds + 1):  # round 0: warm-up, fills the bytecode caches
        k = rnd % len(jobs)
        for name, fn in jobs[k:] + jobs[:k]:
            r = fn()
            kind, _, key = name.partition(":")
            if rnd == 0:
                continue
            if kind == "boot":
                label, _, mode = key.partition(":")
                res.boot.setdefault((label, mode), []).append(r)  # type: ignore[arg-type]
            elif kind == "var":
                res.variants.setdefault(key, []).append(r)  # type: ignore[arg-type]
            else:
                res.base.setdefault(key, []).append(r)  # type: ignore[arg-type]
    for t in trees:
        res.imports[t.label] = payload.importtime(t, "bundle")
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--before", metavar="REV", help="also time this git revision")
    ap.add_argument("--after", metavar="REV", help="time this revision, not the working tree")
    ap.add_argument("--top", type=int, default=15, help="rows of the importtime table")
    ap.add_argument(
        "--nofapi",
        type=Path,
        metavar="DIR",
        help="also time the bundle with this tpm2-pytss (pip install --target DIR of a wheel "
        "built with tss2-fapi.pc hidden): mode bundle-nofapi",
    )
    ap.add_argument("--write-docs", action="store_true", help=f"update {SECTION!r} in {DOC}")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-coldstart-") as tmp:
        with contextlib.ExitStack() as stack:
            res = measure(args, Path(tmp), stack)
        section = report(args, res)
    print(section)
    if args.write_docs:
        write_section(SECTION, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
