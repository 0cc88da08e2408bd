"""recover.store.binding on the real captured event logs and the PCR values read at the
same boot (tests/unit/data/eventlog): which selected PCR binds what, the replay check,
the refusal and its hint, and the boot-time command line check."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from recover.core.eventlog import Component, ProblemKind
from recover.errors import PolicyMismatch, UsageError
from recover.store import binding

DATA = Path(__file__).parent / "data" / "eventlog"
DEFAULT = "sha256:0,2,4,7,9"


class CapturedTpm:
    """The PCR values read at the capture's boot (only pcr_read is needed)."""

    def __init__(self, name: str, change: int | None = None) -> None:
        self.values: dict[str, dict[int, bytes]] = {}
        for line in (DATA / f"{name}.pcrs").read_text().splitlines():
            bank, pcr, value = line.split()
            self.values.setdefault(bank, {})[int(pcr)] = bytes.fromhex(value)
        if change is not None:
            for bank in self.values.values():
                bank[change] = bytes(len(bank[change]))

    def pcr_read(self, selection: str) -> dict[str, dict[int, bytes]]:
        from recover.core.pcrsel import parse_selection

        return {b: {p: self.values[b][p] for p in pcrs} for b, pcrs in parse_selection(selection)}


def log(name: str) -> str:
    return str(DATA / f"{name}.bin")


def test_efi_stub_direct_boot_is_bound_by_the_default_set() -> None:
    a = binding.assess(log("efistub"), DEFAULT, CapturedTpm("efistub"))
    assert a.present and a.binding.boot_path == "efi-stub"
    assert a.problems == () and not a.blocking
    assert a.verified is not None and {4, 9} <= a.verified
    doc = a.to_json()
    assert doc["selected"] == {"kernel": [4], "initrd": [9], "cmdline": [9], "loader": [4]}
    assert doc["bound"] is True
    binding.require(a, allow_unbound=False, what="seal to tpm.pcrs")


def test_grub_leaves_the_command_line_to_pcr_8() -> None:
    a = binding.assess(log("grub"), DEFAULT, CapturedTpm("grub"))
    assert a.binding.boot_path == "grub"
    [p] = a.blocking
    assert (p.component, p.kind, p.add) == (Component.CMDLINE, ProblemKind.NOT_SELECTED, 8)
    with pytest.raises(UsageError) as e:
        binding.require(a, allow_unbound=False, what="seal to tpm.pcrs")
    assert e.value.exit_code == 2
    assert "command line" in e.value.message and "PCR 8 (grub)" in e.value.message
    assert "add 8" in e.value.message and "add 8 to sha256" in (e.value.hint or "")
    binding.require(a, allow_unbound=True, what="seal to tpm.pcrs")  # said explicitly
    ok = binding.assess(log("grub"), "sha256:0,2,4,7,8,9", CapturedTpm("grub"))
    assert ok.problems == () and ok.to_json()["selected"]["cmdline"] == [8]


def test_a_pcr_the_log_does_not_replay_to_vouches_for_nothing() -> None:
    a = binding.assess(log("grub"), "sha256:0,2,4,7,8,9", CapturedTpm("grub", change=8))
    assert a.verified is not None and 8 not in a.verified
    [p] = a.blocking
    assert (p.component, p.kind) == (Component.CMDLINE, ProblemKind.LOG_MISMATCH)


@pytest.mark.parametrize("name", ["missing", "grub-legacy"])
def test_no_event_log_is_refused_unless_allowed(name: str) -> None:
    a = binding.assess(log(name), DEFAULT, CapturedTpm("efistub"))
    assert not a.present and a.binding.boot_path == "not-measured"
    assert {p.component for p in a.blocking} == {
        Component.KERNEL,
        Component.INITRD,
        Component.CMDLINE,
    }
    with pytest.raises(UsageError) as e:
        binding.require(a, allow_unbound=False, what="seal to tpm.pcrs")
    assert ("no event log" if name == "missing" else "is empty") in e.value.message
    assert "--allow-unbound" in (e.value.hint or "")
    binding.require(a, allow_unbound=True, what="seal to tpm.pcrs")


def test_a_malformed_log_is_no_log(tmp_path: Path) -> None:
    bad = tmp_path / "log"
    bad.write_bytes((DATA / "grub.bin").read_bytes()[:100])
    a = binding.assess(str(bad), DEFAULT)
    assert not a.present and "malformed" in a.binding.notes[0]


def test_the_log_is_read_as_an_untrusted_file(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="event log: .* not a regular file"):
        binding.assess(str(fifo), DEFAULT)  # O_NONBLOCK: no hang


def test_boot_checks_proc_cmdline_against_the_measured_one(tmp_path: Path) -> None:
    proc = (DATA / "grub.cmdline").read_text()
    assert "matches PCR 8" in (binding.check_cmdline(log("grub"), proc) or "")
    with pytest.raises(PolicyMismatch, match="not the one measured into PCR 8"):
        binding.check_cmdline(log("grub"), proc.strip() + " rd.break=pre-mount\n")
    efi = (DATA / "efistub.cmdline").read_text()
    assert "matches PCR 9" in (binding.check_cmdline(log("efistub"), efi) or "")
    with pytest.raises(PolicyMismatch) as e:
        binding.check_cmdline(log("efistub"), efi.strip() + " rd.host_recover=0")
    assert e.value.exit_code == 4
    # no log, or a log without a command line: nothing to compare (the PCRs still bind)
    assert "no event log" in (binding.check_cmdline(str(tmp_path / "none"), proc) or "")
    assert "empty" in (binding.check_cmdline(log("grub-legacy"), proc) or "")
    copy = tmp_path / "copy.bin"
    shutil.copy(DATA / "grub.bin", copy)
    assert binding.check_cmdline(str(copy), proc) is not None
