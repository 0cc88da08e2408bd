from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.swtpm import SwTpm

os.environ.setdefault("TSS2_LOG", "all+none")


@pytest.fixture
def swtpm(tmp_path: Path) -> Iterator[SwTpm]:
    """A fresh, running software TPM, killed by PID at the end of the test."""
    tpm = SwTpm(tmp_path / "tpmstate")
    tpm.start()
    try:
        yield tpm
    finally:
        tpm.kill()


@pytest.fixture(scope="module")
def swtpm_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwTpm]:
    """One software TPM shared by a module's tests."""
    tpm = SwTpm(tmp_path_factory.mktemp("tpmstate"))
    tpm.start()
    try:
        yield tpm
    finally:
        tpm.kill()
