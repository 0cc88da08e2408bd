"""Benchmark: payload cold start, interpreter start + imports until the first TPM command.

    /tmp/venv/bin/python bench/coldstart.py [--rounds 10] [--before REV] [--after REV]
                                            [--nofapi DIR] [--write-docs]

Every row is timed from just before the child process is started (fork + exec are in
every row), in interleaved rounds after one warm-up round; medians and minima:

* baselines: ``python3 -I -S -c pass`` and ``python3 -I -c pass`` with the venv's
  interpreter (Debian's /usr/bin/python3.11), and ``-S -c pass`` in the bundle layout;
* the payload: ``host-recover boot`` against a real swtpm holding a provisioned store,
  after an orderly shutdown (verdict clean, exit 0: the common boot). A loopback TCP relay
  of this bench sits between the payload's TCTI and swtpm and timestamps the TCTI
  connection (``import tpm2_pytss`` and ESAPI init done) and the first command bytes
  (their command code is decoded), then the process exit is timed.

Three ways to load the payload's code, per tree:

* ``bundle``: what the initramfs runs. dracut-module/module-setup.sh installs the staging
  directory of ``host-recover bundle`` (recover/bundle.py): sourceless .pyc, the stdlib in
  usr/lib/python311.zip, packages in usr/lib/host-recover/site, run with the wrapper's
  environment and ``-S``, PYTHONHOME pointed at the staging copy;
* ``src``: the source tree with a warm bytecode cache (``-X pycache_prefix=DIR``, filled
  by the warm-up round), like an installed package;
* ``src-nopyc``: sources compiled at every start (``-B``, an empty pycache prefix): what an
  initramfs that ships only .py files pays.

``--before REV`` (and ``--after REV``, default the working tree) time two trees in the
same run; a REV is checked out with ``git worktree add --detach`` and removed at the end.
One ``-X importtime`` run of the bundle mode per tree gives the import breakdown; tpm2-pytss
import variants are timed inside the process. ``--nofapi DIR`` adds the bundle with a
tpm2-pytss built without FAPI (mode ``bundle-nofapi``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path

from testing.swtpm import SwTpm, free_port_pair

from bench.perfdoc import DOC, write_section

ROOT = Path(__file__).resolve().parent.parent

SECTION = "## Payload cold start"
VENV_PY = sys.executable  # the venv's python: a symlink to Debian's python3.11
SYS_PY = os.path.realpath(sys.executable)  # what the initramfs installs (binaries.list)
SITE = next((p for p in sys.path if p.endswith("site-packages")), "")
MODES = ("bundle", "src", "src-nopyc")
EXTRA_MODES = ("bundle-stdlib-dir", "bundle-nofapi")  # experiments, on the last tree only
NOFAPI = "`import tpm2_pytss`, tpm2-pytss built without FAPI (`--nofapi`)"
BUNDLE_PASS = "python3 -S -c pass, bundle layout"
BASE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "TSS2_LOG": "all+none"}
CC_NAMES = {0x17A: "GetCapability", 0x173: "ReadPublic", 0x16E: "NV_Read", 0x144: "Startup"}
MAX_CONNECTIONS = 100_000  # bound of the relay's accept loop
MAX_READS = 10_000_000  # bound of one relayed connection
# Is importing only tpm2_pytss submodules cheaper than the package? (bundle layout)
_SKIP_INIT = (
    "import sys, types, importlib.util as u; "
    "s = u.find_spec('tpm2_pytss'); m = types.ModuleType('tpm2_pytss'); "
    "m.__path__ = list(s.submodule_search_locations); sys.modules['tpm2_pytss'] = m; "
    "from tpm2_pytss.ESAPI import ESAPI"
)
VARIANTS = (
    ("`import tpm2_pytss`", "import tpm2_pytss"),
    ("`from tpm2_pytss.ESAPI import ESAPI`", "from tpm2_pytss.ESAPI import ESAPI"),
    ("`from tpm2_pytss.TCTILdr import TCTILdr`", "from tpm2_pytss.TCTILdr import TCTILdr"),
    ("`import cryptography.x509` (tpm2_pytss.types needs it)", "import cryptography.x509"),
    ("ESAPI, package `__init__` skipped (experiment, not used)", _SKIP_INIT),
    ("`import recover.cli`", "import recover.cli"),
    ("`import recover.cli` + `build_parser()`", "import recover.cli; recover.cli.build_parser()"),
)


# --- the relay: timestamps of the TCTI connection and of the first TPM command ----------


class Relay:
    """Loopback TCP relay in front of swtpm's server and control ports."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port_pair()
        self.connected: float | None = None
        self.first: tuple[float, int] | None = None  # (monotonic time, command code)
        self._closed = threading.Event()
        self._listeners: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        for off in (0, 1):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", self.port + off))
            s.listen(16)
            s.settimeout(0.2)
            self._listeners.append(s)
            t = threading.Thread(target=self._accept, args=(s, off), daemon=True)
            t.start()
            self._threads.append(t)

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def arm(self) -> None:
        """Forget the last run's timestamps."""
        self.connected = None
        self.first = None

    def _accept(self, lsock: socket.socket, off: int) -> None:
        for _ in range(MAX_CONNECTIONS):
            if self._closed.is_set():
                return
            try:
                conn, _ = lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if off == 0 and self.connected is None:
                self.connected = time.monotonic()
            try:
                up = socket.create_connection(("127.0.0.1", self.target_port + off), timeout=10)
            except OSError:
                conn.close()
                continue
            pair = [conn, up]
            for src, dst, watch in ((conn, up, off == 0), (up, conn, False)):
                threading.Thread(
                    target=self._pump, args=(src, dst, watch, pair), daemon=True
                ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, watch: bool, pair: list) -> None:
        src.settimeout(120)
        try:
            for _ in range(MAX_READS):
                data = src.recv(65536)
                if not data:
                    break
                if watch and self.first is None:
                    code = int.from_bytes(data[6:10], "big") if len(data) >= 10 else 0
                    self.first = (time.monotonic(), code)
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        pair.pop()
        if not pair:  # the second direction to finish closes both sockets
            src.close()
            dst.close()

    def close(self) -> None:
        self._closed.set()
        for s in self._listeners:
            s.close()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- -X importtime ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Imported:
    name: str
    depth: int
    self_us: int
    cum_us: int
    parent: str | None  # None: imported at top level (or by importlib.import_module)


