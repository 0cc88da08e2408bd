"""``host-recover bundle``: the payload's file set for the initramfs.

The set is computed, never hand-listed, and holds only what the payload really loads:

* Python modules: the payload's own modules are found by reading the import statements
  of its entry modules and, transitively, of every ``recover`` module they name (at any
  depth: inside functions too, which is how the payload defers heavy imports; not under
  ``if TYPE_CHECKING:``). Then one subprocess, run with ``-S`` like the boot, imports all
  of them and every outside module they name, and records every module the interpreter
  tried to import (the ``import`` audit event, so a module whose import fails on purpose,
  like tpm2-pytss's FAPI without libtss2-fapi, is kept for the same failure at boot):
  the standard library and the third-party packages contribute exactly the modules that
  importing the payload loads, nothing of theirs that it never imports.
* Everything is compiled to sourceless ``.pyc``: the standard library into
  ``usr/lib/python3.11/`` (the interpreter's own stdlib directory; ``stdlib="zip"``:
  ``usr/lib/python311.zip`` instead, stored, sorted, timestamps fixed to 1980-01-01 —
  the directory loads faster, docs/performance.md; both are the same bytes on every
  rebuild, and dracut ``--reproducible`` clamps the files' times, so the initramfs and
  with it PCR 9 do not move), the other packages into ``usr/lib/host-recover/site/``
  next to their extension modules. Beside the ``recover`` package, the code of the
  methods ``dataclasses`` writes while the payload's modules are imported, compiled by
  the same interpreter (recover.dataclasscode: the boot then creates its dataclasses
  without compiling their methods' source text).
* ELF files: the interpreter, the extension modules (copied without their symbol table
  and debug sections: ``strip --strip-unneeded``) and the DT_NEEDED closure of all of
  them (read with pyelftools, resolved like ld.so: DT_RPATH/DT_RUNPATH with $ORIGIN,
  then the system directories), plus the libraries loaded with dlopen that no ELF
  header names: the tss2 device TCTI and OpenSSL's providers.

What a function of the standard library imports only when it is called (and the payload
calls it) is not seen by the import probe: tests/integration/test_bundle_paths.py runs
the payload's every path (clean, recovery, peer stage, errors) from the bundle alone.

Staging directory layout (read by dracut-module/module-setup.sh)::

    root/            files to copy into the initramfs as they are (.pyc, wrapper)
    binaries.list    host paths of executables to install (inst_binary)
    libraries.list   host paths of shared libraries to install (inst_library)
    manifest.json    what was found and how big it is
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from recover.errors import ConfigError, UsageError

#: Where things go inside the initramfs.
ZIP_PATH = "usr/lib/python{v}{w}.zip"
STDLIB_DIR = "usr/lib/python{v}.{w}"
STDLIB_LAYOUTS = ("dir", "zip")
SITE_DIR = "usr/lib/host-recover/site"
WRAPPER = "usr/bin/host-recover"
#: Zip entry timestamp: the earliest a zip can hold; fixed so rebuilds are identical.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
#: Never part of a boot payload even if some module mentions them.
EXCLUDES = (
    "tkinter",
    "test",
    "unittest",
    "pydoc",
    "pydoc_data",
    "idlelib",
    "lib2to3",
    "ensurepip",
    "distutils",
    "setuptools",
    "pip",
    "_pytest",
    "pytest",
    "hypothesis",
    "doctest",
    "turtle",
    "turtledemo",
    "sqlite3",
    "curses",
    "venv",
    # build-time only: the payload never bundles itself or writes docs
    "recover.bundle",
    "recover.cli.docs",
    "elftools",
)
#: Imported by the standard library only inside ``try: ... except ImportError`` and not
#: needed by the payload: left out unless the payload's own code imports them. ``ssl``:
#: asyncio imports it for TLS transports; the peers speak plain HTTP (every reply is
#: authenticated by a TPM quote), and ``_ssl`` would bring libssl.
OPTIONAL = ("ssl", "_ssl")
#: Libraries opened with dlopen (invisible to DT_NEEDED and ldd), as glob patterns.
DLOPENED = (
    "libtss2-tcti-device.so.0",
    "ossl-modules/*.so",
)
SYSTEM_LIB_DIRS = (
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
)


@dataclasses.dataclass(frozen=True)
class Module:
    """A module the payload imports, and where it is loaded from."""

    name: str
    path: Path | None  # None: built into the interpreter
    stdlib: bool

    @property
    def is_extension(self) -> bool:
        return self.path is not None and self.path.suffix == ".so"


@dataclasses.dataclass(frozen=True)
class BundleReport:
    """What ``build`` wrote into the staging directory: counts, files and sizes."""

    output: Path
    entry: tuple[str, ...]
    modules: int
    stdlib_pyc: int
    site_pyc: int
    extensions: tuple[str, ...]
    libraries: tuple[str, ...]
    binaries: tuple[str, ...]
    stdlib_layout: str
    stdlib_bytes: int
    site_bytes: int
    elf_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.stdlib_bytes + self.site_bytes + self.elf_bytes

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["output"] = os.fspath(self.output)
        d["total_bytes"] = self.total_bytes
        return d


# --- Python modules ------------------------------------------------------------------


def _stdlib_dirs() -> tuple[Path, ...]:
    paths = sysconfig.get_paths()
    return tuple(Path(paths[k]).resolve() for k in ("stdlib", "platstdlib"))


def _is_stdlib(path: Path, stdlib: Sequence[Path]) -> bool:
    rp = path.resolve()
    return any(rp.is_relative_to(d) for d in stdlib) and not any(
        p in ("site-packages", "dist-packages") for p in rp.parts
    )


def _excluded(name: str) -> bool:
    return any(name == e or name.startswith(e + ".") for e in EXCLUDES)


def _package_parent() -> str:
    """Where ``recover`` is imported from (an editable install is not on sys.path)."""
    import recover

    return os.fspath(Path(str(recover.__file__)).resolve().parents[1])


def _search_path() -> list[str]:
    return [_package_parent(), *(p for p in sys.path if p)]


#: Codecs looked up by name through the codec registry, which imports
#: ``encodings.<name>`` from C where no import statement shows it: the interpreter's
#: file-system and stdio encoding, the two io and the payload name, and idna (the
#: socket module encodes host names with it), utf-16-le (UEFI variable names in the event
#: log). tests/unit/test_bundle.py checks every codec named in recover/ is listed.
CODECS = ("utf-8", "ascii", "latin-1", "idna", "utf-16-le")


def _module_file(name: str, parent: Path) -> Path | None:
    """The source of module ``name`` under ``parent`` (None: not a module there)."""
    base = parent.joinpath(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _prefixes(dotted: str) -> list[str]:
    parts = dotted.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def imported_names(tree: ast.AST, name: str, is_package: bool) -> set[str]:
    """Every module name an import statement of module ``name`` may load, at any depth
    (inside functions too; not under ``if TYPE_CHECKING:``). ``from a import b`` gives
    ``a`` and ``a.b``: ``b`` may be a submodule or an attribute, the probe tells."""
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _type_checking(node.test):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.update(_prefixes(alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            out.update(_prefixes(base))
            out.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        todo.extend(ast.iter_child_nodes(node))
    return out


def _parse(path: Path) -> ast.Module:
    """A source file's syntax tree, parsed once while the file is unchanged: ``build``
    repeats the ``__getattr__`` and deferred-import passes over every module found until
    nothing new turns up (3 rounds for the payload today: 171 of 333 parses reused)."""
    st = path.stat()
    return _parse_version(path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4096)
def _parse_version(path: Path, _mtime_ns: int, _size: int) -> ast.Module:
    return ast.parse(path.read_bytes(), os.fspath(path))


def payload_graph(entry: Sequence[str]) -> tuple[dict[str, Path], set[str]]:
    """(our modules reachable from ``entry`` → source file, the outside module names
    they import). Read from the sources: nothing is imported here."""
    parent = Path(_package_parent())
    top = entry[0].split(".")[0] if entry else "recover"
    own: dict[str, Path] = {}
    outside: set[str] = set()
    todo = list(entry)
    for _ in range(100_000):  # bounded: the package has a few hundred modules
        if not todo:
            break
        name = todo.pop()
        if name in own or _excluded(name):
            continue
        path = _module_file(name, parent)
        if path is None:
            raise ConfigError(
                f"payload module {name!r} not found under {parent}",
                hint="bundle from a checkout or an installation of host-recover",
            )
        own[name] = path
        tree = _parse(path)
        for n in imported_names(tree, name, path.name == "__init__.py"):
            if n.split(".")[0] != top:
                outside.add(n)
            elif n not in own and _module_file(n, parent) is not None:
                todo.append(n)  # else: an attribute (from recover.x import Name)
    return own, outside


_PROBE = """
import codecs, importlib, importlib.util, json, sys
tried = []
sys.addaudithook(lambda event, args: tried.append(args[0]) if event == "import" else None)
spec = json.loads(sys.stdin.read())
for name in spec["own"]:
    importlib.import_module(name)
