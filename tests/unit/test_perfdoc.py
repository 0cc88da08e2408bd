"""bench/perfdoc.py replaces one section of docs/performance.md without gluing it to the
next heading, and docs/performance.md stays well-formed Markdown (a merge once dropped its
blank lines and left a stale copy of a table in another section)."""

from __future__ import annotations

import re
from pathlib import Path

from bench.perfdoc import DOC, write_section


def test_replacing_a_section_keeps_the_next_heading_apart(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\n## A\n\nold a\n\n## B\n\nb\n")
    write_section("## A", "## A\n\nnew a", doc)  # no trailing newline
    assert doc.read_text() == "# Performance\n\n## A\n\nnew a\n\n## B\n\nb\n"
    write_section("## C", "## C\n\nc\n", doc)  # appended
    assert doc.read_text().endswith("## B\n\nb\n\n## C\n\nc\n")
    write_section("## B", "## B\n\nnew b\n", doc)
    assert "## B\n\nnew b\n\n## C\n" in doc.read_text()


def test_performance_md_is_well_formed() -> None:
    lines = DOC.read_text().split("\n")
    titles = [line for line in lines if line.startswith("## ")]
    assert len(titles) == len(set(titles)), "a section appears twice"
    for i, line in enumerate(lines[1:], 1):
        if line.startswith("#"):
            assert lines[i - 1] == "", f"line {i + 1}: no blank line before {line!r}"
        if line.startswith("|") and not lines[i - 1].startswith("|"):
            assert lines[i - 1] == "", f"line {i + 1}: a table right after text"
            assert re.fullmatch(r"\|[-:| ]+\|", lines[i + 1]), f"line {i + 2}: no separator"
    header = "| component | files (before)"
    assert sum(line.startswith(header) for line in lines) == 1, "the component table twice"
