"""``python -X importtime`` reports as rows, each with the module that imported it.

``parse`` reads the stderr of a run; ``top_level`` ranks what the program itself
imported; ``group_self_times`` adds up self times by origin (our package, tpm2_pytss,
cryptography, and the stdlib modules each of them pulls in). bench/coldstart.py uses
them for the import breakdown of the payload.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Imported:
    name: str
    depth: int
    self_us: int
    cum_us: int
    parent: str | None  # None: imported at top level (or by importlib.import_module)


def parse(stderr: str) -> list[Imported]:
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
