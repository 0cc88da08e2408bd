"""recover/deferred.py: tpm2-pytss imported with most of cryptography deferred, and
dataclasses without inspect.

The lists of names are checked against the installed packages and the interpreter's
dataclasses (an upgrade that changes them fails here, not at boot); the behaviour runs in
fresh interpreters, since this process has imported both packages already. No TPM."""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import inspect
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from recover import deferred

ROOT = Path(__file__).resolve().parents[2]


def _imported_from_crypto(path: Path) -> set[str]:
    """Names a tpm2_pytss module imports from tpm2_pytss.internal.crypto."""
    package = path.parent.relative_to(_package_dir().parent).parts
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        module = node.module or ""
        if node.level:
            base = package[: len(package) - node.level + 1]
            module = ".".join([*base, *([module] if module else [])])
        if module == deferred.CRYPTO:
            names |= {a.name for a in node.names}
    return names


def _package_dir() -> Path:
    import tpm2_pytss

    return Path(tpm2_pytss.__file__).parent


def test_crypto_functions_are_exactly_what_tpm2_pytss_imports() -> None:
    found: set[str] = set()
    for path in sorted(_package_dir().rglob("*.py")):
        found |= _imported_from_crypto(path)
    assert found == deferred.CRYPTO_FUNCTIONS
    real = importlib.import_module(deferred.CRYPTO)
    kinds = {name: inspect.isfunction(getattr(real, name)) for name in found}
    assert all(kinds.values()), kinds


def test_serialization_eager_names_are_the_packages_own_objects() -> None:
    real = importlib.import_module(deferred.SERIALIZATION)
    source = importlib.import_module(deferred.SERIALIZATION_SOURCE)
    for name in deferred.SERIALIZATION_EAGER:
        assert getattr(real, name) is getattr(source, name), name


def test_inspect_functions_are_exactly_what_dataclasses_uses() -> None:
    import dataclasses

    used = {
        node.attr
        for node in ast.walk(ast.parse(Path(dataclasses.__file__).read_text()))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "inspect"
    }
    assert used == deferred.INSPECT_FUNCTIONS
    assert all(inspect.isfunction(getattr(inspect, name)) for name in used)


def test_every_dataclass_of_the_package_has_a_docstring() -> None:
    """dataclasses calls inspect.signature for a class without one: on the boot path
    that would load inspect after all (and each call costs its own time)."""
    missing = []
    for path in sorted((ROOT / "recover").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef) or ast.get_docstring(node) is not None:
                continue
            if any("dataclass" in ast.unparse(d) for d in node.decorator_list):
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert missing == []


def test_dataclasses_with_inspect_deferred_behave_the_same() -> None:
    out = _fresh(
        """
        import json, sys
        from recover import deferred
        with deferred.importing(deferred.DATACLASSES):
            import dataclasses
        before = "inspect" in sys.modules

        @dataclasses.dataclass(frozen=True)
        class Documented:
            "A docstring of its own."
            a: int

        documented = "inspect" in sys.modules

        @dataclasses.dataclass
        class Bare:
            a: int
            b: str = "x"

        real = sys.modules.get("inspect")
        print(json.dumps({
            "before": before, "documented": documented, "doc": Bare.__doc__,
            "real": real is not None and hasattr(real, "Parameter"),
            "pending": deferred.pending(),
        }))
        """
    )
    assert out["before"] is False and out["documented"] is False
    assert out["doc"] == "Bare(a: int, b: str = 'x')"  # what a plain import writes
    assert out["real"] is True and out["pending"] == []


