"""What the logger writes: journald priorities when stderr is the journal, plain lines
otherwise (recover/log.py)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from recover import log as logmod


def _written(
    path: Path, monkeypatch: pytest.MonkeyPatch, journal: Callable[[Path], str]
) -> list[str]:
    """Set up logging with stderr = ``path`` (inside the test: pytest's capture swaps
    sys.stderr between fixture and test) and ``JOURNAL_STREAM=journal(path)``; log an
    error (two lines), a warning and an info; return what reached the file."""
    root = logging.getLogger()
    with path.open("w") as f:
        monkeypatch.setattr(sys, "stderr", f)
        monkeypatch.setenv("JOURNAL_STREAM", journal(path))
        try:
            logmod.setup()
            log = logging.getLogger("recover.test")
            log.error("error: it broke\nsecond line")
            log.warning("careful")
            log.info("fine")
        finally:
            for h in list(root.handlers):
                h.flush()
                root.removeHandler(h)
    return path.read_text().splitlines()


def test_journal_stream_gets_syslog_priorities(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def inode(p: Path) -> str:
        st = os.stat(p)
        return f"{st.st_dev}:{st.st_ino}"

    assert _written(tmp_path / "stderr", monkeypatch, inode) == [
        "<3>host-recover: error: it broke",
        "<3>second line",
        "<4>host-recover: careful",
        "<6>host-recover: fine",
    ]


@pytest.mark.parametrize("stream", ["", "1:2"])
def test_other_streams_get_plain_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stream: str
) -> None:
    # no journal, or the variable inherited by a process whose stderr was redirected
    assert _written(tmp_path / "stderr", monkeypatch, lambda _p: stream) == [
        "host-recover: error: it broke",
        "second line",
        "host-recover: careful",
        "host-recover: fine",
    ]
