"""Checkouts of the project and how to run the payload from each of them.

A ``Tree`` is one checkout (this one, or a revision checked out by ``checkout``) with
its bundle and bytecode caches; ``Tree.python(mode)`` gives the interpreter argv and
environment that load the payload's code three ways:

* ``bundle``: what the initramfs runs: the staging directory of ``host-recover bundle``
  (sourceless .pyc, the stdlib zipped), Debian's python3 with ``-S`` and PYTHONHOME
  pointed at the staging copy (experiments: ``bundle-stdlib-dir``, the stdlib unzipped;
  ``bundle-nofapi``, another tpm2-pytss in front of the bundle's site);
* ``src``: the source tree with a warm bytecode cache (``-X pycache_prefix=DIR``);
* ``src-nopyc``: sources compiled at every start (``-B``, an empty pycache prefix).

bench/coldstart.py times a before and an after tree in the same run with these.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

#: The checkout this package belongs to (``git worktree add`` runs in it).
ROOT = Path(__file__).resolve().parents[1]
VENV_PY = sys.executable  # the venv's python: a symlink to Debian's python3.11
SYS_PY = os.path.realpath(sys.executable)  # what the initramfs installs (binaries.list)
SITE = next((p for p in sys.path if p.endswith("site-packages")), "")
MODES = ("bundle", "src", "src-nopyc")
EXTRA_MODES = ("bundle-stdlib-dir", "bundle-nofapi")  # experiments
BASE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "TSS2_LOG": "all+none"}


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
