"""testing.tpmrelay.QemuTpmRelay against a real swtpm in QEMU's mode (control channel on a
UNIX socket, the data channel passed as a file descriptor): the test plays QEMU's part
of the protocol (CMD_SET_DATAFD, CMD_INIT, then TPM commands on the data fd), so the
e2e tier can put the relay between QEMU and swtpm (issue 10, item 6)."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from testing.qemu.vm import VmTpm
from testing.tpmrelay import CMD_SET_DATAFD, RETURN_CODES, QemuTpmRelay

CMD_INIT = 2
STARTUP_CLEAR = struct.pack(">HIIH", 0x8001, 12, 0x144, 0)
GET_RANDOM_8 = struct.pack(">HIIH", 0x8001, 12, 0x17B, 8)


def tpm(data: socket.socket, command: bytes) -> tuple[int, bytes]:
    data.sendall(command)
    head = data.recv(10, socket.MSG_WAITALL)
    _, size, rc = struct.unpack(">HII", head)
    rest = data.recv(size - 10, socket.MSG_WAITALL) if size > 10 else b""
    return rc, rest


def test_qemu_relay_passes_the_data_channel_through_the_model(tmp_path: Path) -> None:
    sw = VmTpm(tmp_path / "state")
    sw.state_dir.mkdir(parents=True)
    sw.start()
    try:
        with QemuTpmRelay(sw.sock, tmp_path / "relay.sock", faults=["GetRandom:RETRY@1"]) as r:
            ctrl = socket.socket(socket.AF_UNIX)
            ctrl.connect(r.listen)
            data, theirs = socket.socketpair()
            with ctrl, data:
                # QEMU hands the data channel over as a file descriptor...
                ctrl.sendmsg(
                    [struct.pack(">I", CMD_SET_DATAFD)],
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", theirs.fileno()))],
                )
                theirs.close()
                assert ctrl.recv(4, socket.MSG_WAITALL) == bytes(4)
                # ...and initialises the TPM over the control channel
                ctrl.sendall(struct.pack(">II", CMD_INIT, 0))
                assert ctrl.recv(4, socket.MSG_WAITALL) == bytes(4)
                assert tpm(data, STARTUP_CLEAR)[0] == 0
                rc, _ = tpm(data, GET_RANDOM_8)  # refused by the relay: never reaches swtpm
                assert rc == RETURN_CODES["RETRY"]
                rc, body = tpm(data, GET_RANDOM_8)  # the re-send passes
                assert rc == 0 and len(body) == 2 + 8
            c = r.counts()
            assert c.received == {"Startup": 1, "GetRandom": 2}
            assert c.forwarded == {"Startup": 1, "GetRandom": 1}
            assert c.injected_rc == {"RETRY": 1}
    finally:
        if sw.proc is not None and sw.proc.poll() is None:
            sw.proc.kill()  # by its PID: the swtpm this test started
            sw.proc.wait(10)