for name in spec["outside"]:
    try:
        importlib.import_module(name)
    except Exception:  # an attribute (from a import b), or optional and failing here:
        pass  # the audit hook has the attempt; a module that exists is kept below
for name in spec["codecs"]:
    codecs.lookup(name)
files = {}
for name in sorted(set(tried) | set(sys.modules)):
    mod = sys.modules.get(name)
    if mod is not None:
        files[name] = getattr(mod, "__file__", None)
        continue
    try:  # tried but not loaded: kept if it exists (its import fails the same at boot)
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        found = None
    if found is not None and found.has_location:
        files[name] = found.origin
print(json.dumps(files))
"""


def lazy_attribute_imports(found: dict[str, Path | None]) -> set[str]:
    """What module-level ``__getattr__`` functions (PEP 562) import: a package that
    loads a submodule when an attribute is first used (``concurrent.futures`` imports
    ``.thread`` when asyncio first asks for ``ThreadPoolExecutor``), unseen by a probe
    that only imports."""
    out: set[str] = set()
    for name, path in found.items():
        if path is None or path.suffix != ".py":
            continue
        if b"def __getattr__" not in path.read_bytes():
            continue
        for node in _parse(path).body:
            if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
                out |= imported_names(node, name, path.name == "__init__.py")
    return out


def deferred_imports(found: dict[str, Path | None]) -> set[str]:
    """What the third-party modules found import inside their functions, within their
    own package: ``cryptography``'s ``ECDSA()`` imports its OpenSSL backend in its
    constructor, unseen by a probe that only imports (the payload makes that object
    without the constructor, ``p256.ecdsa_sha256``, and falls back to it on another
    cryptography version: the backend is shipped for that case). The standard
    library's deferred imports are left to the test that runs every payload path."""
    out: set[str] = set()
    for name, path in found.items():
        if path is None or path.suffix != ".py" or "site-packages" not in path.parts:
            continue
        tree = _parse(path)
        top = name.split(".")[0]
        out |= {
            n
            for n in imported_names(tree, name, path.name == "__init__.py")
            if n.split(".")[0] == top and not _excluded(n)
        }
    return out


