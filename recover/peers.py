"""Peer protocol v1 (docs/peer-protocol.md): records, message checks and the client.

One query round: a fresh 32-byte nonce, one quote of ours over
sha256("host-recover/v1/request" ‖ nonce ‖ our id), then POST /v1/status to every peer
of the failure domain concurrently under one deadline. A reply is believed only if its
signer is the inventory's AK for that peer, it answers our nonce, its quote verifies
(recover.tpm.attest.verify_quote) over sha256(canonical_json(status) ‖ nonce), and the
quoted PCR digest equals the inventory's expected PCRs. Anything else is counted with a
reason and never believed.

The module top is pure (no asyncio, no sockets) so that recover.verdict can import the
records; the client imports asyncio inside its functions.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from recover.errors import HostRecoverError, IntegrityError
from recover.evidence import Reading
from recover.inventory import Peer, parse_pcrs, pcrs_to_json

if TYPE_CHECKING:
    import asyncio

    from recover.inventory import Inventory

log = logging.getLogger("recover.peers")

VERSION = 1
PATH = "/v1/status"
MAX_BODY = 64 * 1024
NONCE_SIZE = 32
REQUEST_CONTEXT = b"host-recover/v1/request"
CLOCK_SLACK_MS = 60_000  # the status's clock is read just before the quote is signed
DEADLINE_GRACE = 0.05  # seconds after the deadline for peers to report their own outcome
MAX_INFLIGHT = 64
SLOT_HOLD = 0.25  # seconds a request holds an in-flight slot
MAX_ATTEMPTS = 200  # per peer and query; refused connections retry until the deadline

PcrValues = Mapping[str, Mapping[int, bytes]]


class Outcome(enum.StrEnum):
    VERIFIED = "verified"
    FORGED = "forged"  # signature does not verify with the inventory's AK
    REPLAYED = "replayed"  # a valid signature, but not over our nonce
    UNKNOWN_HOST = "unknown-host"  # the answer is from a host not in the inventory
    UNEXPECTED_PCRS = "unexpected-pcrs"  # quoted PCRs differ from the inventory's
    INCONSISTENT = "inconsistent"  # the status contradicts the signed clock
    MALFORMED = "malformed"
    REFUSED = "refused"  # the peer said no (HTTP 4xx with a JSON error)
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"  # not needed: the verdict was already settled


class Rejected(Exception):
    def __init__(
        self, outcome: Outcome, reason: str, http_status: int = 400, free_retry: bool = False
    ) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason
        self.http_status = http_status  # what a server answers for this problem
        self.free_retry = free_retry  # retry until the deadline without counting it


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def request_qualifying_data(nonce: bytes, requester_id: str) -> bytes:
    return hashlib.sha256(REQUEST_CONTEXT + nonce + requester_id.encode()).digest()


def reply_qualifying_data(status: Mapping[str, Any], nonce: bytes) -> bytes:
    return hashlib.sha256(canonical_json(status) + nonce).digest()


# --- records ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Quote:
    attest: bytes
    signature: bytes
    pcrs: PcrValues  # the values the quoter read (informative; the digest is what counts)

    def to_json(self) -> dict[str, Any]:
        return {"attest": self.attest.hex(), "signature": self.signature.hex()}

    @classmethod
    def from_json(cls, obj: Any, pcrs: Any) -> Quote:
        if not isinstance(obj, dict):
            raise Rejected(Outcome.MALFORMED, "quote must be an object")
        try:
            attest = bytes.fromhex(obj["attest"])
            sig = bytes.fromhex(obj["signature"])
        except (KeyError, TypeError, ValueError):
            raise Rejected(Outcome.MALFORMED, "quote needs hex attest and signature") from None
        try:
            values = parse_pcrs(pcrs, "pcrs") if pcrs is not None else {}
        except HostRecoverError as e:
            raise Rejected(Outcome.MALFORMED, e.message) from None
        return cls(attest, sig, values)


@dataclasses.dataclass(frozen=True)
class PeerStatus:
    host_id: str
    boot_id: str
    failure_domain: str
    role: str  # "boot" (initramfs payload) or "agent" (normal OS)
    summary: Reading  # evidence summary of the peer's previous shutdown
    orderly: bool | None  # the peer's TPM orderly bit
    since_reset_s: float  # seconds since the peer's TPM reset when it answered
    since_reset_source: str  # "tpm" (TPM time) or "host" (the host's boot time)
    clock: Mapping[str, int]  # clock, reset_count, restart_count at answer time

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["summary"] = str(self.summary)
        d["clock"] = dict(self.clock)
        return d

    @classmethod
    def from_json(cls, d: Any) -> PeerStatus:
        def need(key: str, typ: type | tuple[type, ...]) -> Any:
            v = d.get(key)
            if isinstance(v, bool) or not isinstance(v, typ):
                raise Rejected(Outcome.MALFORMED, f"status.{key}: missing or wrong type")
            return v

        if not isinstance(d, dict):
            raise Rejected(Outcome.MALFORMED, "status must be an object")
        clock = need("clock", dict)
        for k in ("clock", "reset_count", "restart_count"):
            if not isinstance(clock.get(k), int) or isinstance(clock.get(k), bool):
                raise Rejected(Outcome.MALFORMED, f"status.clock.{k}: missing or not an integer")
        orderly = d.get("orderly")
        if orderly is not None and not isinstance(orderly, bool):
            raise Rejected(Outcome.MALFORMED, "status.orderly: must be true, false or null")
        try:
            summary = Reading(need("summary", str))
        except ValueError:
            raise Rejected(
                Outcome.MALFORMED, "status.summary: not clean|abnormal|unknown"
            ) from None
        since = float(need("since_reset_s", (int, float)))
        if not 0 <= since < 1e10:
            raise Rejected(Outcome.MALFORMED, "status.since_reset_s: out of range")
        return cls(
            host_id=need("host_id", str),
            boot_id=need("boot_id", str),
            failure_domain=need("failure_domain", str),
            role=need("role", str),
            summary=summary,
            orderly=orderly,
            since_reset_s=since,
            since_reset_source=need("since_reset_source", str),
            clock={k: int(clock[k]) for k in ("clock", "reset_count", "restart_count")},
        )


@dataclasses.dataclass(frozen=True)
class PeerResult:
    peer_id: str
    outcome: Outcome
    reason: str = ""
    status: PeerStatus | None = None
    rtt_ms: float | None = None
    attempts: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "peer": self.peer_id,
            "outcome": str(self.outcome),
            "reason": self.reason,
            "status": self.status.to_json() if self.status else None,
            "rtt_ms": self.rtt_ms,
            "attempts": self.attempts,
        }


@dataclasses.dataclass(frozen=True)
class PeerResults:
    results: tuple[PeerResult, ...]
    domain_size: int
    elapsed_ms: float = 0.0
    stopped_early: bool = False

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.results if r.outcome is outcome)

    @property
    def verified(self) -> int:
        return self.count(Outcome.VERIFIED)

    def to_json(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for r in self.results:
            counts[str(r.outcome)] = counts.get(str(r.outcome), 0) + 1
        return {
            "domain_size": self.domain_size,
            "elapsed_ms": round(self.elapsed_ms, 1),
            "stopped_early": self.stopped_early,
            "counts": counts,
            "results": [r.to_json() for r in self.results],
        }


# --- attestors: "produce my quote" ------------------------------------------------------


class Attestor(Protocol):
    inline: bool  # True: cheap and thread-safe, may run on the event loop

    def clock(self) -> dict[str, int]: ...

    def quote(self, qualifying_data: bytes) -> Quote: ...


class TpmAttestor:
    """Quotes with the TPM's AK; one TPM command at a time (``lock``)."""

    inline = False

    def __init__(self, tpm: Any, ak_handle: int, selection: str, lock: Any = None) -> None:
        import threading

        self.tpm = tpm
        self.ak_handle = ak_handle
        self.selection = selection
        self.lock = lock or threading.Lock()

    def clock(self) -> dict[str, int]:
        from recover.evidence import clock_fields

        with self.lock:
            return clock_fields(self.tpm.clock())

    def quote(self, qualifying_data: bytes) -> Quote:
        with self.lock:
            attest, sig = self.tpm.quote(self.ak_handle, qualifying_data, self.selection)
            pcrs = self.tpm.pcr_read(self.selection)
        return Quote(bytes(attest), bytes(sig), pcrs)


