"""recover.bundle: the payload file set is computed, self-sufficient and reproducible.

The self-sufficiency test runs the bundled payload with an interpreter that sees ONLY
the bundle (the zip, the package tree, the bundled extension modules; no site, no
source files of the build environment) and imports everything the boot verb imports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from recover import bundle


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bundle.BundleReport]:
    out = tmp_path_factory.mktemp("b") / "bundle"
    return out, bundle.build(out)


def test_entry_comes_from_the_cli_boot_verb() -> None:
    entry = bundle.payload_entry()
    assert "recover.cli.main" in entry and "recover.boot.payload" in entry


def test_layout_and_manifest(staged: tuple[Path, bundle.BundleReport]) -> None:
    out, report = staged
    v = sys.version_info
    root = out / "root"
    assert (root / f"usr/lib/python{v.major}{v.minor}.zip").is_file()
    assert (root / bundle.SITE_DIR / "recover/boot/payload.pyc").is_file()
    assert not list((root / bundle.SITE_DIR).rglob("*.py")), "sources must not be shipped"
    wrapper = (root / bundle.WRAPPER).read_text()
    assert os.access(root / bundle.WRAPPER, os.X_OK)
    # isolated: nothing of init's environment (the kernel command line) reaches Python
    assert "env -i " in wrapper and " -I -S -B " in wrapper and "TSS2_LOG=all+none" in wrapper
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["modules"] == report.modules > 100
    libs = (out / "libraries.list").read_text().split()
    names = {Path(p).name for p in libs}
    # DT_NEEDED of the TSS extension, and the dlopen'ed TCTI that ldd cannot see
    assert {"libtss2-esys.so.0", "libtss2-tcti-device.so.0", "libc.so.6"} <= names
    assert any(n.startswith("ld-linux") for n in names)
    assert "_rust.abi3.so" in report.extensions  # cryptography


def test_stdlib_zip_is_sourceless_sorted_and_timestamp_free(
    staged: tuple[Path, bundle.BundleReport],
) -> None:
    out, _ = staged
    v = sys.version_info
    with zipfile.ZipFile(out / f"root/usr/lib/python{v.major}{v.minor}.zip") as z:
        infos = z.infolist()
    names = [i.filename for i in infos]
    assert "json/__init__.pyc" in names and "argparse.pyc" in names
    assert not [n for n in names if n.endswith(".py")]
    assert {i.date_time for i in infos} == {bundle.ZIP_EPOCH}
    files = [n for n in names if not n.endswith("/")]
    assert files == sorted(files)
    assert not [n for n in names if n.split("/")[0] in ("tkinter", "unittest", "test")]


def test_rebuild_is_byte_identical(
    staged: tuple[Path, bundle.BundleReport], tmp_path: Path
) -> None:
    out, _ = staged
    again = tmp_path / "again"
    bundle.build(again)
    v = sys.version_info
    zname = f"root/usr/lib/python{v.major}{v.minor}.zip"
    assert (out / zname).read_bytes() == (again / zname).read_bytes()
    a = sorted(p.relative_to(out) for p in (out / "root").rglob("*"))
    b = sorted(p.relative_to(again) for p in (again / "root").rglob("*"))
    assert a == b


def test_payload_imports_from_the_bundle_alone(
    staged: tuple[Path, bundle.BundleReport],
) -> None:
    out, _ = staged
    v = sys.version_info
    root = out / "root"
    paths = [
        root / bundle.SITE_DIR,
        root / f"usr/lib/python{v.major}{v.minor}.zip",
        root / f"usr/lib/python{v.major}.{v.minor}/lib-dynload",
    ]
    probe = (
        "import sys; sys.path[:] = sys.argv[1:]; pre = set(sys.modules)\n"
        "import recover.cli.main, recover.boot.payload, recover.boot.gather\n"
        "import recover.boot.recovery, recover.store.unseal, recover.store.image\n"
        "import recover.store.credentials, recover.peers.client, recover.peers.server\n"
        "import recover.tpm\n"
        "from cryptography.hazmat.primitives.ciphers.aead import AESGCM\n"
        "import tpm2_pytss\n"
        "AESGCM(bytes(32)).encrypt(bytes(12), b'x', None)\n"
        "frozen = lambda m: getattr(getattr(m, '__spec__', None), 'origin', '') == 'frozen'\n"
        "bad = [m.__file__ for n, m in list(sys.modules.items()) if n not in pre\n"
        "       and not frozen(m)\n"
        "       if getattr(m, '__file__', None) and not any(\n"
        "           m.__file__.startswith(p) for p in sys.argv[1:])]\n"
        "print('OUTSIDE', bad)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "TSS2_LOG": "all+none"}
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe, *map(os.fspath, paths)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "OUTSIDE []" in proc.stdout, proc.stdout


def test_elf_closure_finds_interpreter_and_libc() -> None:
    libs, missing = bundle.elf_closure([Path(sys.executable).resolve()])
    assert not missing
    names = {p.name for p in libs}
    assert "libc.so.6" in names and any(n.startswith("ld-linux") for n in names)


def test_refuses_to_overwrite_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("x")
    from recover.errors import UsageError

    with pytest.raises(UsageError):
        bundle.build(tmp_path)
    assert (tmp_path / "precious.txt").exists()


def test_cli_bundle_json(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "recover",
            "bundle",
            "--output",
            os.fspath(tmp_path / "b"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["stdlib_pyc"] > 50 and data["total_bytes"] > 1_000_000
