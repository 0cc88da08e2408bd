"""The systemd units: valid to systemd itself, and the agent does not run as root."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / "systemd" / "host-recover-agent.service"


def _unit(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(path.read_text())
    return cp


def test_the_agent_is_not_root_and_reaches_only_the_tpm() -> None:
    svc = _unit(AGENT)["Service"]
    assert svc.get("DynamicUser") == "yes" or svc.get("User") not in (None, "root")
    assert "tss" in svc.get("SupplementaryGroups", "")
    assert svc.get("DevicePolicy") == "closed" and "/dev/tpmrm0" in svc.get("DeviceAllow", "")
    assert svc.get("NoNewPrivileges") == "yes" and svc.get("CapabilityBoundingSet") == ""


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_units_pass_systemd_analyze(tmp_path: Path) -> None:
    """Syntax and directives (the binary path is checked by the packaging, issue 11)."""
    for unit in (AGENT, REPO / "dracut-module" / "host-recover.service"):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace("/usr/bin/host-recover", "/bin/true"))
        proc = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(copy)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        bad = [
            line
            for line in proc.stderr.splitlines()
            if "Unknown key" in line or "Unknown section" in line or "Failed to parse" in line
        ]
        assert bad == [], proc.stderr