def parse_importtime(stderr: str) -> list[Imported]:
    """The ``-X importtime`` lines of ``stderr``, in order, each with its importer."""
    rows: list[tuple[str, int, int, int]] = []
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = line[len("import time:") :].split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue  # the header line
        name = parts[2].rstrip()
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        rows.append((name.strip(), depth, int(parts[0]), int(parts[1])))
    out: list[Imported] = []
    following: dict[int, str] = {}  # depth → the nearest later row at that depth
    for name, depth, self_us, cum_us in reversed(rows):  # a parent follows its children
        out.append(Imported(name, depth, self_us, cum_us, following.get(depth - 1)))
        following[depth] = name
    return out[::-1]


def top_level(rows: Sequence[Imported]) -> list[Imported]:
    """Top-level imports by cumulative time, largest first."""
    return sorted((r for r in rows if r.depth == 0), key=lambda r: -r.cum_us)


def origin(name: str) -> str | None:
    top = name.split(".")[0]
    if top in ("recover", "cryptography"):
        return top
    if top in ("tpm2_pytss", "_cffi_backend"):
        return "tpm2_pytss"
    return None


def group_self_times(rows: Sequence[Imported]) -> dict[str, int]:
    """Self time (µs) by origin: our package, tpm2_pytss, cryptography, and the stdlib
    modules each of them pulls in ("stdlib, top level": interpreter start-up, runpy,
    imports inside functions and modules imported by ``importlib.import_module``)."""
    by_name = {r.name: r for r in rows}
    out: dict[str, int] = {}
    for r in rows:
        group = origin(r.name)
        if group is None:
            p, via = r.parent, None
            for _ in range(len(rows)):  # bounded walk up the importers
                if p is None:
                    break
                via = origin(p)
                if via:
                    break
                p = by_name[p].parent if p in by_name else None
            group = f"stdlib via {via}" if via else "stdlib, top level"
        out[group] = out.get(group, 0) + r.self_us
    return out


# --- trees and runs -----------------------------------------------------------------------


