"""No TPM device and no simulator: a verb that does not boot fails at once with exit 3,
one error line and a hint. The wait for a device to appear (tpm.timeout) belongs to the
boot path only (the payload's wait_for_tpm; the agent, a service started at boot)."""

from __future__ import annotations

from pathlib import Path

import pytest

from recover.cli.main import main
from recover.errors import ExitCode, TpmUnavailable
from recover.tpm import Tpm
from recover.tpm import core as tpmcore

NOWHERE = "device:/nonexistent/tpmrm0"


class Waited(Exception):
    pass


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every sleep of the TPM layer is recorded and ends the call: the code path, not
    the clock, says whether it waited."""
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        raise Waited

    monkeypatch.setattr(tpmcore.time, "sleep", sleep)
    return slept


def test_open_fails_at_once_without_device_wait(no_sleep: list[float]) -> None:
    with pytest.raises(TpmUnavailable, match=r"^no TPM device /nonexistent/tpmrm0$"):
        Tpm.open(NOWHERE, timeout=30)
    assert no_sleep == []


def test_the_boot_path_waits_for_the_device(no_sleep: list[float]) -> None:
    with pytest.raises(Waited):
        Tpm.open(NOWHERE, timeout=30, device_wait=30)
    assert no_sleep  # the same call with device_wait polls for the device


@pytest.mark.parametrize(
    "verb",
    [["status"], ["status", "--json"], ["unseal", "--check"], ["credential", "list"]],
)
def test_verbs_fail_fast_with_one_line_and_a_hint(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_sleep: list[float],
    verb: list[str],
) -> None:
    conf = tmp_path / "host-recover.conf"
    conf.write_text(f"[tpm]\ntcti = {NOWHERE}\ntimeout = 30\n")
    monkeypatch.delenv("HOST_RECOVER_CONFIG", raising=False)
    rc = main(["--config", str(conf), *verb])
    err = capsys.readouterr().err.splitlines()
    assert rc == ExitCode.TPM_UNAVAILABLE == 3
    errors = [line for line in err if "error:" in line]
    hints = [line for line in err if "hint:" in line]
    assert len(errors) == 1 and "no TPM device /nonexistent/tpmrm0" in errors[0], err
    assert len(hints) == 1 and "tcti" in hints[0], err
    assert no_sleep == []
