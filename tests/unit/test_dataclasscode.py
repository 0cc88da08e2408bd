"""recover/dataclasscode.py: the methods dataclasses writes, compiled once into a table.

Every module of the package is imported in fresh interpreters, with and without the
table; every method dataclasses generated must be the same code (bytecode, constants,
names, flags, defaults, annotations, closures). No TPM."""

from __future__ import annotations

import json
import marshal
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import recover
from recover import dataclasscode

ROOT = Path(__file__).resolve().parents[2]


def _modules() -> list[str]:
    names = [
        m.name
        for m in pkgutil.walk_packages(recover.__path__, "recover.")
        if not m.name.endswith("__main__")
    ]
    assert len(names) > 80
    return sorted(names)


#: Prints, for every dataclass of the given modules, a fingerprint of each method
#: dataclasses generated (code compiled from "<string>").
FINGERPRINT = """
import importlib, json, sys, types

def code(c):
    return {
        "code": c.co_code.hex(), "names": c.co_names, "varnames": c.co_varnames,
        "freevars": c.co_freevars, "cellvars": c.co_cellvars, "flags": c.co_flags,
        "name": c.co_qualname, "file": c.co_filename, "line": c.co_firstlineno,
        "consts": [code(k) if isinstance(k, types.CodeType) else repr(k)
                   for k in c.co_consts],
    }

def describe(v):
    return getattr(v, "__qualname__", None) or type(v).__name__

def fingerprint(modules):
    out = {}
    for name in modules:
        mod = importlib.import_module(name)
        for cls in vars(mod).values():
            if not (isinstance(cls, type) and "__dataclass_fields__" in vars(cls)
                    and cls.__module__ == name):
                continue
            for attr, fn in sorted(vars(cls).items()):
                if not isinstance(fn, types.FunctionType):
                    continue
                if fn.__code__.co_filename != "<string>":
                    continue
                out[f"{name}.{cls.__qualname__}.{attr}"] = {
                    "code": code(fn.__code__),
                    "defaults": repr(fn.__defaults__),
                    "kwdefaults": repr(fn.__kwdefaults__),
                    "annotations": {k: describe(v) for k, v in fn.__annotations__.items()},
                    "closure": [describe(c.cell_contents) for c in fn.__closure__ or ()],
                    "qualname": fn.__qualname__,
                    "globals": fn.__globals__ is vars(sys.modules["dataclasses"])
                               or sorted(fn.__globals__)[:3],
                }
    return out
"""


def _run(body: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.fspath(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The table of every module of the package, recorded in a fresh interpreter."""
    path = tmp_path_factory.mktemp("dc") / dataclasscode.FILE
    env = {**os.environ, "PYTHONPATH": os.fspath(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from recover import dataclasscode as d; "
         "sys.stdout.buffer.write(d.record(sys.argv[1:]))", *_modules()],
        env=env, capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    path.write_bytes(proc.stdout)
    return path


def test_the_table_writes_the_same_methods_as_dataclasses(table: Path) -> None:
    modules = json.dumps(_modules())
    plain = json.loads(_run(FINGERPRINT + f"print(json.dumps(fingerprint({modules})))"))
    cached = json.loads(
        _run(
            FINGERPRINT
            + f"""
from recover import dataclasscode
assert dataclasscode.install(sys.argv[1])
out = fingerprint({modules})
print(json.dumps({{"methods": out, "stats": dataclasscode.stats()}}))
""",
            os.fspath(table),
        )
    )
    assert len(plain) > 200  # __init__, __repr__, __eq__, __setattr__, ... of every class
    assert cached["methods"] == plain
    hits, misses = cached["stats"]
    assert misses == 0 and hits >= len(plain) // 2, cached["stats"]


def test_a_class_the_table_lacks_is_compiled_as_exec_would(table: Path) -> None:
    """A miss compiles the text without the caller's __future__ flags: the annotations of
    the generated __init__ stay objects (dataclasscode itself imports annotations)."""
    body = """
    import dataclasses, json, sys
    from recover import dataclasscode
    assert dataclasscode.install(sys.argv[1])

    @dataclasses.dataclass(frozen=True)
    class New:
        \"\"\"Not in the table.\"\"\"
        a: int
        b: "str" = "x"

    n = New(1)
    print(json.dumps({
        "stats": dataclasscode.stats(),
        "annotations": {k: repr(v) for k, v in New.__init__.__annotations__.items()},
        "repr": repr(n), "eq": n == New(1), "hash": hash(n) == hash(New(1)),
    }))
    """
    out = json.loads(_run(body, os.fspath(table)))
    assert out["stats"][1] > 0  # misses
    assert out["annotations"] == {"a": "<class 'int'>", "b": "'str'", "return": "None"}
    assert out["repr"] == "New(a=1, b='x')" and out["eq"] and out["hash"]


def test_a_frozen_class_from_the_table_is_still_frozen(table: Path) -> None:
    out = _run(
        """
        import dataclasses, sys
        from recover import dataclasscode
        assert dataclasscode.install(sys.argv[1])
        from recover.core import verdict
        c = verdict.Convergence(1, 0.5, 2.0, list(verdict.Stop)[0], 3, 3)
        same = c == verdict.Convergence(1, 0.5, 2.0, list(verdict.Stop)[0], 3, 3)
        try:
            c.rounds = 2
        except dataclasses.FrozenInstanceError:
            print("frozen", same, dataclasscode.stats()[0] > 0)
        """,
        os.fspath(table),
    )
    assert out.strip() == "frozen True True"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: b"",
        lambda d: d[:10],
        lambda d: b"\0\0\0\0" + d[4:],  # another interpreter's magic number
        lambda d: d[: len(dataclasscode.HEADER) + 40],  # truncated marshal data
        lambda d: dataclasscode.HEADER + marshal.dumps(["not", "a", "table"]),
        lambda d: dataclasscode.HEADER + marshal.dumps({"def f(): pass": "not code"}),
        lambda d: dataclasscode.HEADER + marshal.dumps({1: compile("", "", "exec")}),
    ],
)
def test_a_table_that_is_not_one_of_this_interpreter_is_not_used(
    table: Path, tmp_path: Path, mangle
) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad"
    bad.write_bytes(mangle(table.read_bytes()))
    assert dataclasscode.load(bad.read_bytes()) is None
    out = _run(
        """
        import dataclasses, sys
        from recover import dataclasscode
        print(dataclasscode.install(sys.argv[1]), "exec" in vars(dataclasses),
              dataclasscode.stats())
        """,
        os.fspath(bad),
    )
    assert out.split() == ["False", "False", "None"]


def test_no_table_no_change(tmp_path: Path) -> None:
    assert dataclasscode.install(os.fspath(tmp_path / "absent")) is False
    assert dataclasscode.stats() is None


def test_the_boot_entry_installs_the_table_beside_the_package(tmp_path: Path) -> None:
    """recover.cli.entry looks for the table in the directory of the recover package
    (the bundle's site directory); a source checkout has none and runs as before."""
    assert not (Path(recover.__file__).parent / dataclasscode.FILE).exists()
    out = _run(
        """
        import sys
        from recover.cli import entry
        entry._import_dataclasses()
        from recover import dataclasscode
        print(dataclasscode.stats())
        """
    )
    assert out.strip() == "None"
