"""A real-TPM model between a TCTI and swtpm: per-command latency and transient return codes.

swtpm answers a quote in ~0.4 ms and never says "busy"; real TPMs take 200 ms at the
median for a quote, seconds for a CreatePrimary, and answer TPM_RC_RETRY, TPM_RC_YIELDED
or TPM_RC_TESTING when they cannot take a command now (DESIGN.md §3). The relay sits
where the TCTI expects swtpm and makes it behave like that:

    TCTI swtpm:host=127.0.0.1,port=P  ->  relay (P data, P+1 control)  ->  swtpm (Q, Q+1)

* Data channel: raw TPM command and response bytes, one command per connection as
  tss2's tcti-swtpm sends them. The relay reads the 10-byte header (tag, size, command
  code), then either answers a transient code itself, WITHOUT forwarding the command
  (a real TPM that says RETRY has not executed it, so the TPM state does not change),
  or waits the modelled latency and forwards it. One command at a time, like a TPM.
* Control channel (P+1): swtpm's control commands (the TCTI sets the locality there on
  every connect) are copied both ways untouched.

Latency: a log-normal per command with a given median and 95th percentile, times
``latency_scale`` (0 = none, tests use ~0.01, benchmarks 1). Faults: rules such as
``Unseal:RETRY@1,3`` (see ``Fault.parse``). Everything random comes from ``seed``.

    python -m testing.tpmrelay --listen 0 --to Q [--latency-scale 1] [--inject SPEC ...]

prints ``tpmrelay listening on 127.0.0.1:P (control P+1) -> 127.0.0.1:Q`` once it
accepts connections and, on SIGTERM or SIGINT, one JSON line of counts.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import selectors
import signal
import socket
import struct
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

# TPM_CC (Part 2, 6.5.2): the commands a TPM client of ours or tpm2-tools sends.
COMMANDS: dict[int, str] = {
    0x11F: "NV_UndefineSpaceSpecial", 0x120: "EvictControl", 0x121: "HierarchyControl",
    0x122: "NV_UndefineSpace", 0x126: "Clear", 0x127: "ClearControl",
    0x129: "HierarchyChangeAuth", 0x12A: "NV_DefineSpace", 0x131: "CreatePrimary",
    0x134: "NV_Increment", 0x136: "NV_Extend", 0x137: "NV_Write", 0x138: "NV_WriteLock",
    0x139: "DictionaryAttackLockReset", 0x13A: "DictionaryAttackParameters",
    0x13C: "PCR_Event", 0x13D: "PCR_Reset", 0x143: "SelfTest", 0x144: "Startup",
    0x145: "Shutdown", 0x147: "ActivateCredential", 0x148: "Certify", 0x149: "PolicyNV",
    0x14A: "CertifyCreation", 0x14C: "GetTime", 0x14E: "NV_Read", 0x151: "PolicySecret",
    0x153: "Create", 0x155: "HMAC", 0x157: "Load", 0x158: "Quote", 0x15D: "Sign",
    0x15E: "Unseal", 0x160: "PolicySigned", 0x161: "ContextLoad", 0x162: "ContextSave",
    0x165: "FlushContext", 0x167: "LoadExternal", 0x168: "MakeCredential",
    0x169: "NV_ReadPublic", 0x16A: "PolicyAuthorize", 0x16B: "PolicyAuthValue",
    0x16C: "PolicyCommandCode", 0x171: "PolicyOR", 0x173: "ReadPublic",
    0x176: "StartAuthSession", 0x177: "VerifySignature", 0x17A: "GetCapability",
    0x17B: "GetRandom", 0x17C: "GetTestResult", 0x17D: "Hash", 0x17E: "PCR_Read",
    0x17F: "PolicyPCR", 0x180: "PolicyRestart", 0x181: "ReadClock", 0x182: "PCR_Extend",
    0x189: "PolicyGetDigest", 0x18C: "PolicyPassword", 0x191: "CreateLoaded",
}  # fmt: skip
CODES = {name: cc for cc, name in COMMANDS.items()}

# Transient return codes (Part 2, 6.6.3): the TPM did not execute the command.
RETURN_CODES = {"RETRY": 0x922, "YIELDED": 0x908, "TESTING": 0x90A}
_RC_NAMES = {rc: name for name, rc in RETURN_CODES.items()}
TPM_ST_NO_SESSIONS = 0x8001
_Z95 = 1.6448536269514722  # standard normal quantile of 0.95


def command_name(cc: int) -> str:
    return COMMANDS.get(cc, f"0x{cc:x}")


def fault_response(rc: int) -> bytes:
    """The 10-byte response of a TPM that refuses a command: no sessions, no parameters."""
    return struct.pack(">HII", TPM_ST_NO_SESSIONS, 10, rc)


@dataclasses.dataclass(frozen=True)
class Latency:
    """A log-normal command time in seconds, given by its median and 95th percentile."""

    median: float
    p95: float

    def sample(self, rng: random.Random) -> float:
        if self.median <= 0:
            return 0.0
        sigma = math.log(max(self.p95, self.median) / self.median) / _Z95
        return rng.lognormvariate(math.log(self.median), sigma)

    @classmethod
    def parse(cls, text: str) -> Latency:
        """``MEDIAN/P95`` in seconds, e.g. ``0.2/0.6``."""
        median, _, p95 = text.partition("/")
        return cls(float(median), float(p95 or median))


# The model at latency_scale 1. Quote/Sign: a browser-vendor study of TPM ECDSA P-256
# signatures (200 ms median, 600 ms p95; DESIGN.md §3). CreatePrimary: seconds on
# discrete TPMs (RSA 2-7 s measured). Create/Load and the rest: assumptions, to be
# overridden (``latency=`` / ``--latency NAME=MEDIAN/P95``) when a better figure exists.
SIGNING = Latency(0.200, 0.600)
DEFAULT_LATENCY: dict[str, Latency] = {
    "Quote": SIGNING,
    "Sign": SIGNING,
    "CertifyCreation": SIGNING,
    "Certify": SIGNING,
    "CreatePrimary": Latency(2.0, 5.0),
    "Create": Latency(0.050, 0.150),
    "CreateLoaded": Latency(0.050, 0.150),
    "Load": Latency(0.020, 0.060),
}
OTHER_LATENCY = Latency(0.003, 0.010)


@dataclasses.dataclass
class Fault:
    """Answer ``rc`` instead of forwarding, for some instances of a command.

    An *instance* is one command as the client means it: its first arrival and every
    re-send of it until one is let through. A chosen instance gets ``streak``
    consecutive faults (``math.inf``: forever), then the next arrival passes.
    """

    command: str  # a name of COMMANDS, or "*" for every command
    rc: int
    which: frozenset[int] = frozenset()  # 1-based instance numbers; empty: every instance
    probability: float = 1.0  # chance that an instance is chosen
    streak: float = 1
    _seen: Counter[int] = dataclasses.field(default_factory=Counter, repr=False)
    _left: dict[int, float] = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """``COMMAND:RC[@WHICH][*N]``.

        COMMAND is a TPM command name (``Unseal``, ``NV_Increment``) or ``*``; RC is
        RETRY, YIELDED, TESTING or a number (``0x922``); WHICH is instance numbers
        (``1,3``) or a probability (``p0.1``), every instance if absent; N is how many
        consecutive arrivals of a chosen instance are refused (default 1, ``inf``).
        ``Unseal:RETRY@1,3``: the 1st and 3rd Unseal are refused once each.
        ``*:YIELDED``: every command's first attempt. ``Quote:TESTING@p0.1*3``.
        """
        command, sep, rest = spec.partition(":")
        if not sep or not command:
            raise ValueError(f"fault {spec!r}: expected COMMAND:RC[@WHICH][*N]")
        if command != "*" and command not in CODES:
            raise ValueError(f"fault {spec!r}: unknown TPM command {command!r}")
        rest, _, streak = rest.partition("*")
        rc_text, _, which_text = rest.partition("@")
        rc = RETURN_CODES.get(rc_text.upper()) or int(rc_text, 0)
        which: frozenset[int] = frozenset()
        probability = 1.0
        if which_text.startswith("p"):
            probability = float(which_text[1:])
        elif which_text:
            which = frozenset(int(n) for n in which_text.split(","))
        n = math.inf if streak in ("inf", "forever") else float(int(streak or 1))
        if n < 1 or not 0 <= probability <= 1 or any(w < 1 for w in which):
            raise ValueError(f"fault {spec!r}: bad numbers")
        return cls(command, rc, which, probability, n)

    def refuse(self, cc: int, rng: random.Random) -> bool:
        """Whether this arrival of command ``cc`` is refused (updates the rule's state)."""
        if self.command != "*" and CODES[self.command] != cc:
            return False
        left = self._left.get(cc)
        if left is not None:  # a re-send of a refused instance
            if left <= 0:
                del self._left[cc]
                return False
            self._left[cc] = left - 1
            return True
        self._seen[cc] += 1
        if self.which and self._seen[cc] not in self.which:
            return False
        if self.probability < 1 and rng.random() >= self.probability:
            return False
        self._left[cc] = self.streak - 1
        return True


@dataclasses.dataclass(frozen=True)
class RelayCounts:
    """What the relay saw, by command name. ``received`` = ``forwarded`` + ``injected``."""

    received: dict[str, int]
    forwarded: dict[str, int]
    injected: dict[str, int]
    injected_rc: dict[str, int]  # by return code name (RETRY, ...) or hex
    latency_s: float  # modelled latency added in total


class TpmRelay:
    """``with TpmRelay(swtpm.port, faults=["Unseal:RETRY@1"]) as r: Tpm.open(r.tcti)``."""

    def __init__(
        self,
        to_port: int,
        *,
        to_host: str = "127.0.0.1",
        listen_port: int = 0,
        latency_scale: float = 0.0,
        latency: Mapping[str, Latency] | None = None,
        faults: Iterable[Fault | str] = (),
        seed: int = 0,
    ) -> None:
        self.to = (to_host, to_port)
        self.port = listen_port
        self.latency_scale = latency_scale
        self.latency = {**DEFAULT_LATENCY, **(latency or {})}
        self._latency_rng = random.Random(f"{seed}:latency")
        self._fault_rng = random.Random(f"{seed}:faults")
        self._faults = [f if isinstance(f, Fault) else Fault.parse(f) for f in faults]
        self._lock = threading.Lock()  # counters and rules
        self._tpm = threading.Lock()  # one command at a time, like a TPM
        self._stop = threading.Event()
        self._server: threading.Thread | None = None
        self._handlers: list[threading.Thread] = []
        self._open: set[socket.socket] = set()
        self._listeners: list[socket.socket] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self.reset_counts()

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> TpmRelay:
        """Bind both ports (they accept connections when this returns), then serve."""
        self._listeners = _bind_pair(self.port)
        self.port = self._listeners[0].getsockname()[1]
        self._server = threading.Thread(target=self._serve, name="tpmrelay", daemon=True)
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop accepting, end every open connection, wait for the threads."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._server is not None:
            self._server.join(timeout=10)
        with self._lock:
            for s in self._open:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            handlers = list(self._handlers)
        for t in handlers:
            t.join(timeout=10)
        for s in (*self._listeners, self._wake_r, self._wake_w):
            s.close()

    def __enter__(self) -> TpmRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- model and counts -------------------------------------------------------------

    def set_faults(self, *faults: Fault | str) -> None:
        """Replace the fault rules (each starts counting instances afresh)."""
        parsed = [f if isinstance(f, Fault) else Fault.parse(f) for f in faults]
        with self._lock:
            self._faults = parsed

    def reset_counts(self) -> None:
        with self._lock:
            self._received: Counter[str] = Counter()
            self._forwarded: Counter[str] = Counter()
            self._injected: Counter[str] = Counter()
            self._injected_rc: Counter[str] = Counter()
            self._latency_s = 0.0

    def counts(self) -> RelayCounts:
        with self._lock:
            return RelayCounts(
                dict(self._received),
                dict(self._forwarded),
                dict(self._injected),
                dict(self._injected_rc),
                self._latency_s,
            )

    def _decide(self, cc: int) -> tuple[int | None, float]:
        """(return code to inject or None, latency to add before forwarding)."""
        name = command_name(cc)
        with self._lock:
            self._received[name] += 1
            for rule in self._faults:
                if rule.refuse(cc, self._fault_rng):
                    self._injected[name] += 1
                    self._injected_rc[_RC_NAMES.get(rule.rc, f"0x{rule.rc:x}")] += 1
                    return rule.rc, 0.0
            self._forwarded[name] += 1
            delay = 0.0
            if self.latency_scale > 0:
                model = self.latency.get(name, OTHER_LATENCY)
                delay = model.sample(self._latency_rng) * self.latency_scale
                self._latency_s += delay
            return None, delay

    # --- serving ----------------------------------------------------------------------

    def _serve(self) -> None:
        data, ctrl = self._listeners
        with selectors.DefaultSelector() as sel:
            sel.register(data, selectors.EVENT_READ, self._data_conn)
            sel.register(ctrl, selectors.EVENT_READ, self._ctrl_conn)
            sel.register(self._wake_r, selectors.EVENT_READ, None)
            while not self._stop.is_set():
                for key, _ in sel.select():
                    if key.data is None:
                        return
                    conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                    t = threading.Thread(target=self._run, args=(key.data, conn), daemon=True)
                    with self._lock:
                        self._open.add(conn)
                        self._handlers = [h for h in self._handlers if h.is_alive()] + [t]
                    t.start()

    def _run(self, handler: Callable[[socket.socket], None], conn: socket.socket) -> None:
        try:
            handler(conn)
        except OSError:
            pass  # the client or swtpm went away: so does this connection
        finally:
            with self._lock:
                self._open.discard(conn)
            conn.close()

    def _data_conn(self, conn: socket.socket) -> None:
        self._relay_commands(conn, self._forward)

    def _relay_commands(self, conn: socket.socket, forward: Callable[[bytes], bytes]) -> None:
        """Read commands from ``conn``; answer each with a fault or, after the modelled
        latency, with what ``forward`` got from the TPM."""
        while not self._stop.is_set():
            head = _recv_exact(conn, 10)
            if head is None:
                return
            _, size, cc = struct.unpack(">HII", head)
            body = _recv_exact(conn, size - 10) if size > 10 else b""
            if body is None:
                return
            rc, delay = self._decide(cc)
            if rc is not None:
                conn.sendall(fault_response(rc))
                continue
            with self._tpm:
                if self._stop.wait(delay):
                    return
                conn.sendall(forward(head + body))

    def _forward(self, command: bytes) -> bytes:
        """One command to swtpm on its own connection (as tcti-swtpm does), one response."""
        with socket.create_connection(self.to, timeout=60) as up:
            up.sendall(command)
            head = _recv_exact(up, 10)
            if head is None:
                raise OSError("swtpm closed the connection")
            size = struct.unpack(">I", head[2:6])[0]
            rest = _recv_exact(up, size - 10) if size > 10 else b""
            if rest is None:
                raise OSError("swtpm closed the connection mid-response")
            return head + rest

    def _ctrl_conn(self, conn: socket.socket) -> None:
        """Copy swtpm control commands and responses both ways until one side closes."""
        with socket.create_connection((self.to[0], self.to[1] + 1), timeout=60) as up:
            with self._lock:
                self._open.add(up)
            try:
                _pump(conn, up)
            finally:
                with self._lock:
                    self._open.discard(up)


CMD_SET_DATAFD = 16  # swtpm control command (tpm_ioctl.h): the data channel as an fd


class QemuTpmRelay(TpmRelay):
    """The relay between QEMU's tpm-emulator backend and swtpm (UNIX control socket).

    QEMU talks to swtpm over one control socket and passes the data channel as a file
    descriptor (CMD_SET_DATAFD, SCM_RIGHTS). This relay listens on ``listen`` (give that
    path to QEMU's ``-chardev socket,id=chrtpm,path=...``), copies every control message
    to swtpm's ``swtpm_ctrl`` socket, and swaps the data fd for one end of its own socket
    pair: every TPM command the guest sends then goes through the model (latency,
    transient return codes) exactly as in :class:`TpmRelay`.

        with QemuTpmRelay(vm.tpm.sock, work / "relay.sock", latency_scale=1) as relay:
            ... start QEMU with -chardev socket,id=chrtpm,path={relay.listen} ...
            relay.counts()
    """

    def __init__(self, swtpm_ctrl: str | os.PathLike[str], listen: str | os.PathLike[str],
                 **kw: Any) -> None:  # fmt: skip
        super().__init__(0, **kw)
        self.swtpm_ctrl = os.fspath(swtpm_ctrl)
        self.listen = os.fspath(listen)

    @property
    def tcti(self) -> str:
        raise AttributeError("a QEMU relay has no TCP TCTI: QEMU connects to .listen")

    def start(self) -> QemuTpmRelay:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.listen)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(self.listen)
        s.listen(4)
        self._listeners = [s]
        self._server = threading.Thread(target=self._serve_unix, name="qemu-tpmrelay", daemon=True)
        self._server.start()
        return self

    def _serve_unix(self) -> None:
        (listener,) = self._listeners
        with selectors.DefaultSelector() as sel:
            sel.register(listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r:
                        return
                    conn, _ = listener.accept()
                    t = threading.Thread(
                        target=self._run, args=(self._qemu_ctrl, conn), daemon=True
                    )
                    with self._lock:
                        self._open.add(conn)
                        self._handlers = [h for h in self._handlers if h.is_alive()] + [t]
                    t.start()

    def _qemu_ctrl(self, conn: socket.socket) -> None:
        up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        up.connect(self.swtpm_ctrl)
        with self._lock:
            self._open.add(up)
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(conn, selectors.EVENT_READ, up)
                sel.register(up, selectors.EVENT_READ, conn)
                while not self._stop.is_set():
                    for key, _ in sel.select():
                        src: socket.socket = key.fileobj  # type: ignore[assignment]
                        data, fds = _recv_fds(src)
                        if not data:
                            return
                        if fds and src is conn:
                            fds = [self._splice_data(fd) for fd in fds]
                        _send_fds(key.data, data, fds)
                        for fd in fds:
                            os.close(fd)
        finally:
            with self._lock:
                self._open.discard(up)
            up.close()

    def _splice_data(self, qemu_fd: int) -> int:
        """Keep QEMU's data socket; give swtpm one end of a new pair; relay between."""
        qemu = socket.socket(fileno=qemu_fd)
        mine, theirs = socket.socketpair()

        def forward(command: bytes) -> bytes:
            mine.sendall(command)
            head = _recv_exact(mine, 10)
            if head is None:
                raise OSError("swtpm closed the data channel")
            size = struct.unpack(">I", head[2:6])[0]
            rest = _recv_exact(mine, size - 10) if size > 10 else b""
            if rest is None:
                raise OSError("swtpm closed the data channel mid-response")
            return head + rest

        def run(conn: socket.socket) -> None:
            try:
                self._relay_commands(conn, forward)
            finally:
                mine.close()

        t = threading.Thread(target=self._run, args=(run, qemu), daemon=True)
        with self._lock:
            self._open.update((qemu, mine))
            self._handlers = [h for h in self._handlers if h.is_alive()] + [t]
        t.start()
        return theirs.detach()  # sent to swtpm, then closed by the caller

    def stop(self) -> None:
        super().stop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.listen)