class Tree:
    """One checkout of the project with its bundle and bytecode cache."""

    def __init__(self, label: str, path: Path, work: Path, nofapi: Path | None = None) -> None:
        self.label = label
        self.path = path
        self.nofapi = nofapi  # a --target install of tpm2-pytss built without FAPI
        self.work = work / label
        self.bundle = self.work / "bundle"
        self.pycache = self.work / "pycache"
        self.empty_pycache = self.work / "pycache-empty"
        self.stdlib_dir = self.work / "bundle-stdlib-dir"
        self.empty_pycache.mkdir(parents=True)

    def build_bundle(self) -> None:
        """``host-recover bundle`` run from this tree (recover/bundle.py computes the set)."""
        env = {**BASE_ENV, "PYTHONPATH": f"{self.path}:{SITE}"}
        argv = [VENV_PY, "-S", "-m", "recover", "bundle", "--output", str(self.bundle)]
        proc = subprocess.run(argv, env=env, cwd=self.work, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{self.label}: bundle failed: {proc.stderr.strip()}")

    def unzip_stdlib(self) -> None:
        """A second PYTHONHOME with the bundle's stdlib zip extracted to a directory of
        sourceless .pyc files (mode ``bundle-stdlib-dir``); extension modules are shared."""
        import zipfile

        lib, home = self.bundle / "root/usr/lib", self.stdlib_dir / "usr/lib"
        v = f"{sys.version_info.major}.{sys.version_info.minor}"
        zips = list(lib.glob("python*.zip"))
        if len(zips) != 1:
            raise SystemExit(f"{self.label}: no single stdlib zip in {lib}")
        with zipfile.ZipFile(zips[0]) as z:
            z.extractall(home / f"python{v}")
        (home / f"python{v}/lib-dynload").symlink_to(lib / f"python{v}/lib-dynload")

    def python(self, mode: str) -> tuple[list[str], dict[str, str]]:
        """(interpreter argv, environment) for ``mode``."""
        if mode.startswith("bundle"):  # the wrapper's environment, staging dir as prefix
            root = self.bundle / "root"
            site = f"{root}/usr/lib/host-recover/site"
            if mode == "bundle-nofapi":
                site = f"{self.nofapi}:{site}"
            home = self.stdlib_dir if mode == "bundle-stdlib-dir" else root
            return [SYS_PY, "-S"], {
                **BASE_ENV,
                "PYTHONHOME": f"{home}/usr",
                "PYTHONPATH": site,
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        env = {**BASE_ENV, "PYTHONPATH": f"{self.path}:{SITE}"}
        if mode == "src":
            return [VENV_PY, "-S", "-X", f"pycache_prefix={self.pycache}"], env
        return [VENV_PY, "-S", "-B", "-X", f"pycache_prefix={self.empty_pycache}"], env


@contextlib.contextmanager
def checkout(rev: str, work: Path) -> Iterator[Path]:
    """``git worktree add --detach`` of ``rev``; removed, with its admin entry, on exit."""
    path = work / f"tree-{rev.replace('/', '_')}"
    git = ["git", "-C", str(ROOT)]
    subprocess.run([*git, "worktree", "add", "--detach", str(path), rev], check=True,
                   capture_output=True)  # fmt: skip
    try:
        yield path
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(path)], capture_output=True)
        subprocess.run([*git, "worktree", "prune"], capture_output=True)


@dataclasses.dataclass(frozen=True)
class BootRun:
    connect_ms: float
    first_ms: float
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
        args = ["-m", "recover", "--config", str(self.conf), "boot",
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
        _, err = proc.communicate(timeout=120)
        t_exit, wall_exit = time.monotonic(), time.time()
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) * 1000
        first, connected = self.relay.first, self.relay.connected
        if proc.returncode != 0 or first is None or connected is None:
            tail = err.decode(errors="replace")[-600:]
            raise SystemExit(f"{tree.label}/{mode}: exit {proc.returncode}: {tail}")
        ms = [(t - t0) * 1000 for t in (connected, first[0], t_exit)]
        teardown = (wall_exit - json.loads(self.record.read_text())["time"]) * 1000
        return BootRun(ms[0], ms[1], ms[2], cpu, teardown, first[1])

    def importtime(self, tree: Tree, mode: str) -> list[Imported]:
        argv, env = self.argv(tree, mode, ("-X", "importtime"))
        self.relay.arm()
        proc = subprocess.run(argv, env=env, cwd=self.work, capture_output=True, text=True)
        return parse_importtime(proc.stderr)


