"""recover.bundle: the payload file set is computed, self-sufficient and reproducible.

The self-sufficiency test runs the bundled payload with an interpreter that sees ONLY
the bundle (the stdlib .pyc, the package tree, the bundled extension modules; no site, no
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

EVENTLOGS = Path(__file__).parent / "data" / "eventlog"


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
    stdlib = root / f"usr/lib/python{v.major}.{v.minor}"
    assert (stdlib / "argparse.pyc").is_file() and (stdlib / "json/__init__.pyc").is_file()
    assert not (root / f"usr/lib/python{v.major}{v.minor}.zip").exists()
    assert (root / bundle.SITE_DIR / "recover/boot/payload.pyc").is_file()
    assert not list(root.rglob("*.py")), "sources must not be shipped"
    assert report.stdlib_layout == "dir"
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


def test_stdlib_zip_is_sourceless_sorted_and_timestamp_free(tmp_path: Path) -> None:
    report = bundle.build(tmp_path / "z", stdlib="zip")
    assert report.stdlib_layout == "zip"
    v = sys.version_info
    with zipfile.ZipFile(tmp_path / f"z/root/usr/lib/python{v.major}{v.minor}.zip") as z:
        infos = z.infolist()
    names = [i.filename for i in infos]
    assert "json/__init__.pyc" in names and "argparse.pyc" in names
    assert not [n for n in names if n.endswith(".py")]
    assert {i.date_time for i in infos} == {bundle.ZIP_EPOCH}
    files = [n for n in names if not n.endswith("/")]
    assert files == sorted(files)
    assert not [n for n in names if n.split("/")[0] in ("tkinter", "unittest", "test")]


def test_only_what_the_payload_imports(staged: tuple[Path, bundle.BundleReport]) -> None:
    """Modules of the standard library and of tpm2-pytss that the payload never imports
    are not shipped; what it imports only lazily (the peer stage) is."""
    out, _ = staged
    v = sys.version_info
    stdlib = out / f"root/usr/lib/python{v.major}.{v.minor}"
    site = out / "root" / bundle.SITE_DIR
    for absent in ("sqlite3", "xml", "http/server.pyc", "pydoc.pyc", "ssl.pyc", "tarfile.pyc"):
        assert not (stdlib / absent).exists(), absent
    assert not list(stdlib.glob("encodings/cp*.pyc")), "only the codecs the payload uses"
    assert not (site / "tpm2_pytss/tsskey.pyc").exists()
    assert not (site / "tpm2_pytss/command_parser.pyc").exists()
    assert not list(stdlib.rglob("_ssl*.so"))
    for lazy in ("asyncio/base_events.pyc", "concurrent/futures/thread.pyc", "uuid.pyc"):
        assert (stdlib / lazy).is_file(), lazy
    assert (site / "recover/peers/client.pyc").is_file()
    # imported inside ec.ECDSA()'s constructor: p256.ecdsa_sha256's fallback needs it
    assert (site / "cryptography/hazmat/backends/openssl/backend.pyc").is_file()


def test_import_graph_reads_lazy_and_relative_imports() -> None:
    import ast

    tree = ast.parse(
        "from __future__ import annotations\n"
        "import a.b\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    import heavy\n"
        "from . import sib\n"
        "from ..up import name\n"
        "def f():\n"
        "    import lazy.mod\n"
    )
    names = bundle.imported_names(tree, "pkg.sub.mod", is_package=False)
    assert {"a", "a.b", "lazy", "lazy.mod", "pkg.sub", "pkg.sub.sib", "pkg.up"} <= names
    assert "pkg.up.name" in names and "heavy" not in names


def test_extension_modules_are_stripped(staged: tuple[Path, bundle.BundleReport]) -> None:
    out, _ = staged
    sos = list((out / "root").rglob("*.so"))
    assert sos
    for so in sos:
        assert not bundle._has_symbols(so), so


def test_rebuild_is_byte_identical(
    staged: tuple[Path, bundle.BundleReport], tmp_path: Path
) -> None:
    out, _ = staged
    again = tmp_path / "again"
    bundle.build(again)
    a = sorted(p.relative_to(out) for p in (out / "root").rglob("*"))
    b = sorted(p.relative_to(again) for p in (again / "root").rglob("*"))
    assert a == b
    for rel in a:
        if (out / rel).is_file():
            assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_payload_imports_from_the_bundle_alone(
    staged: tuple[Path, bundle.BundleReport],
) -> None:
    out, _ = staged
    v = sys.version_info
    root = out / "root"
    paths = [
        root / bundle.SITE_DIR,
        root / f"usr/lib/python{v.major}.{v.minor}",
        root / f"usr/lib/python{v.major}.{v.minor}/lib-dynload",
    ]
    probe = (
        "import sys; sys.path[:] = sys.argv[1:]; pre = set(sys.modules)\n"
        # the interpreter imported its own encodings package at startup: its codec
        # lookups must search the bundle's copy, as in the initramfs
        "import encodings, os\n"
        "encodings.__path__[:] = [d for p in sys.argv[1:] if os.path.isdir(d := p + '/encodings')]\n"
        "assert encodings.__path__, 'no encodings package in the bundle'\n"
        "import recover.cli.main, recover.boot.payload, recover.boot.gather\n"
        "import recover.boot.recovery, recover.store.unseal, recover.store.image\n"
        "import recover.store.credentials, recover.peers.client, recover.peers.server\n"
        "import recover.tpm\n"
        "from cryptography.hazmat.primitives.ciphers.aead import AESGCM\n"
        "import tpm2_pytss\n"
        "AESGCM(bytes(32)).encrypt(bytes(12), b'x', None)\n"
        # The event-log path (binding step): captured OVMF + GRUB / EFI-stub logs decode
        # UEFI variable names and load options as UTF-16 (CI found the codec missing
        # only in QEMU: host tests had not run this path from the bundle).
        "from recover.core import eventlog as e\n"
        f"for f in sorted(__import__('pathlib').Path({os.fspath(EVENTLOGS)!r}).glob('*.bin')):\n"
        "    if not f.stat().st_size: continue  # GRUB without TPM support: no log\n"
        "    b = e.binding_from_log(f.read_bytes()); e.replay(e.parse_event_log(f.read_bytes()))\n"
        "    cmd = f.with_suffix('.cmdline').read_text()\n"
        "    assert e.cmdline_matches(b, cmd) is True, f\n"
        "    assert e.cmdline_matches(b, cmd + ' x') is False, f\n"
        "    print('EVENTLOG', f.name)\n"
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
    logs = [f for f in EVENTLOGS.glob("*.bin") if f.stat().st_size]
    assert proc.stdout.count("EVENTLOG ") == len(logs) >= 2, proc.stdout


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


def test_every_codec_the_code_names_is_bundled() -> None:
    """The codec registry imports ``encodings.<name>`` from C: a codec the payload names
    in ``.encode()``/``.decode()``/``encoding=`` must be in bundle.CODECS (a boot in QEMU
    failed on utf-16-le, the event log's UEFI variable names)."""
    import codecs
    import re

    pattern = re.compile(r"""(?:\.(?:en|de)code\(|encoding=)["']([A-Za-z0-9_-]+)["']""")
    named = {
        codecs.lookup(m).name
        for path in Path(bundle.__file__).parent.rglob("*.py")
        for m in pattern.findall(path.read_text())
    }
    assert named, "the scan found no codec at all"
    assert named <= {codecs.lookup(c).name for c in bundle.CODECS}, named
