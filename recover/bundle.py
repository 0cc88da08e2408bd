"""``host-recover bundle``: the payload's file set for the initramfs.

The set is computed, never hand-listed:

* Python modules: the import graph of the payload's entry modules, as the union of a
  bytecode scan (``modulefinder``: it also sees imports inside functions, which is how
  the payload defers heavy imports) and the modules a real import in a subprocess puts
  into ``sys.modules`` (imports made from C, e.g. ``_cffi_backend``). Third-party
  packages that are used are taken whole (they import lazily in ways a scan misses).
* Everything is compiled to sourceless ``.pyc``: the standard library into
  ``usr/lib/python311.zip`` (stored, sorted, timestamps fixed to 1980-01-01 so that the
  initramfs, and with it PCR 9, is the same on every rebuild), the other packages into
  ``usr/lib/host-recover/site/`` next to their extension modules.
* ELF files: the interpreter, the extension modules and the DT_NEEDED closure of all of
  them (read with pyelftools, resolved like ld.so: DT_RPATH/DT_RUNPATH with $ORIGIN,
  then the system directories), plus the libraries loaded with dlopen that no ELF
  header names: tss2 TCTIs and OpenSSL providers.

Staging directory layout (read by dracut-module/module-setup.sh)::

    root/            files to copy into the initramfs as they are (zip, .pyc, wrapper)
    binaries.list    host paths of executables to install (inst_binary)
    libraries.list   host paths of shared libraries to install (inst_library)
    manifest.json    what was found and how big it is
"""

from __future__ import annotations

import dataclasses
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
    name: str
    path: Path | None  # None: built into the interpreter
    stdlib: bool

    @property
    def is_extension(self) -> bool:
        return self.path is not None and self.path.suffix == ".so"


@dataclasses.dataclass(frozen=True)
class BundleReport:
    output: Path
    entry: tuple[str, ...]
    modules: int
    stdlib_pyc: int
    site_pyc: int
    extensions: tuple[str, ...]
    libraries: tuple[str, ...]
    binaries: tuple[str, ...]
    zip_bytes: int
    site_bytes: int
    elf_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.zip_bytes + self.site_bytes + self.elf_bytes

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


def scan_imports(entry: Sequence[str], scripts: Sequence[Path] = ()) -> dict[str, Path | None]:
    """Bytecode import graph of ``entry`` modules and ``scripts`` (name → file)."""
    import modulefinder

    finder = modulefinder.ModuleFinder(path=_search_path(), excludes=list(EXCLUDES))
    for name in entry:
        try:
            finder.import_hook(name)
        except ImportError as e:
            raise ConfigError(
                f"payload module {name!r} cannot be imported: {e}",
                hint="install the package into the environment you bundle from",
            ) from None
    for script in scripts:
        finder.run_script(os.fspath(script))
    out: dict[str, Path | None] = {}
    for name, mod in finder.modules.items():
        if name == "__main__" or _excluded(name):
            continue
        file = getattr(mod, "__file__", None)
        out[name] = Path(file) if file else None
    return out


_PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps({n: getattr(m, "__file__", None) for n, m in sorted(sys.modules.items())}))
"""


def runtime_imports(entry: Sequence[str], python: str = sys.executable) -> dict[str, Path | None]:
    """Modules that really importing ``entry`` loads (a subprocess, ``-S`` like the boot)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in _search_path() if "site-packages" in p or p == _package_parent()
    )
    env["TSS2_LOG"] = "all+none"
    proc = subprocess.run(
        [python, "-S", "-c", _PROBE, *(n for n in entry if not n.endswith("__main__"))],
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


def _package_root(name: str, path: Path) -> Path:
    """The sys.path entry ``path`` was imported from (``name`` dotted)."""
    depth = name.count(".") + (1 if path.name.startswith("__init__.") else 0)
    root = path.parent
    for _ in range(depth):
        root = root.parent
    return root


def resolve_modules(found: dict[str, Path | None]) -> list[Module]:
    stdlib = _stdlib_dirs()
    mods: dict[str, Module] = {}
    for name, path in found.items():
        if path is None or path.suffix not in (".py", ".so", ".pyc") or not path.exists():
            mods.setdefault(name, Module(name, None, True))
            continue
        mods[name] = Module(name, path, _is_stdlib(path, stdlib))
    # Third-party packages whole; the stdlib's codec registry imports encodings by name.
    extra: dict[str, Path] = {}
    for m in list(mods.values()):
        if m.path is None:
            continue
        top = m.name.split(".")[0]
        if m.stdlib and top != "encodings":
            continue
        root = _package_root(m.name, m.path)
        pkg = root / top
        if pkg.is_dir():
            for f in sorted(pkg.rglob("*")):
                if f.suffix in (".py", ".so") and "__pycache__" not in f.parts:
                    rel = f.relative_to(root).with_suffix("")
                    parts = list(rel.parts)
                    if parts[-1] == "__init__":
                        parts.pop()
                    parts[-1] = parts[-1].split(".")[0]
                    modname = ".".join(parts)
                    if not _excluded(modname) and not any(p in ("tests", "testing") for p in parts):
                        extra.setdefault(modname, f)
    for name, f in extra.items():
        if name not in mods or mods[name].path is None:
            mods[name] = Module(name, f, _is_stdlib(f, stdlib))
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


def write_stdlib_zip(mods: Iterable[Module], zpath: Path) -> int:
    """Sourceless stdlib zip with fixed timestamps and sorted entries; returns count."""
    entries: dict[str, bytes] = {}
    for m in mods:
        if m.path is None or not m.stdlib or m.path.suffix != ".py":
            continue
        rel = _relpath(m) + ".pyc"
        entries[rel] = _pyc_bytes(m.path, rel[:-1])
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
    return ("recover.__main__", "recover.cli.main", "recover.log", "recover.config",
            handler.__module__, "recover.boot.payload")  # fmt: skip


#: The payload's entry when run from the wrapper (-I ignores PYTHONPATH).
_ENTRY = (
    "import sys; sys.path.insert(0, {site!r}); sys.argv[0] = 'host-recover'; "
    "from recover.cli.main import main; raise SystemExit(main())"
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
    scripts: Sequence[Path] = (),
) -> BundleReport:
    """Write the staging directory for the initramfs (see the module docstring)."""
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

    found = scan_imports(entry, scripts)
    for name, path in runtime_imports(entry).items():
        found.setdefault(name, path)
    mods = resolve_modules(found)

    v = sys.version_info
    zpath = root / ZIP_PATH.format(v=v.major, w=v.minor)
    stdlib_pyc = write_stdlib_zip(mods, zpath)

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
            shutil.copy2(m.path, dest)
            site_bytes += dest.stat().st_size
        elif not m.stdlib and m.path.suffix == ".py":
            rel_s = _relpath(m)
            dest = root / SITE_DIR / (rel_s + ".pyc")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(_pyc_bytes(m.path, f"/{SITE_DIR}/{rel_s}.py"))
            site_pyc += 1
            site_bytes += dest.stat().st_size

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
        zip_bytes=zpath.stat().st_size,
        site_bytes=site_bytes,
        elf_bytes=elf_bytes,
    )
    (out / "manifest.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return report
