"""Regenerate docs/cli.md and docs/configuration.md: ``python -m recover.cli_docs``."""

from __future__ import annotations

import os
from pathlib import Path

from recover.cli import render_cli_docs
from recover.config import render_docs


def main() -> None:
    os.environ["COLUMNS"] = "100"
    docs = Path(__file__).resolve().parents[1] / "docs"
    (docs / "cli.md").write_text(render_cli_docs(), encoding="utf-8")
    (docs / "configuration.md").write_text(render_docs(), encoding="utf-8")


if __name__ == "__main__":
    main()