# --- verification ---------------------------------------------------------------------


def check_quote(ak_pub: bytes, quote: Quote, qualifying_data: bytes, expected: PcrValues) -> Any:
    """Verify ``quote`` and its PCRs against the inventory; return the QuoteInfo.

    Raises Rejected with FORGED (bad signature), REPLAYED (valid signature, other
    qualifying data) or UNEXPECTED_PCRS.
    """
    from recover.pcrsel import parse_selection
    from recover.tpm.attest import parse_attest, pcr_digest, verify_quote

    try:
        info = verify_quote(ak_pub, quote.attest, quote.signature, qualifying_data=qualifying_data)
    except IntegrityError as e:
        try:  # diagnose: is the signature itself good (then the nonce/status is wrong)?
            other = parse_attest(quote.attest).extra_data
            verify_quote(ak_pub, quote.attest, quote.signature, qualifying_data=other)
        except IntegrityError:
            raise Rejected(Outcome.FORGED, e.message) from None
        raise Rejected(Outcome.REPLAYED, "quote is not over this nonce and status") from None
    want = {alg: tuple(sorted(v)) for alg, v in expected.items()}
    got = dict(parse_selection(info.pcr_selection)) if info.pcr_selection else {}
    if got != want:
        raise Rejected(
            Outcome.UNEXPECTED_PCRS,
            f"quote covers {info.pcr_selection or 'no PCRs'}, inventory expects "
            + "+".join(f"{a}:{','.join(map(str, p))}" for a, p in want.items()),
        )
    if pcr_digest(info.pcr_selection, expected) != info.pcr_digest:
        differ = [
            f"{alg}:{i}"
            for alg, vals in expected.items()
            for i, v in sorted(vals.items())
            if quote.pcrs.get(alg, {}).get(i, v) != v
        ]
        detail = f" (reported values differ in {', '.join(differ)})" if differ else ""
        raise Rejected(
            Outcome.UNEXPECTED_PCRS, "quoted PCR digest differs from the inventory" + detail
        )
    return info


