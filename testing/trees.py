"""Checkouts of the project and how to run the payload from each of them.

A ``Tree`` is one checkout (this one, or a revision checked out by ``checkout``) with
its bundle and bytecode caches; ``Tree.python(mode)`` gives the interpreter argv and
environment that load the payload's code three ways:

* ``bundle``: what the initramfs runs: the staging directory of ``host-recover bundle``
  (sourceless .pyc), Debian's python3 with ``-S -P`` and PYTHONHOME pointed at the
  staging copy (experiments: ``bundle-stdlib-zip``, the same modules with the stdlib zipped,
  ``host-recover bundle --stdlib zip``; ``bundle-nofapi``, another tpm2-pytss in front of
  the bundle's site);
* ``src``: the source tree with a warm bytecode cache (``-X pycache_prefix=DIR``);
* ``src-nopyc``: sources compiled at every start (``-B``, an empty pycache prefix).

``Tree.entry(mode)`` is how the payload is started in that mode: for the bundle modes the
``-c`` statement of the staging directory's /usr/bin/host-recover (the wrapper the
initramfs runs, with its site path pointed at the staging copy: ``-I`` would ignore
PYTHONHOME, so the environment stands in for it); for the source modes ``-m recover``.

bench/coldstart.py times a before and an after tree in the same run with these.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
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
SITE_IN_IMAGE = "/usr/lib/host-recover/site"  # recover/bundle.py
EXTRA_MODES = ("bundle-stdlib-zip", "bundle-nofapi")  # experiments
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
        self.stdlib_zip = self.work / "bundle-stdlib-zip"
        self.empty_pycache.mkdir(parents=True)

    def build_bundle(self, stdlib: str = "") -> None:
        """``host-recover bundle`` run from this tree (recover/bundle.py computes the set);
        ``stdlib="zip"``: the ``bundle-stdlib-zip`` experiment's staging directory."""
        env = {**BASE_ENV, "PYTHONPATH": f"{self.path}:{SITE}"}
        out = self.stdlib_zip if stdlib else self.bundle
        argv = [VENV_PY, "-S", "-m", "recover", "bundle", "--output", str(out)]
        argv += ["--stdlib", stdlib] if stdlib else []
        proc = subprocess.run(argv, env=env, cwd=self.work, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{self.label}: bundle failed: {proc.stderr.strip()}")

    def python(self, mode: str) -> tuple[list[str], dict[str, str]]:
        """(interpreter argv, environment) for ``mode``."""
        if mode.startswith("bundle"):  # the wrapper's environment, staging dir as prefix
            root = self.bundle / "root"
            site = f"{root}{SITE_IN_IMAGE}"
            if mode == "bundle-nofapi":
                site = f"{self.nofapi}:{site}"
            home = self.stdlib_zip / "root" if mode == "bundle-stdlib-zip" else root
            return [SYS_PY, "-S", "-P"], {  # -P: nothing before the site, as under -I
                **BASE_ENV,
                "PYTHONHOME": f"{home}/usr",
                "PYTHONPATH": site,
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        env = {**BASE_ENV, "PYTHONPATH": f"{self.path}:{SITE}"}
        if mode == "src":
            return [VENV_PY, "-S", "-X", f"pycache_prefix={self.pycache}"], env
        return [VENV_PY, "-S", "-B", "-X", f"pycache_prefix={self.empty_pycache}"], env

    def entry(self, mode: str) -> list[str]:
        """The arguments that start the payload in ``mode`` (see the module docstring)."""
        if not mode.startswith("bundle"):
            return ["-m", "recover"]
        root = (self.stdlib_zip if mode == "bundle-stdlib-zip" else self.bundle) / "root"
        wrapper = (root / "usr/bin/host-recover").read_text()
        found = re.search(r'^\s*\S*python\S* (?:-\S+ )*-c (".*?") "\$@"$', wrapper, re.M)
        if found is None:
            raise SystemExit(f"{self.label}: no python -c line in {root}/usr/bin/host-recover")
        statement = shlex.split(found.group(1))[0]
        return ["-c", statement.replace(SITE_IN_IMAGE, f"{root}{SITE_IN_IMAGE}")]


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
