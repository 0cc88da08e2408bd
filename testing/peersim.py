"""Simulated peers for tests and bench/peers.py: software-signed quotes, real protocol.

Each simulated peer is the product's own ``recover.agent.Server``/``Responder`` with a
``SoftwareAttestor`` (an ECDSA P-256 key in memory standing in for the TPM AK); quotes
are real TPMS_ATTEST structures (recover.tpm.attest.make_attest) checked by the product's
verifier. Misbehaving peers: forged (signs with a key the inventory does not know),
replay (answers every request with its first reply), intruder (a host not in the
inventory), badpcrs (quotes other PCR values), silent (accepts, never answers), down
(nothing listens), garbage (invalid JSON), agent (its normal OS answers honestly: lock
PCR extended, role agent), liar (root in its normal OS runs a responder that claims
role boot: lock PCR extended), liar-lockvalue (the same, reporting a zero lock PCR the
quote does not show), old (an older peer whose quote does not cover the lock PCR), v1
(a peer of the previous release: protocol v1 only).

``Fleet`` runs many peers in ONE child process (``python -m testing.peersim``) that reads a
JSON spec on stdin, prints its inventory entries as one JSON line, and serves until its
stdin closes. The parent ends it by PID.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from recover.core.evidence import Evidence, Reading, Signal, Strength  # noqa
from recover.core.inventory import Inventory, parse, pcrs_to_json  # noqa
from recover.core.protocol import Quote, canonical_json  # noqa
from recover.peers.server import Limits, Responder, Server, StatusSource  # noqa

SELECTION = "sha256:0,2,4,7,9"
GOOD_PCRS = {"sha256": {i: hashlib.sha256(b"pcr%d" % i).digest() for i in (0, 2, 4, 7, 9)}}
BAD_PCRS = {"sha256": {**GOOD_PCRS["sha256"], 9: hashlib.sha256(b"evil").digest()}}
LOCK_PCR = 15
LOCK_RESET = bytes(32)  # in the payload, before the lock
LOCK_EXTENDED = hashlib.sha256(bytes(32) + hashlib.sha256(b"locked").digest()).digest()


def new_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def pub_pem(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def private_pem(key: Any) -> bytes:
    """PKCS#8 PEM of a software key (as `host-recover policy keygen` writes them)."""
    from cryptography.hazmat.primitives import serialization

    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


class SoftwareAttestor:
    """Quotes like a TPM, signed with a software key (tests and benchmarks only)."""

    inline = True

    def __init__(
        self,
        key: Any = None,
        pcrs: Any = None,
        selection: str = SELECTION,
        since_reset_s: float = 20.0,
        reset_count: int = 7,
        restart_count: int = 0,
        clock_base_ms: int = 5_000_000,
        lock_value: bytes | None = LOCK_RESET,
        report_lock: bytes | None = None,
        clock_rate: float = 1.0,
    ) -> None:
        self.key = key or new_key()
        self.pcrs = pcrs or GOOD_PCRS
        self.selection = selection
        self.since_reset_s = since_reset_s
        self.reset_count = reset_count
        self.restart_count = restart_count
        self.clock_base_ms = clock_base_ms
        self.lock_value = lock_value  # None: replies do not cover the lock PCR (older peer)
        self.report_lock = report_lock  # a lie about the lock PCR's value, if given
        self.t0 = time.monotonic()
        # TPM clock ms per real ms: 1/K under bench.storm's dilation K (the emulated
        # hosts run K times faster, so their TPM clocks advance K times less per second)
        self.clock_rate = clock_rate
        self.signer = b"\x00\x0b" + hashlib.sha256(pub_pem(self.key).encode()).digest()
        self.quotes = 0  # quotes signed (requests' and replies'), counted by the "TPM"
        self._counting = threading.Lock()

    @property
    def pem(self) -> str:
        return pub_pem(self.key)

    def clock(self) -> dict[str, int]:
        t = int((self.since_reset_s + (time.monotonic() - self.t0) * self.clock_rate) * 1000)
        return {
            "time": t,
            "clock": self.clock_base_ms + t,
            "reset_count": self.reset_count,
            "restart_count": self.restart_count,
            "safe": 1,
        }

    def quote(self, qualifying_data: bytes, with_lock: bool = False) -> Quote:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        from recover.core.attest import make_attest
        from recover.core.pcrsel import format_selection
        from recover.core.policy import policy_selection

        selection, pcrs, reported = self.selection, self.pcrs, self.pcrs
        if with_lock and self.lock_value is not None:
            selection = format_selection(policy_selection(self.selection, LOCK_PCR))
            bank = next(iter(self.pcrs))
            pcrs = {**self.pcrs, bank: {**self.pcrs[bank], LOCK_PCR: self.lock_value}}
            lie = self.report_lock if self.report_lock is not None else self.lock_value
            reported = {**self.pcrs, bank: {**self.pcrs[bank], LOCK_PCR: lie}}
        with self._counting:
            self.quotes += 1
        c = SoftwareAttestor.clock(self)  # the quote's own clockInfo: no ReadClock
        attest = make_attest(
            qualified_signer=self.signer,
            extra_data=qualifying_data,
            selection=selection,
            pcr_values=pcrs,
            clock=c["clock"],
            reset_count=c["reset_count"],
            restart_count=c["restart_count"],
        )
        return Quote(attest, self.key.sign(attest, ec.ECDSA(hashes.SHA256())), reported)


