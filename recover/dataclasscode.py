"""The code of the methods ``dataclasses`` writes, compiled when the bundle is built, as
the bundle's ``.pyc`` files are (issue 12: the time from exec to the first TPM command,
and the recovery route's CPU).

For every ``@dataclass``, Python 3.11 writes the source text of each method it adds
(``__init__``, ``__repr__``, ``__eq__``, ``__hash__``, ``__setattr__`` and
``__delattr__`` of a frozen class, ...) and passes it to ``exec``: one compilation per
method, every time a module that defines a dataclass is imported. The compilation is
about 85% of a frozen dataclass's creation (0.3-0.4 ms each on a workstation; the clean
boot creates 16 of them before its first TPM command, a recovery with peers about 40:
docs/performance.md). The source text depends only on the class's definition, so it is
the same at every boot of one bundle.

:func:`record` (run by ``host-recover bundle``, recover/bundle.py) imports the payload's
modules with ``dataclasses``' ``exec`` wrapped: every source text it is given, with the
code object compiled from it, goes into a table, written with ``marshal`` into the
bundle's site directory next to the ``recover`` package (:data:`FILE`). At boot, the
entry (recover.cli.entry) calls :func:`install`: ``dataclasses``' module-level name
``exec`` (which the module looks up in its globals before the builtins) becomes a
function that executes the table's code object for a source text the table has, and
compiles any other text exactly as ``exec`` would (a miss: a class the bundle did not
import). Nothing else changes: the same text compiled by the same interpreter with the
same flags (none: ``dont_inherit``, as dataclasses.py has no ``__future__`` import) is
the same code; tests/unit/test_dataclasscode.py compares every generated method of the
package with and without the table.

The table is trusted as the ``.pyc`` files beside it are: both are in the initramfs,
which the boot measures. A table of another interpreter (its magic number differs),
truncated or not a table is not installed; ``dataclasses`` then compiles as before.
"""

from __future__ import annotations

import builtins
import marshal
import sys

# The interpreter's own frozen module, always loaded (``importlib`` is not, at boot).
from _frozen_importlib_external import MAGIC_NUMBER  # type: ignore[import-not-found]
from typing import Any

#: The table's file name, in the directory of the ``recover`` package.
FILE = "dataclass-code.marshal"
#: The file starts with this: the interpreter's bytecode magic number (a table of
#: another interpreter is not used) and the table's format.
HEADER = MAGIC_NUMBER + b"host-recover dataclass code 1\n"


def _compile(source: str) -> Any:
    """What ``exec(source, ...)`` called from dataclasses.py compiles."""
    return compile(source, "<string>", "exec", dont_inherit=True)


class _Exec:
    """``exec`` for dataclasses.py: a source text of the table runs its code object; any
    other is compiled (and, when ``recording``, added to the table)."""

    def __init__(self, table: dict[str, Any], recording: bool = False) -> None:
        self.table = table
        self.recording = recording
        self.hits = 0
        self.misses = 0

    def __call__(self, source: Any, globals: Any = None, locals: Any = None, /) -> None:
        code = self.table.get(source) if isinstance(source, str) else None
        if code is None:
            self.misses += 1
            code = _compile(source) if isinstance(source, str) else source
            if self.recording and isinstance(source, str):
                self.table[source] = code
        else:
            self.hits += 1
        builtins.exec(code, globals, locals)


def load(data: bytes) -> dict[str, Any] | None:
    """The table in ``data``, or None when it is not one of this interpreter."""
    if not data.startswith(HEADER):
        return None
    try:
        table = marshal.loads(data[len(HEADER) :])
    except (EOFError, ValueError, TypeError):
        return None
    if not isinstance(table, dict):
        return None
    code_type = type(_compile.__code__)
    if not all(isinstance(k, str) and isinstance(v, code_type) for k, v in table.items()):
        return None
    return table


def install(path: str) -> bool:
    """Use the table at ``path`` for the dataclasses created from now on; False (and
    nothing changed) when there is none or it is not usable."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False
    table = load(data)
    if table is None:
        return False
    import dataclasses

    dataclasses.exec = _Exec(table)  # type: ignore[attr-defined]
    return True


def stats() -> tuple[int, int] | None:
    """(hits, misses) since :func:`install`; None when no table is installed."""
    hook = getattr(sys.modules.get("dataclasses"), "exec", None)
    return (hook.hits, hook.misses) if isinstance(hook, _Exec) else None


def record(modules: list[str]) -> bytes:
    """Import ``modules`` (in a fresh interpreter: a module imported before is not
    imported again) and return the table of every method dataclasses wrote meanwhile."""
    import dataclasses
    import importlib

    hook = _Exec({}, recording=True)
    dataclasses.exec = hook  # type: ignore[attr-defined]
    try:
        for name in modules:
            importlib.import_module(name)
    finally:
        del dataclasses.exec  # type: ignore[attr-defined]
    return HEADER + marshal.dumps(hook.table)