def _probe_env() -> dict[str, str]:
    """The environment of a probe subprocess: this package and the third-party ones, no
    other PYTHON* variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in _search_path() if "site-packages" in p or p == _package_parent()
    )
    env["TSS2_LOG"] = "all+none"
    return env


def runtime_imports(
    own: Sequence[str], outside: Iterable[str], python: str = sys.executable
) -> dict[str, Path | None]:
    """Every module that importing the payload's modules (``own``, then the ``outside``
    names they import) makes the interpreter try, with its file (None: built in). One
    subprocess, ``-S`` like the boot."""
    env = _probe_env()
    spec = {
        "own": [n for n in own if not n.endswith("__main__")],  # __main__ would run
        "outside": sorted(outside),
        "codecs": list(CODECS),
    }
    proc = subprocess.run(
        [python, "-S", "-c", _PROBE],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise ConfigError(f"importing the payload failed: {last}", hint="run with --debug")
    raw: dict[str, str | None] = json.loads(proc.stdout)
    return {
        n: (Path(f) if f else None) for n, f in raw.items() if n != "__main__" and not _excluded(n)
    }


_RECORD = """
import sys
from recover import dataclasscode
sys.stdout.buffer.write(dataclasscode.record(sys.stdin.read().split()))
"""


def dataclass_table(own: Iterable[str], python: str = sys.executable) -> bytes:
    """The compiled code of the methods dataclasses writes while the payload's own
    modules are imported (recover.dataclasscode): one subprocess, ``-S`` like the boot,
    with the interpreter the bundle ships (the table is of its bytecode version)."""
    names = sorted(n for n in own if not n.endswith("__main__"))
    proc = subprocess.run(
        [python, "-S", "-c", _RECORD],
        input="\n".join(names).encode(),
        capture_output=True,
        env=_probe_env(),
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines() or ["?"]
        raise ConfigError(f"compiling the dataclasses' methods failed: {err[-1]}")
    return proc.stdout


def _package_root(name: str, path: Path) -> Path:
    """The sys.path entry ``path`` was imported from (``name`` dotted)."""
    depth = name.count(".") + (1 if path.name.startswith("__init__.") else 0)
    root = path.parent
    for _ in range(depth):
        root = root.parent
    return root


def _alias(name: str, path: Path) -> bool:
    """``os.path`` (posixpath), ``_frozen_importlib`` (importlib._bootstrap): a second
    name for a module that is shipped, or frozen, under its own name."""
    stem = path.name.split(".")[0]
    return stem != name.rpartition(".")[2] and stem != "__init__"


def resolve_modules(found: dict[str, Path | None], wanted: Iterable[str] = ()) -> list[Module]:
    """Modules with their files; :data:`OPTIONAL` ones only if ``wanted`` names them."""
    stdlib = _stdlib_dirs()
    keep = set(wanted)
    mods: dict[str, Module] = {}
    for name, path in found.items():
        if name.split(".")[0] in OPTIONAL and name.split(".")[0] not in keep:
            continue
        if path is not None and _alias(name, path):
            continue
        if path is None or path.suffix not in (".py", ".so", ".pyc") or not path.exists():
            mods.setdefault(name, Module(name, None, True))
            continue
        mods[name] = Module(name, path, _is_stdlib(path, stdlib))
    return sorted(mods.values(), key=lambda m: m.name)


def _pyc_bytes(source: Path, dfile: str) -> bytes:
    """Sourceless .pyc: timestamp header with mtime 0 (sourceless pycs are not checked)."""
    import importlib._bootstrap_external as ext
    import marshal

    data = source.read_bytes()
    code = compile(data, dfile, "exec", dont_inherit=True)
    header = ext.MAGIC_NUMBER + (0).to_bytes(4, "little") * 2 + len(data).to_bytes(4, "little")
    return header + marshal.dumps(code)


def _relpath(m: Module) -> str:
    assert m.path is not None
    if m.path.name.startswith("__init__."):
        return m.name.replace(".", "/") + "/__init__"
    return m.name.replace(".", "/")


def _stdlib_pycs(mods: Iterable[Module]) -> dict[str, bytes]:
    """Relative path → sourceless .pyc of every stdlib module written in Python."""
    entries: dict[str, bytes] = {}
    for m in mods:
        if m.path is None or not m.stdlib or m.path.suffix != ".py":
            continue
        rel = _relpath(m) + ".pyc"
        entries[rel] = _pyc_bytes(m.path, rel[:-1])
    return entries


def write_stdlib_dir(mods: Iterable[Module], top: Path) -> tuple[int, int]:
    """Sourceless stdlib .pyc files under ``top``; returns (count, bytes)."""
    entries = _stdlib_pycs(mods)
    for rel in sorted(entries):
        dest = top / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(entries[rel])
    return len(entries), sum(map(len, entries.values()))


def write_stdlib_zip(mods: Iterable[Module], zpath: Path) -> int:
    """Sourceless stdlib zip with fixed timestamps and sorted entries; returns count."""
    entries = _stdlib_pycs(mods)
    zpath.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_STORED) as z:
        dirs = sorted({str(Path(r).parent) + "/" for r in entries if "/" in r})
        for d in dirs:  # directory entries let zipimport find namespace-free packages
            z.writestr(_zinfo(d, 0o40755), b"")
        for rel in sorted(entries):
            z.writestr(_zinfo(rel, 0o100644), entries[rel])
    return len(entries)


def _zinfo(name: str, mode: int) -> zipfile.ZipInfo:
    zi = zipfile.ZipInfo(name, ZIP_EPOCH)
    zi.external_attr = mode << 16
    zi.create_system = 3
    return zi


# --- ELF closure ------------------------------------------------------------------------


def _elf_info(path: Path) -> tuple[list[str], list[str], str | None]:
    """(DT_NEEDED, search dirs from DT_RPATH/DT_RUNPATH, PT_INTERP) of an ELF file."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile

    needed: list[str] = []
    dirs: list[str] = []
    interp: str | None = None
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_INTERP":
                    interp = seg.get_interp_name()  # type: ignore[attr-defined]
            for sec in elf.iter_sections():
                if not isinstance(sec, DynamicSection):
                    continue
                for tag in sec.iter_tags():
                    if tag.entry.d_tag == "DT_NEEDED":
                        needed.append(tag.needed)  # type: ignore[attr-defined]
                    elif tag.entry.d_tag in ("DT_RPATH", "DT_RUNPATH"):
                        raw = getattr(tag, "rpath" if tag.entry.d_tag == "DT_RPATH" else "runpath")
                        origin = os.fspath(path.parent)
                        dirs += [d.replace("$ORIGIN", origin) for d in raw.split(":") if d]
    except (ELFError, OSError) as e:
        raise ConfigError(f"{path}: not a readable ELF file: {e}") from None
    return needed, dirs, interp


