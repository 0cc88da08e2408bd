"""testing/tpmwire.py: the relay bench/coldstart.py puts in front of swtpm forwards both
ways and timestamps the connection and the first command (decoding its code)."""

from __future__ import annotations

import socket
import threading

from testing import tpmwire


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            for _ in range(100):
                data = conn.recv(4096)
                if not data:
                    return
                conn.sendall(data[::-1])

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, t


def test_relay_forwards_and_timestamps_the_first_command() -> None:
    srv, t = _echo_server()
    try:
        with tpmwire.Relay(srv.getsockname()[1]) as relay:
            assert relay.tcti == f"swtpm:host=127.0.0.1,port={relay.port}"
            relay.arm()
            # TPM2_GetCapability header: tag 0x8001, size 22, command code 0x17a
            cmd = bytes.fromhex("8001000000160000017a") + bytes(12)
            with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as c:
                c.sendall(cmd)
                got = b""
                for _ in range(100):
                    got += c.recv(4096)
                    if len(got) >= len(cmd):
                        break
            assert got == cmd[::-1]
            assert relay.connected is not None and relay.first is not None
            assert relay.first[1] == 0x17A and relay.first[0] >= relay.connected
            assert tpmwire.command_name(relay.first[1]) == "GetCapability"
            relay.arm()
            assert relay.first is None and relay.connected is None
    finally:
        srv.close()
        t.join(timeout=10)
