"""Test tiers by directory, and the fixtures every tier that needs a TPM shares.

tests/unit         pure: no TPM, no root, no servers
tests/tpm          a real software TPM (swtpm, the fixtures below)
tests/integration  several processes, loopback servers, mounts (root)
tests/e2e          boots QEMU (slow, TCG)

Each test gets its tier's marker (``-m tpm``, ``-m "not integration"``, ...); a test that
uses a swtpm fixture is also marked ``tpm``. The e2e tier runs only when asked for:
``pytest tests/e2e``, ``-m e2e`` (any ``-m`` naming e2e), ``--e2e`` or ``--require-e2e``.
``--require-e2e`` (``make test``, CI) runs every tier, fails when no e2e test was
collected, and turns a skipped e2e test into a failure; with ``CI`` set in the
environment a skipped e2e test is a failure too.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from testing.swtpm import SwTpm

os.environ.setdefault("TSS2_LOG", "all+none")

HERE = Path(__file__).resolve().parent
TIERS = ("unit", "tpm", "integration", "e2e")
SWTPM_FIXTURES = {"swtpm", "swtpm_module"}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("host-recover tiers")
    group.addoption(
        "--e2e", action="store_true", help="also run tests/e2e (QEMU boots, not run by default)"
    )
    group.addoption(
        "--require-e2e",
        action="store_true",
        help="run every tier, e2e included; an e2e test that skips (or none at all) is a "
        "failure (make test, CI)",
    )


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _tier(item: pytest.Item) -> str | None:
    try:
        rel = item.path.resolve().relative_to(HERE)
    except ValueError:
        return None
    return rel.parts[0] if len(rel.parts) > 1 and rel.parts[0] in TIERS else None


def _e2e_asked(config: pytest.Config) -> bool:
    """e2e was asked for: an option, a mark expression naming it, or a path into it."""
    if config.getoption("--e2e") or config.getoption("--require-e2e"):
        return True
    if "e2e" in (config.getoption("markexpr") or ""):
        return True  # -m decides
    e2e = HERE / "e2e"
    for arg in config.args:
        path = (config.invocation_params.dir / arg.split("::")[0]).resolve()
        if path == e2e or e2e in path.parents:
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = _tier(item)
        if tier is not None:
            item.add_marker(tier)
        if tier == "unit" and SWTPM_FIXTURES & set(item.fixturenames):
            raise pytest.UsageError(
                f"{item.nodeid}: a unit test uses a swtpm: move it to tests/tpm"
            )
        if SWTPM_FIXTURES & set(item.fixturenames):
            item.add_marker("tpm")
    if not _e2e_asked(config):
        dropped = [i for i in items if i.get_closest_marker("e2e")]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = [i for i in items if not i.get_closest_marker("e2e")]


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.getoption("--require-e2e") and not any(
        i.get_closest_marker("e2e") for i in session.items
    ):
        raise pytest.UsageError("--require-e2e: no e2e test was collected (tests/e2e)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Under --require-e2e or CI an e2e test may not skip: it did not test anything."""
    report = yield
    strict = item.config.getoption("--require-e2e") or _ci()
    skipped = report.skipped and not hasattr(report, "wasxfail")
    if strict and skipped and item.get_closest_marker("e2e"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        why = "--require-e2e" if item.config.getoption("--require-e2e") else "CI is set"
        report.outcome = "failed"
        report.longrepr = f"e2e test skipped, a failure here ({why}): {reason}"
    return report


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