def _fresh(code: str) -> dict:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), *[p for p in sys.path if "site-packages" in p]]),
    }
    proc = subprocess.run(
        [sys.executable, "-S", "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(proc.stdout.splitlines()[-1])  # type: ignore[no-any-return]


_KEY_NAME = """
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    key = ec.derive_private_key(12345, ec.SECP256R1())
    pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    pub = tpm2_pytss.TPM2B_PUBLIC.from_pem(pem)
    name = bytes(pub.get_name()).hex()
    digest = tpm2_pytss.utils._get_digest(tpm2_pytss.TPM2_ALG.SHA256).name
"""


def test_import_defers_and_first_use_loads_the_real_modules() -> None:
    out = _fresh(
        """
        import json, sys
        from recover import deferred
        with deferred.importing():
            import tpm2_pytss
            import tpm2_pytss.utils
        assert deferred.CRYPTO not in [f.__class__.__name__ for f in sys.meta_path]
        before = sorted(m for m in sys.modules if m.startswith("cryptography"))
        pending = deferred.pending()
        default = tpm2_pytss.TPMT_SENSITIVE.to_pem.__defaults__
        """
        + textwrap.indent(textwrap.dedent(_KEY_NAME), "        ")
        + """
        crypto = sys.modules[deferred.CRYPTO]
        print(json.dumps({
            "before": before, "pending": pending, "after": deferred.pending(),
            "real": type(crypto).__name__,
            "parent": sys.modules["tpm2_pytss.internal"].crypto is crypto,
            "name": name, "digest": digest, "finders": len(sys.meta_path),
            "default": repr(default),
        }))
        """
    )
    reference = _fresh(
        """
        import json, sys
        import tpm2_pytss, tpm2_pytss.utils
        """
        + textwrap.indent(textwrap.dedent(_KEY_NAME), "        ")
        + """
        print(json.dumps({"name": name, "digest": digest, "finders": len(sys.meta_path),
                          "default": repr(tpm2_pytss.TPMT_SENSITIVE.to_pem.__defaults__)}))
        """
    )
    assert out["pending"] == [deferred.SERIALIZATION, deferred.CRYPTO]
    assert "cryptography.x509" not in out["before"]
    assert "cryptography.hazmat.primitives.serialization.ssh" not in out["before"]
    assert "cryptography.hazmat.decrepit" not in out["before"]
    # the test's own key code loaded serialization; from_pem/get_name loaded crypto
    assert out["after"] == [] and out["real"] == "module" and out["parent"] is True
    for key in ("name", "digest", "finders", "default"):
        assert out[key] == reference[key], key


def test_a_submodule_imported_later_brings_the_real_package_first() -> None:
    """The ordinary import order (package, then submodule) holds after the deferral, and
    the name tpm2_pytss.types kept reaches the same objects."""
    out = _fresh(
        """
        import json, sys
        from recover import deferred
        with deferred.importing():
            import tpm2_pytss
        before = deferred.pending()
        from cryptography.hazmat.primitives.serialization.ssh import load_ssh_public_key
        ser = sys.modules[deferred.SERIALIZATION]
        kept = sys.modules["tpm2_pytss.types"].serialization
        print(json.dumps({"before": before, "after": deferred.pending(),
                          "same": ser.load_ssh_public_key is load_ssh_public_key,
                          "kept": kept.load_ssh_public_key is load_ssh_public_key,
                          "kept_kind": type(kept).__name__, "kind": type(ser).__name__}))
        """
    )
    assert out["before"] == [deferred.SERIALIZATION, deferred.CRYPTO]
    assert out["after"] == [deferred.CRYPTO]
    assert out["same"] is True and out["kept"] is True
    assert out["kind"] != "DeferredModule" and out["kept_kind"] == "DeferredModule"


def test_a_use_before_the_import_ends_loads_the_real_module_once() -> None:
    """A forwarder or another name used while importing() still runs (as a tpm2-pytss
    that called the function at load time would) reaches the real module, not the
    stand-in again (no endless recursion), and the finder does not stand in again."""
    out = _fresh(
        """
        import json, sys
        from recover import deferred
        with deferred.importing():
            import tpm2_pytss
            stand_in = sys.modules["tpm2_pytss.types"]._get_digest_size
            size = stand_in(tpm2_pytss.TPM2_ALG.SHA256)
            ser = sys.modules[deferred.SERIALIZATION]
            loader = ser.load_pem_public_key
            import cryptography.hazmat.primitives.serialization as again
        kinds = [type(sys.modules[n]).__name__ for n in (deferred.CRYPTO, deferred.SERIALIZATION)]
        print(json.dumps({"size": size, "kinds": kinds, "pending": deferred.pending(),
                          "again": type(again).__name__,
                          "same": again.load_pem_public_key is loader}))
        """
    )
    assert out["size"] == 32 and out["pending"] == [] and out["same"] is True
    assert "DeferredModule" not in out["kinds"] and out["again"] != "DeferredModule"


def _deferred_from(
    tmp_path: Path, body: str, monkeypatch: pytest.MonkeyPatch
) -> deferred.DeferredModule:
    """A deferred stand-in for a module ``hr_deferred_probe`` with ``body``."""
    (tmp_path / "hr_deferred_probe.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "hr_deferred_probe", raising=False)
    spec = importlib.machinery.ModuleSpec("hr_deferred_probe", None)
    loader = deferred._Loader(frozenset({"f"}), frozenset(), "")
    mod = loader.create_module(spec)
    loader.exec_module(mod)
    assert isinstance(mod, deferred.DeferredModule)
    return mod


def test_a_failing_real_module_fails_each_use_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = _deferred_from(tmp_path, "raise RuntimeError('broken dependency')\n", monkeypatch)
    forward = mod.f
    for _ in range(2):
        with pytest.raises(RuntimeError, match="broken dependency"):
            forward()
        assert "hr_deferred_probe" not in sys.modules
    with pytest.raises(RuntimeError, match="broken dependency"):
        getattr(mod, "other")  # noqa: B009


def test_threads_racing_to_the_first_use_execute_the_module_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    body = (
        f"import time\nwith open({str(runs)!r}, 'a') as f:\n    f.write('run\\n')\n"
        "time.sleep(0.05)\ndef f(x):\n    return x\n"
    )
    mod = _deferred_from(tmp_path, body, monkeypatch)
    start = threading.Barrier(8)
    results: list[object] = []

    def use(i: int) -> None:
        start.wait()
        results.append(mod.f(i))

    threads = [threading.Thread(target=use, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(8)) and runs.read_text() == "run\n"
    monkeypatch.delitem(sys.modules, "hr_deferred_probe")
