"""recover.atomicfile: output is invisible until commit, and nothing is left on failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from recover import atomicfile
from recover.errors import UsageError


@pytest.fixture(params=["o_tmpfile", "hidden"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "hidden":  # as where /proc is not mounted
        monkeypatch.setattr(atomicfile.os.path, "isdir", lambda p: p != "/proc/self/fd")
    return str(request.param)


def test_commit_replaces_atomically(tmp_path: Path, mode: str) -> None:
    dst = tmp_path / "out"
    dst.write_bytes(b"old")
    with atomicfile.atomic_output(dst) as out:
        out.write_all(b"new data", 0)
        names = sorted(p.name for p in tmp_path.iterdir())
        if mode == "o_tmpfile":
            assert names == ["out"]
        else:
            assert len(names) == 2 and names[0].startswith(".out.")
        assert dst.read_bytes() == b"old"
        out.commit()
    assert dst.read_bytes() == b"new data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (dst.stat().st_mode & 0o777) == 0o600


def test_no_commit_leaves_nothing(tmp_path: Path, mode: str) -> None:
    dst = tmp_path / "out"
    with pytest.raises(RuntimeError), atomicfile.atomic_output(dst) as out:
        out.write_all(b"x" * 100_000, 0)
        raise RuntimeError("failed half-way")
    assert list(tmp_path.iterdir()) == []


def test_missing_directory_is_a_usage_error(tmp_path: Path, mode: str) -> None:
    with pytest.raises(UsageError, match="cannot create"):
        atomicfile.AtomicFile(tmp_path / "no" / "out")
