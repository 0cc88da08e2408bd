"""testing/swtpm.py: what tests observe of a swtpm besides its TPM."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from testing import swtpm as swtpm_mod
from testing.swtpm import SwTpm
from testing.waiting import until


def test_unread_bytes_sees_a_command_waiting_at_a_stopped_swtpm(swtpm: SwTpm) -> None:
    assert swtpm.proc is not None and swtpm.unread_bytes() == 0
    os.kill(swtpm.proc.pid, signal.SIGSTOP)
    try:
        with socket.create_connection(("127.0.0.1", swtpm.port), timeout=10) as conn:
            conn.sendall(bytes.fromhex("80010000000c0000017b0008"))  # TPM2_GetRandom(8)
            assert until(swtpm.unread_bytes, "the command waits at the swtpm") == 12
    finally:
        os.kill(swtpm.proc.pid, signal.SIGCONT)
    until(lambda: swtpm.unread_bytes() == 0, "the swtpm read it once resumed")


def test_start_picks_another_pair_when_a_port_was_taken_meanwhile(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Stop 20's CI class of failure, in the machine's own namespace: a port of the
    picked pair is taken (here: held by the test) before swtpm binds it."""
    taken = socket.create_server(("127.0.0.1", 0))
    busy = taken.getsockname()[1] - 1  # the pair (busy, busy + 1): its control port is held
    picks = iter([busy])
    real = swtpm_mod.free_port_pair
    monkeypatch.setattr(swtpm_mod, "free_port_pair", lambda: next(picks, None) or real())
    tpm = SwTpm(tmp_path / "state")
    try:
        tpm.start()
        assert tpm.port != busy and tpm.proc is not None and tpm.proc.poll() is None
    finally:
        tpm.close()
        taken.close()


def test_start_gives_up_after_a_bounded_number_of_taken_pairs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    taken = socket.create_server(("127.0.0.1", 0))
    busy = taken.getsockname()[1] - 1  # its control port is held
    calls: list[int] = []

    def always_busy() -> int:
        calls.append(busy)
        return busy

    monkeypatch.setattr(swtpm_mod, "free_port_pair", always_busy)
    tpm = SwTpm(tmp_path / "state")
    try:
        with pytest.raises(swtpm_mod.PortTaken, match="Address already in use"):
            tpm.start()
        assert len(calls) == swtpm_mod.BIND_ATTEMPTS and tpm.proc is None
    finally:
        tpm.close()
        taken.close()