def _has_symbols(path: Path) -> bool:
    """Whether an ELF file still has a symbol table or debug sections."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as f:
            names = [sec.name for sec in ELFFile(f).iter_sections()]
    except (ELFError, OSError) as e:
        raise ConfigError(f"{path}: not a readable ELF file: {e}") from None
    return any(n == ".symtab" or n.startswith((".debug", ".zdebug")) for n in names)


def copy_stripped(src: Path, dest: Path) -> None:
    """Copy a shared object without its symbol table and debug sections (the dynamic
    symbols it is loaded by stay): ``strip --strip-unneeded``, deterministic. Files
    that are stripped already, or a system without ``strip``, get a plain copy."""
    strip = shutil.which("strip")
    if strip is None or not _has_symbols(src):
        shutil.copy2(src, dest)
        return
    proc = subprocess.run(
        [strip, "--strip-unneeded", "--preserve-dates", "-o", os.fspath(dest), os.fspath(src)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        raise ConfigError(f"strip {src} failed: {proc.stderr.strip()}", hint="install binutils")
    dest.chmod(src.stat().st_mode & 0o777)


def find_library(soname: str, extra_dirs: Sequence[str] = ()) -> Path | None:
    for d in (*extra_dirs, *SYSTEM_LIB_DIRS):
        p = Path(d) / soname
        if p.exists():
            return p
    return None


def elf_closure(roots: Iterable[Path]) -> tuple[list[Path], list[str]]:
    """Shared libraries the ``roots`` need, transitively; and sonames not found."""
    todo = list(roots)
    seen: set[Path] = set()
    libs: dict[str, Path] = {}
    missing: list[str] = []
    for _ in range(10000):  # bounded: the closure of a payload is a few hundred files
        if not todo:
            break
        path = todo.pop()
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        needed, dirs, interp = _elf_info(path)
        if interp and interp not in libs:
            libs[interp] = Path(interp)
            todo.append(Path(interp))
        for soname in needed:
            if soname in libs:
                continue
            found = find_library(soname, dirs)
            if found is None:
                missing.append(soname)
                continue
            libs[soname] = found
            todo.append(found)
    return sorted(set(libs.values())), sorted(set(missing))


def dlopened_libraries() -> list[Path]:
    out: list[Path] = []
    for pattern in DLOPENED:
        for d in SYSTEM_LIB_DIRS:
            out += sorted(Path(d).glob(pattern))
    seen: set[Path] = set()
    uniq = []
    for p in out:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            uniq.append(p)
    return uniq


# --- the bundle -------------------------------------------------------------------------


def payload_entry() -> tuple[str, ...]:
    """Entry modules of the payload: the CLI and the handler of the ``boot`` verb."""
    from recover.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    handler = sub.choices["boot"].get_default("handler")  # type: ignore[index]
    return ("recover.__main__", "recover.cli.entry", "recover.cli.run", "recover.cli.main",
            "recover.log", "recover.config", handler.__module__, "recover.boot.payload")  # fmt: skip


#: The payload's entry when run from the wrapper (-I ignores PYTHONPATH).
_ENTRY = (
    "import sys; sys.path.insert(0, {site!r}); sys.argv[0] = 'host-recover'; "
    "from recover.cli.entry import main; raise SystemExit(main())"
)


def _wrapper(site: str) -> str:
    """The initramfs's /usr/bin/host-recover. Isolated: init's environment comes from the
    kernel command line (PYTHONINSPECT=1, TSS2_LOG=…+trace, HOST_RECOVER_*), so nothing of
    it reaches the interpreter or the payload: ``env -i`` with a fixed PATH and TSS2_LOG
    off, ``python -I -S -B`` (no PYTHON* variables, no site, no user paths, no bytecode
    writes)."""
    v = f"{sys.version_info.major}.{sys.version_info.minor}"
    entry = _ENTRY.format(site=f"/{site}")
    return (
        "#!/bin/sh\n"
        "# host-recover in the initramfs: sourceless bytecode, a clean environment, an\n"
        "# isolated interpreter (nothing from the kernel command line reaches it).\n"
        "exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin TSS2_LOG=all+none \\\n"
        f'    /usr/bin/python{v} -I -S -B -c "{entry}" "$@"\n'
    )


def build(
    output: str | os.PathLike[str],
    entry: Sequence[str] | None = None,
    stdlib: str = "dir",
) -> BundleReport:
    """Write the staging directory for the initramfs (see the module docstring);
    ``stdlib``: ``dir`` or ``zip`` (:data:`STDLIB_LAYOUTS`)."""
    if stdlib not in STDLIB_LAYOUTS:
        raise UsageError(f"unknown stdlib layout {stdlib!r}", hint="dir or zip")
    out = Path(output)
    entry = tuple(entry or payload_entry())
    if out.exists():
        known = {"root", "binaries.list", "libraries.list", "manifest.json"}
        if any(p.name not in known for p in out.iterdir()):
            raise UsageError(
                f"{out} exists and is not a bundle", hint="pass an empty or new directory"
            )
        shutil.rmtree(out)
    root = out / "root"
    root.mkdir(parents=True)

    own, outside = payload_graph(entry)
    found: dict[str, Path | None] = dict(own)
    roots = set(outside)
    for _ in range(8):  # bounded: each round adds what the last one's __getattr__s import
        for name, path in runtime_imports(list(own), roots).items():
            found.setdefault(name, path)
        lazy = (lazy_attribute_imports(found) | deferred_imports(found)) - roots
        if not lazy:
            break
        roots |= lazy
    mods = resolve_modules(found, wanted={n.split(".")[0] for n in outside})

    v = sys.version_info
    if stdlib == "zip":
        zpath = root / ZIP_PATH.format(v=v.major, w=v.minor)
        stdlib_pyc = write_stdlib_zip(mods, zpath)
        stdlib_bytes = zpath.stat().st_size
    else:
        stdlib_pyc, stdlib_bytes = write_stdlib_dir(
            mods, root / STDLIB_DIR.format(v=v.major, w=v.minor)
        )

    site_pyc = 0
    extensions: list[Path] = []
    site_bytes = 0
    for m in mods:
        if m.path is None:
            continue
        if m.is_extension:
            extensions.append(m.path)
            if m.stdlib:
                dest = root / "usr/lib" / f"python{v.major}.{v.minor}/lib-dynload" / m.path.name
            else:
                rel = m.path.relative_to(_package_root(m.name, m.path))
                dest = root / SITE_DIR / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            copy_stripped(m.path, dest)
            site_bytes += dest.stat().st_size
        elif not m.stdlib and m.path.suffix == ".py":
            rel_s = _relpath(m)
            dest = root / SITE_DIR / (rel_s + ".pyc")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(_pyc_bytes(m.path, f"/{SITE_DIR}/{rel_s}.py"))
            site_pyc += 1
            site_bytes += dest.stat().st_size

    from recover import dataclasscode

    table = root / SITE_DIR / "recover" / dataclasscode.FILE
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_bytes(dataclass_table(own))
    site_bytes += table.stat().st_size

    wrapper = root / WRAPPER
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    wrapper.write_text(_wrapper(SITE_DIR))
    wrapper.chmod(0o755)

    python = Path(sys.executable).resolve()
    dl = dlopened_libraries()
    libs, missing = elf_closure([python, *extensions, *dl])
    libs = sorted(set(libs) | set(dl))
    if missing:
        raise ConfigError(
            f"shared libraries not found: {', '.join(missing)}",
            hint="install the packages that provide them",
        )
    (out / "binaries.list").write_text(f"{python}\n")
    (out / "libraries.list").write_text("".join(f"{p}\n" for p in libs))
    elf_bytes = python.stat().st_size + sum(p.resolve().stat().st_size for p in libs)
    report = BundleReport(
        output=out,
        entry=entry,
        modules=len(mods),
        stdlib_pyc=stdlib_pyc,
        site_pyc=site_pyc,
        extensions=tuple(sorted(p.name for p in extensions)),
        libraries=tuple(os.fspath(p) for p in libs),
        binaries=(os.fspath(python),),
        stdlib_layout=stdlib,
        stdlib_bytes=stdlib_bytes,
        site_bytes=site_bytes,
        elf_bytes=elf_bytes,
    )
    (out / "manifest.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return report