def _recv_fds(sock: socket.socket) -> tuple[bytes, list[int]]:
    import array

    fds = array.array("i")
    data, anc, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(4 * fds.itemsize))
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


def _send_fds(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    import array

    if not fds:
        sock.sendall(data)
        return
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
    sent = sock.sendmsg([data], anc)
    if sent < len(data):
        sock.sendall(data[sent:])


def _bind_pair(port: int) -> list[socket.socket]:
    """Listening sockets on 127.0.0.1 at P and P+1 (a free pair when ``port`` is 0)."""
    for _ in range(100):
        first = _listen(port)
        p = first.getsockname()[1]
        try:
            if p >= 65535:
                raise OSError("no port above 65535")
            return [first, _listen(p + 1)]
        except OSError:
            first.close()
            if port:
                raise
    raise OSError("no free port pair on 127.0.0.1")


def _listen(port: int) -> socket.socket:
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(16)
    except OSError:
        s.close()
        raise
    return s


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    """``n`` bytes, or None on a clean end of stream before the first byte."""
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            if buf:
                raise OSError("connection closed mid-message")
            return None
        buf += chunk
    return bytes(buf)


def _pump(a: socket.socket, b: socket.socket) -> None:
    with selectors.DefaultSelector() as sel:
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        while True:
            for key, _ in sel.select():
                chunk = key.fileobj.recv(65536)  # type: ignore[union-attr]
                if not chunk:
                    return
                key.data.sendall(chunk)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m testing.tpmrelay", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--listen", type=int, default=0, help="data port P (control P+1); 0: free")
    ap.add_argument("--to", type=int, required=True, help="swtpm server port Q (control Q+1)")
    ap.add_argument("--to-host", default="127.0.0.1")
    ap.add_argument("--latency-scale", type=float, default=0.0, help="0: none, 1: real TPM")
    ap.add_argument(
        "--latency", action="append", default=[], metavar="NAME=MEDIAN/P95",
        help="override one command's latency (seconds), e.g. Quote=0.2/0.6",
    )  # fmt: skip
    ap.add_argument(
        "--inject", action="append", default=[], metavar="SPEC", help=Fault.parse.__doc__
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        latency = {n: Latency.parse(v) for n, _, v in (s.partition("=") for s in args.latency)}
        relay = TpmRelay(
            args.to, to_host=args.to_host, listen_port=args.listen,
            latency_scale=args.latency_scale, latency=latency, faults=args.inject, seed=args.seed,
        )  # fmt: skip
    except ValueError as e:
        ap.error(str(e))
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    with relay:
        print(
            f"tpmrelay listening on 127.0.0.1:{relay.port} (control {relay.port + 1}) -> "
            f"{args.to_host}:{args.to}",
            flush=True,
        )
        done.wait()
    print(json.dumps(dataclasses.asdict(relay.counts()), sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