class ModelAttestor(SoftwareAttestor):
    """A SoftwareAttestor with a real TPM's timing: one command at a time (a per-host
    lock, as the TPM itself), each taking a time drawn from testing.tpmrelay's model
    (Quote: log-normal, 200 ms median and 600 ms p95 at scale 1; ReadClock and PCR_Read:
    a few ms). What bench/storm.py runs a thousand hosts with (a thousand swtpm + relays
    do not fit this machine; tests/integration/test_tpmrelay_model.py compares it with
    the real path)."""

    inline = False

    def __init__(
        self,
        quote_latency: Any = None,
        *,
        scale: float = 1.0,
        seed: int | str = 0,
        **kw: Any,
    ) -> None:
        import random

        from testing.tpmrelay import DEFAULT_LATENCY, OTHER_LATENCY

        super().__init__(**kw)
        self.quote_latency = quote_latency or DEFAULT_LATENCY["Quote"]
        self.other_latency = OTHER_LATENCY
        self.scale = scale
        self.rng = random.Random(f"{seed}:model")
        self.tpm = threading.Lock()
        self.busy_s = 0.0  # modelled TPM time spent

    def _command(self, model: Any) -> None:
        delay = model.sample(self.rng) * self.scale if self.scale > 0 else 0.0
        self.busy_s += delay
        time.sleep(delay)

    def clock(self) -> dict[str, int]:
        with self.tpm:
            self._command(self.other_latency)  # ReadClock
            return super().clock()

    def quote(self, qualifying_data: bytes, with_lock: bool = False) -> Quote:
        with self.tpm:
            self._command(self.quote_latency)  # Quote
            self._command(self.other_latency)  # PCR_Read
            return super().quote(qualifying_data, with_lock)


class V1Server(Server):
    """A peer of the previous release: protocol v1 only (404 on /v2/status, as it was)."""

    async def _handle(self, reader: Any, writer: Any) -> tuple[int, dict[str, Any]]:
        from recover.peers.http import read_http_message
        from recover.peers.server import _error

        _, start, body = await read_http_message(reader, response=False, writer=writer)
        if start.split(" ")[1] != "/v1/status":
            return 404, _error("not-found", "only POST /v1/status", 1)
        return self.responder.handle(body, 1)


def evidence_of(summary: str) -> Evidence:
    reading = {
        "abnormal": Reading.ABNORMAL,
        "clean": Reading.CLEAN,
        "unknown": Reading.UNKNOWN,
    }[summary]
    value = None if reading is Reading.UNKNOWN else reading is Reading.CLEAN
    return Evidence((Signal("orderly_bit", value, reading, Strength.STRONG, "simulated"),))


def entry(peer_id: str, port: int, pem: str, domain: str = "rack-1", pcrs: Any = None) -> dict:
    return {
        "id": peer_id,
        "address": f"127.0.0.1:{port}",
        "failure_domain": domain,
        "ak_pub": pem,
        "pcrs": pcrs_to_json(pcrs or GOOD_PCRS),
    }


