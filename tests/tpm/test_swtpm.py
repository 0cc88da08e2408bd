"""testing/swtpm.py: what tests observe of a swtpm besides its TPM."""

from __future__ import annotations

import os
import signal
import socket

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