def verify_reply(peer: Peer, nonce: bytes, reply: Any, known_ids: set[str]) -> PeerStatus:
    """Check one peer's reply to our ``nonce``; return its status or raise Rejected."""
    if not isinstance(reply, dict) or reply.get("version") != VERSION:
        raise Rejected(Outcome.MALFORMED, f"not a v{VERSION} reply")
    if reply.get("nonce") != nonce.hex():
        raise Rejected(Outcome.REPLAYED, "reply answers another nonce")
    raw_status = reply.get("status")
    status = PeerStatus.from_json(raw_status)
    if status.host_id != peer.id:
        if status.host_id not in known_ids:
            raise Rejected(
                Outcome.UNKNOWN_HOST, f"answered as {status.host_id!r}, not in inventory"
            )
        raise Rejected(Outcome.UNKNOWN_HOST, f"answered as {status.host_id!r}, asked {peer.id!r}")
    quote = Quote.from_json(reply.get("quote"), reply.get("pcrs"))
    assert isinstance(raw_status, dict)
    info = check_quote(peer.ak_pub, quote, reply_qualifying_data(raw_status, nonce), peer.pcrs)
    c = status.clock
    if (info.reset_count, info.restart_count) != (c["reset_count"], c["restart_count"]):
        raise Rejected(Outcome.INCONSISTENT, "status reset/restart counts differ from the quote's")
    if not 0 <= info.clock - c["clock"] <= CLOCK_SLACK_MS:
        raise Rejected(Outcome.INCONSISTENT, "status clock does not agree with the signed clock")
    if status.since_reset_source == "tpm" and status.since_reset_s * 1000 > info.clock + 1000:
        raise Rejected(Outcome.INCONSISTENT, "time since reset exceeds the signed TPM clock")
    return status


def make_request(self_id: str, nonce: bytes, quote: Quote) -> bytes:
    return canonical_json(
        {
            "version": VERSION,
            "nonce": nonce.hex(),
            "requester": self_id,
            "quote": quote.to_json(),
            "pcrs": pcrs_to_json(quote.pcrs),
        }
    )