class ReplayResponder(Responder):
    """Answers every request with the first reply it produced (an old nonce)."""

    first: tuple[int, dict[str, Any]] | None = None

    async def answer(self, body: bytes, version: int) -> tuple[int, dict[str, Any]]:
        if self.first is None:
            self.first = await super().answer(body, version)
        return self.first


@dataclasses.dataclass
class SimPeer:
    id: str
    summary: str = "abnormal"
    behaviour: str = "ok"  # ok forged replay intruder badpcrs silent down garbage
    # agent liar liar-lockvalue old v1
    since_reset_s: float = 20.0
    domain: str = "rack-1"
    # False: answer quotes are not paced (Limits.pace 0), for a fixture asked round after
    # round for many test cases, which a real peer never is within 10 s
    paced: bool = True


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(3600)


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)
    body = b"{not json"
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    await writer.drain()
    writer.close()


async def serve_fleet(spec: dict[str, Any]) -> tuple[list[dict], list[Any]]:
    """Start every simulated peer in this loop; return (inventory entries, servers)."""
    import socket

    known = list(spec.get("requesters", []))
    peers = [SimPeer(**p) for p in spec["peers"]]
    attestors = {}
    entries: list[dict] = []
    servers: list[Any] = []
    plans = []
    for p in peers:
        normal_os = p.behaviour in ("agent", "liar", "liar-lockvalue")
        att = SoftwareAttestor(
            pcrs=BAD_PCRS if p.behaviour == "badpcrs" else GOOD_PCRS,
            since_reset_s=p.since_reset_s,
            lock_value=None if p.behaviour == "old" else LOCK_EXTENDED if normal_os else LOCK_RESET,
            report_lock=LOCK_RESET if p.behaviour == "liar-lockvalue" else None,
        )
        attestors[p.id] = att
        listed_pem = pub_pem(new_key()) if p.behaviour == "forged" else att.pem
        if p.behaviour == "down":
            with socket.socket() as s:  # a port nothing listens on
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            entries.append(entry(p.id, port, listed_pem, p.domain))
            continue
        plans.append((p, att, listed_pem))
    inv_entries = known + [entry(p.id, 1, pem, p.domain) for p, _, pem in plans]
    inventory = parse(inv_entries)
    for p, att, listed_pem in plans:
        host_id = f"intruder-{p.id}" if p.behaviour == "intruder" else p.id
        role = "agent" if p.behaviour == "agent" else "boot"
        status = StatusSource(host_id, p.domain, role, evidence_of(p.summary), "sim")
        if p.behaviour == "silent":
            srv: Any = await asyncio.start_server(_silent, "127.0.0.1", 0)
            port = srv.sockets[0].getsockname()[1]
        elif p.behaviour == "garbage":
            srv = await asyncio.start_server(_garbage, "127.0.0.1", 0)
            port = srv.sockets[0].getsockname()[1]
        else:
            cls = ReplayResponder if p.behaviour == "replay" else Responder
            kind = V1Server if p.behaviour == "v1" else Server
            limits = Limits(read_timeout=2.0, pace=Limits.pace if p.paced else 0.0)
            srv = await kind(cls(inventory, att, status), limits).start("127.0.0.1", 0)
            port = srv.port
        servers.append(srv)
        entries.append(entry(p.id, port, listed_pem, p.domain))
    return entries, servers


class Fleet:
    """Simulated peers served by one child process (ended by PID)."""

    def __init__(self, peers: list[SimPeer], requesters: list[dict]) -> None:
        spec = {
            "peers": [dataclasses.asdict(p) for p in peers],
            "requesters": requesters,
        }
        # The child imports this very package (and recover/ next to it): run it from the
        # directory that holds testing/.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "testing.peersim"],
            cwd=Path(__file__).resolve().parents[1],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.close()
            raise RuntimeError("peersim child did not start")
        self.entries: list[dict] = json.loads(line)

    def inventory(self, me: dict | None = None) -> Inventory:
        return parse(([me] if me else []) + self.entries)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _child() -> None:
    loop = asyncio.get_running_loop()
    spec = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    entries, servers = await serve_fleet(spec)
    sys.stdout.write(canonical_json(entries).decode() + "\n")
    sys.stdout.flush()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    del servers  # the process exits: its sockets close with it


if __name__ == "__main__":
    asyncio.run(_child())
