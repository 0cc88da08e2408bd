"""Replace (or append) one ``## Section`` of docs/performance.md; benches share this.

Each section says how to reproduce it with ``reproduce``: a command that works on a fresh
clone after ``make venv``, run from the repository root.
"""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"


def write_section(title: str, section: str, doc: Path = DOC) -> None:
    """Put ``section`` (starting with the ``title`` line) in place of the old one."""
    text = doc.read_text() if doc.exists() else "# Performance\n"
    section = section.rstrip("\n") + "\n\n"  # a blank line before the next heading
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    doc.write_text(text.rstrip("\n") + "\n")


def reproduce(bench: str, args: str = "") -> str:
    """The command that reruns ``bench/<bench>.py`` on a fresh clone (after ``make venv``)."""
    return f".venv/bin/python -m bench.{bench}" + (f" {args}" if args else "")