# --- the client -------------------------------------------------------------------------

StopEarly = Callable[[Sequence[PeerResult], int], bool]


async def http_post(
    host: str, port: int, body: bytes, timeout: float, path: str = PATH
) -> tuple[int, bytes]:
    """POST ``body`` (HTTP/1.1, Connection: close); return (status, response body)."""
    import asyncio

    async def run() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(host, port, limit=MAX_BODY)
        try:
            hosthdr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: {hosthdr}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            code, _, data = await read_http_message(reader, response=True)
            return code, data
        finally:
            writer.close()

    return await asyncio.wait_for(run(), timeout)


async def read_http_message(
    reader: asyncio.StreamReader,
    *,
    response: bool,
    writer: asyncio.StreamWriter | None = None,
) -> tuple[int, str, bytes]:
    """Read one HTTP/1.1 message; return (status code or 0 for a request, start line, body).

    A server passes its ``writer`` to answer ``Expect: 100-continue`` (curl sends it).
    Raises Rejected(MALFORMED) on bad framing and a body over MAX_BODY.
    """
    import asyncio

    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise Rejected(Outcome.MALFORMED, "headers too large", 431) from None
    except asyncio.IncompleteReadError:
        raise Rejected(Outcome.MALFORMED, "connection closed before the headers ended") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    code = 0
    if response:
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise Rejected(Outcome.MALFORMED, "not an HTTP/1.x response")
        code = int(parts[1])
    elif len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise Rejected(Outcome.MALFORMED, "not an HTTP/1.x request")
    length = None
    expect = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        if name == "content-length":
            if not value.isdigit() or length not in (None, int(value)):
                raise Rejected(Outcome.MALFORMED, "bad Content-Length")
            length = int(value)
        elif name == "transfer-encoding":
            raise Rejected(Outcome.MALFORMED, "Transfer-Encoding is not supported")
        elif name == "expect" and value.lower() == "100-continue":
            expect = True
    if length is None:
        raise Rejected(Outcome.MALFORMED, "Content-Length required")
    if length > MAX_BODY:
        raise Rejected(Outcome.MALFORMED, f"body of {length} bytes exceeds {MAX_BODY}", 413)
    if expect and writer is not None:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
    try:
        return code, lines[0], await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise Rejected(Outcome.MALFORMED, "body shorter than Content-Length") from None


async def _ask(
    peer: Peer, body: bytes, nonce: bytes, known: set[str], timeout: float
) -> PeerStatus:

    try:
        code, data = await http_post(peer.host, peer.port, body, timeout)
    except TimeoutError:
        raise Rejected(Outcome.TIMEOUT, f"no answer within {timeout:g} s") from None
    except ConnectionRefusedError:
        raise Rejected(Outcome.UNREACHABLE, "connection refused", free_retry=True) from None
    except OSError as e:
        raise Rejected(Outcome.UNREACHABLE, e.strerror or str(e)) from None
    try:
        reply = json.loads(data)
    except ValueError:
        raise Rejected(Outcome.MALFORMED, f"HTTP {code}: body is not JSON") from None
    if code != 200:
        err = reply.get("error") if isinstance(reply, dict) else None
        msg = err.get("message") if isinstance(err, dict) else None
        outcome = Outcome.UNREACHABLE if code == 503 else Outcome.REFUSED
        raise Rejected(outcome, f"HTTP {code}: {msg or 'no reason given'}")
    return verify_reply(peer, nonce, reply, known)


_RETRYABLE = (Outcome.TIMEOUT, Outcome.UNREACHABLE)