def import_ms(argv: list[str], env: dict[str, str], code: str) -> float:
    """In-process time of ``code`` (no interpreter start-up, no finalization)."""
    timed = f"import time as _t\n_t0 = _t.perf_counter()\n{code}\nprint(_t.perf_counter() - _t0)"
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
    trees[-1].unzip_stdlib()
    sw = SwTpm(work / "tpmstate")
    stack.callback(sw.close)
    sw.start()
    conf = work / "provision.conf"
    conf.write_text(f"[tpm]\ntcti = {sw.tcti}\n")
    py, env = trees[-1].python("src")
    subprocess.run([*py, "-m", "recover", "--config", str(conf), "provision"], env=env,
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


# --- the report -----------------------------------------------------------------------------


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def report(args: argparse.Namespace, res: Results) -> str:
    b0 = med(res.base["python3 -I -S -c pass"])
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cmd = f"/tmp/venv/bin/python bench/coldstart.py --rounds {args.rounds}"
    cmd += f" --before {args.before}" if args.before else ""
    cmd += f" --after {args.after}" if args.after else ""
    cmd += f" --nofapi {args.nofapi}" if args.nofapi else ""
    out = [
        SECTION,
        "",
        f"Measured {stamp} on this machine (2 cores shared with other jobs, load average "
        f"{os.getloadavg()[0]:.1f}; swtpm, not hardware), {args.rounds} interleaved rounds "
        "after a warm-up round; every time includes fork + exec of the child. Reproduce:",
        "",
        f"    {cmd} --write-docs",
        "",
        "| run | median ms | min ms | vs `-I -S -c pass` |",
        "|---|---|---|---|",
    ]
    for name, xs in res.base.items():
        out.append(f"| `{name}` | {med(xs):.1f} | {min(xs):.1f} | {med(xs) / b0:.1f}x |")
    out += [
        "",
        "`host-recover boot` with a provisioned store after an orderly shutdown (verdict "
        "clean, exit 0). *connect*: the TCTI connected (interpreter, CLI, configuration, "
        "`import tpm2_pytss`, ESAPI init); *first command*: swtpm received the first TPM "
        "command; *exit*: the whole clean boot (evidence, NV record, decision.json); "
        "*CPU*: the child's user + system time to its exit (less sensitive to the load); "
        "*teardown*: from the decision record's `time` to the exit (interpreter finalization).",
        "",
        "| tree | code from | connect ms | first command ms (min) | command | "
        "first vs `-I -S -c pass` | exit ms | CPU ms | teardown ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (label, mode), runs in res.boot.items():
        first = [r.first_ms for r in runs]
        codes = "/".join(sorted({CC_NAMES.get(r.command, hex(r.command)) for r in runs}))
        out.append(
            f"| {label} | {mode} | {med([r.connect_ms for r in runs]):.1f} | "
            f"{med(first):.1f} ({min(first):.1f}) | {codes} | {med(first) / b0:.1f}x | "
            f"{med([r.exit_ms for r in runs]):.1f} | {med([r.cpu_ms for r in runs]):.1f} | "
            f"{med([r.teardown_ms for r in runs]):.1f} |"
        )
    pairs = [(f"{m}: after / before", ("after", m), ("before", m)) for m in MODES]
    last = res.trees[-1]
    pairs = (pairs if args.before else []) + [
        (f"{m} / bundle ({last})", (last, m), (last, "bundle"))
        for m in EXTRA_MODES
        if (last, m) in res.boot
    ]
    out += [
        "",
        "| ratio | first command, medians | first command, minima | exit, medians | CPU, medians |",
        "|---|---|---|---|---|",
    ]
    for name, a, b in pairs:
        cells = [
            agg([getattr(r, f) for r in res.boot[a]]) / agg([getattr(r, f) for r in res.boot[b]])
            for f, agg in (("first_ms", med), ("first_ms", min), ("exit_ms", med), ("cpu_ms", med))
        ]
        out.append(f"| {name} | " + " | ".join(f"{c:.2f}x" for c in cells) + " |")
    out += [
        "",
        "Imports in the bundle layout (`python3 -S -c ...`, zipped stdlib, sourceless site), "
        "each in a fresh interpreter, timed inside the process (no start-up, no finalization):",
        "",
        "| `-c` | median ms | min ms |",
        "|---|---|---|",
    ]
    for label, xs in res.variants.items():
        out.append(f"| {label} | {med(xs):.1f} | {min(xs):.1f} |")
    out += [
        "",
        f"`-X importtime` of the payload ({last}, bundle layout, one run to its exit; "
        "importtime inflates times): top-level imports by cumulative time",
        "",
        "| import | cumulative ms | self ms |",
        "|---|---|---|",
    ]
    for e in top_level(res.imports[last])[: args.top]:
        out.append(f"| `{e.name}` | {e.cum_us / 1000:.1f} | {e.self_us / 1000:.1f} |")
    groups = {label: group_self_times(rows) for label, rows in res.imports.items()}
    names = sorted({g for gs in groups.values() for g in gs})
    out += [
        "",
        "Self time by origin, same runs:",
        "",
        "| origin | " + " | ".join(f"{label} ms" for label in groups) + " |",
        "|---|" + "---|" * len(groups),
    ]
    for n in names:
        row = " | ".join(f"{groups[label].get(n, 0) / 1000:.1f}" for label in groups)
        out.append(f"| {n} | {row} |")
    out += ["", *findings(args, res), ""]
    return "\n".join(out)


def _linked(so: Path) -> int:
    proc = subprocess.run(["ldd", str(so)], capture_output=True, text=True, timeout=60)
    return sum("=>" in line for line in proc.stdout.splitlines())


def _effect(args: argparse.Namespace, res: Results) -> list[str]:
    """The before/after line of the findings (empty without ``--before``)."""
    if not args.before:
        return []

    def ratio(mode: str, field: str, agg: Callable[[list[float]], float] = med) -> str:
        a = agg([getattr(r, field) for r in res.boot[("after", mode)]])
        return f"{mode} {a / agg([getattr(r, field) for r in res.boot[('before', mode)]]):.2f}x"

    return [
        "- Effect of the deferrals, after / before: child CPU to exit (medians) "
        + ", ".join(ratio(mode, "cpu_ms") for mode in MODES)
        + "; wall time to the first command, minima "
        + ", ".join(ratio(mode, "first_ms", min) for mode in MODES)
        + ", medians "
        + ", ".join(ratio(mode, "first_ms") for mode in MODES)
        + ". Wall-clock medians on this shared 2-core machine follow the other jobs' load "
        "from run to run; CPU time and minima are the steadier figures."
    ]


def findings(args: argparse.Namespace, res: Results) -> list[str]:
    """What the tables say, with the figures of this run."""
    last = res.trees[-1]

    def m(mode: str, field: str = "first_ms") -> float:
        return med([getattr(r, field) for r in res.boot[(last, mode)]])

    fb = m("bundle")
    v = {label: med(xs) for label, xs in res.variants.items()}
    v0 = med(res.base[BUNDLE_PASS])
    pkg, esapi, tctildr, x509, skip, cli, parser = (v[label] for label, _ in VARIANTS)
    out = [
        "Findings:",
        "",
        "- The initramfs runs the bundle layout: dracut-module/module-setup.sh installs the "
        "staging directory of `host-recover bundle`, whose wrapper runs `/usr/bin/python3.11 "
        "-S -m recover` on the sourceless site and the zipped stdlib. Sources with a warm "
        f"bytecode cache reach the first TPM command in {m('src') / fb:.2f}x the bundle's "
        f"time, sources without bytecode in {m('src-nopyc') / fb:.2f}x: ship bytecode (TCG "
        "magnifies the difference, DESIGN.md §3).",
        f"- Of the bundle's {fb:.0f} ms to the first TPM command, the bare interpreter in the "
        f"same layout takes {v0:.0f} ms (fork + exec included); `import tpm2_pytss` alone, in "
        f"a fresh interpreter, {pkg:.0f} ms, of which `cryptography.x509` alone {x509:.0f} ms "
        "(tpm2_pytss.types imports cryptography at module level for its key conversions); "
        "the rest of the path (our CLI, configuration and boot modules, the stdlib they need "
        "beyond what tpm2_pytss loads, ESAPI init, the evidence step up to its first call) "
        f"adds {fb - v0 - pkg:.0f} ms.",
        f"- Importing tpm2_pytss submodules directly is not cheaper: ESAPI {esapi:.0f} ms, "
        f"TCTILdr {tctildr:.0f} ms vs the package {pkg:.0f} ms, because Python runs the "
        "package `__init__` first and it imports ESAPI, FAPI, policy, TCTILdr, types and "
        f"constants anyway. Skipping the `__init__` (experiment row) saves {pkg - skip:.0f} ms "
        "at the price of bypassing the package's own load checks: not done.",
        "- Deferred (issue 5): recover.boot imports subprocess and uuid (which imports "
        "platform) only where it mounts or lacks a boot_id; recover.decide imports the peer "
        "stack (recover.peers, recover.inventory, recover.agent) only when an inventory exists "
        "and the peers must be asked; recover.verdict imports peers' `Outcome` only when there "
        "are peer results. tests/test_coldstart.py keeps these, tpm2_pytss, cryptography, "
        "asyncio, ssl, http, email and socket off the path up to `Tpm.open`.",
        *_effect(args, res),
        "- Not deferrable on this path: argparse, logging, dataclasses (with inspect), "
        "pathlib, configparser and json serve every boot; argparse imports shutil and locale "
        "while it builds the parser (shutil would come anyway: tpm2_pytss FAPI → tempfile); "
        "`_hashlib` comes with cryptography's hmac; tpm2_pytss with cryptography is needed "
        f"for the first command. Building the whole CLI parser costs {parser - cli:.1f} ms "
        "(rows `recover.cli`); a boot-only parser would save that, but the one parser is the "
        "CLI contract (docs/cli.md is generated from it): not done. `python3 -I -c pass` in the venv pays for site and the "
        "editable-install finder, which the payload (`-S`) never loads.",
        "- Experiment `bundle-stdlib-dir` (the same sourceless stdlib .pyc files extracted "
        f"from python311.zip into a directory): first command {m('bundle-stdlib-dir') / fb:.2f}x,"
        f" CPU {m('bundle-stdlib-dir', 'cpu_ms') / m('bundle', 'cpu_ms'):.2f}x of the zipped "
        "bundle. Python 3.11's zipimport is written in Python and opens the archive again for "
        "every module it loads. The zip keeps the initramfs reproducible (fixed timestamps, "
        "DESIGN.md §3); a directory would need its mtimes normalised the same way.",
        f"- Exit: after the decision record is written, the interpreter's finalization "
        f"(tearing down tpm2_pytss/cffi, cryptography and our modules) takes "
        f"{m('bundle', 'teardown_ms'):.0f} ms of the clean boot's {m('bundle', 'exit_ms'):.0f} "
        "ms, and the hook waits for it. Ending the boot verb with flushed stdio, "
        "`logging.shutdown()` and `os._exit(code)` would skip it; not done here: it also "
        "skips atexit handlers and unflushed file buffers, a behaviour change for the CLI's "
        "owner to weigh.",
    ]
    if args.nofapi and (last, "bundle-nofapi") in res.boot:
        ext = "tpm2_pytss/_libtpm2_pytss.abi3.so"
        out.append(
            f"- Experiment `bundle-nofapi`: the tpm2-pytss wheel `make venv` builds links "
            f"libtss2-fapi and with it {_linked(Path(SITE) / ext)} libraries (curl, krb5, "
            f"ldap, ...); built with tss2-fapi.pc hidden it links {_linked(args.nofapi / ext)}."
            f" `import tpm2_pytss` {v[NOFAPI]:.0f} ms instead of {pkg:.0f} ms; first TPM "
            f"command {m('bundle-nofapi') / fb:.2f}x, CPU "
            f"{m('bundle-nofapi', 'cpu_ms') / m('bundle', 'cpu_ms'):.2f}x of the bundle's. "
            "recover/ does not use FAPI. Build used: `PKG_CONFIG_LIBDIR=DIR pip wheel --no-deps "
            "tpm2_pytss-3.0.0.tar.gz` with DIR holding links to every .pc file except "
            "tss2-fapi.pc, then `pip install --no-deps --target SITE` of that wheel."
        )
    return out


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