async def _query_peer(
    peer: Peer,
    body: bytes,
    nonce: bytes,
    known: set[str],
    timeout: float,
    retries: int,
    end: float,
    sem: asyncio.Semaphore,
) -> PeerResult:
    import asyncio

    loop = asyncio.get_running_loop()
    last = Rejected(Outcome.TIMEOUT, "deadline reached before asking")
    attempt = failures = 0
    while attempt < MAX_ATTEMPTS:
        attempt += 1
        await sem.acquire()
        t0 = loop.time()
        if end - t0 <= 0.001:
            sem.release()
            break
        # A slow or silent peer gives its slot back after SLOT_HOLD and keeps waiting:
        # the cap bounds bursts without letting dead peers starve live ones.
        held = [True]

        def give_back(held: list[bool] = held) -> None:
            if held[0]:
                held[0] = False
                sem.release()

        timer = loop.call_later(SLOT_HOLD, give_back)
        try:
            status = await _ask(peer, body, nonce, known, min(timeout, end - t0))
            rtt = (loop.time() - t0) * 1000
            return PeerResult(peer.id, Outcome.VERIFIED, "", status, round(rtt, 2), attempt)
        except Rejected as e:
            last = e
        finally:
            timer.cancel()
            give_back()
        if last.outcome not in _RETRYABLE:
            break
        if not last.free_retry:  # refused connections are free: the peer may be booting
            failures += 1
            if failures > retries:
                break
        left = end - loop.time()
        if left <= 0.001:
            break
        await asyncio.sleep(min(0.05 * 2 ** min(attempt - 1, 4), 0.5, left))
    return PeerResult(peer.id, last.outcome, last.reason, None, None, attempt)


async def query_all_async(
    peers: Sequence[Peer],
    known_ids: set[str],
    self_id: str,
    attestor: Attestor,
    deadline: float,
    timeout: float,
    retries: int,
    stop_early: StopEarly | None = None,
    max_inflight: int = MAX_INFLIGHT,
) -> PeerResults:
    import asyncio

    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + deadline
    if not peers:
        return PeerResults((), 0, 0.0, False)
    nonce = os.urandom(NONCE_SIZE)
    if attestor.inline:
        quote = attestor.quote(request_qualifying_data(nonce, self_id))
    else:
        quote = await asyncio.to_thread(attestor.quote, request_qualifying_data(nonce, self_id))
    body = make_request(self_id, nonce, quote)
    sem = asyncio.Semaphore(max_inflight)
    tasks = {
        asyncio.ensure_future(_query_peer(p, body, nonce, known_ids, timeout, retries, end, sem)): p
        for p in peers
    }
    done: list[PeerResult] = []
    pending = set(tasks)
    stopped = False
    while pending:
        left = end - loop.time()
        if left <= 0:
            break
        finished, pending = await asyncio.wait(
            pending, timeout=left, return_when=asyncio.FIRST_COMPLETED
        )
        done.extend(t.result() for t in finished)
        if pending and stop_early is not None and stop_early(done, len(pending)):
            stopped = True
            break
    if pending and not stopped:
        # Peers retrying a refused connection end their own loop at the deadline with
        # their real outcome (unreachable): a moment's grace keeps it from being
        # reported as a bare "deadline".
        finished, pending = await asyncio.wait(pending, timeout=DEADLINE_GRACE)
        done.extend(t.result() for t in finished)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    why = (Outcome.SKIPPED, "verdict settled") if stopped else (Outcome.TIMEOUT, "deadline")
    done.extend(PeerResult(tasks[t].id, why[0], why[1]) for t in pending)
    order = {p.id: i for i, p in enumerate(peers)}
    done.sort(key=lambda r: order[r.peer_id])
    return PeerResults(tuple(done), len(peers), (loop.time() - start) * 1000, stopped)


def query_all(
    inventory: Inventory,
    self_id: str,
    attestor: Attestor,
    deadline: float,
    timeout: float,
    retries: int,
    stop_early: StopEarly | None = None,
    max_inflight: int = MAX_INFLIGHT,
) -> PeerResults:
    """Ask every peer of this host's failure domain; returns by ``deadline`` seconds."""
    import asyncio

    peers = inventory.domain_peers(self_id)
    t0 = time.monotonic()
    res = asyncio.run(
        query_all_async(
            peers,
            {p.id for p in inventory},
            self_id,
            attestor,
            deadline,
            timeout,
            retries,
            stop_early,
            max_inflight,
        )
    )
    log.debug("peers: %d asked in %.1f ms", len(peers), (time.monotonic() - t0) * 1000)
    return res
