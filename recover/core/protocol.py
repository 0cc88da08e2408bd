"""Peer protocol v1 and v2 (docs/peer-protocol.md): records and message checks. Pure.

One query round: a fresh 32-byte nonce, one quote of ours over
sha256("host-recover/v1/request" ‖ nonce ‖ our id), then POST /v1/status to every peer
of the failure domain. A reply is believed only if its signer is the inventory's AK for
that peer, it answers our nonce, its quote verifies (recover.core.attest.verify_quote)
over sha256(canonical_json(status) ‖ nonce), and the quoted PCR digest equals the
inventory's expected PCRs. Anything else is counted with a reason and never believed.

Only a peer's measured boot payload may answer ``role: boot`` (the role whose summary
votes): a reply's quote covers the peer's policy PCRs plus its lock PCR, and ``boot`` is
believed only when the quoted lock PCR is at its reset value (zero) — the payload extends
it before it ends, so the normal OS can never show it at zero (ROLE_MISMATCH otherwise).
Transport lives in recover.peers (http, client, server).

Version 2 changes only the reply's binding: a server answers every request pending when
its TPM becomes free with ONE quote over the root of a hash tree (recover.core.merkle)
whose leaves bind (requester id, nonce, hash of the status reported); each reply carries
its leaf's audit path. The request is v1's (same quote, same qualifying data), so a
client can fall back to v1 for a v1 peer without a second quote.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from recover.core.evidence import Reading
from recover.core.inventory import Peer, parse_pcrs, pcrs_to_json
from recover.errors import HostRecoverError, IntegrityError

VERSION = 2  # what this release asks with; it answers versions 1 and 2


VERSIONS = (1, 2)


PATH = "/v1/status"


PATH_V2 = "/v2/status"


PATHS = {1: PATH, 2: PATH_V2}


MAX_BODY = 64 * 1024


NONCE_SIZE = 32


REQUEST_CONTEXT = b"host-recover/v1/request"


CLOCK_SLACK_MS = 60_000  # the status's clock is read just before the quote is signed


PcrValues = Mapping[str, Mapping[int, bytes]]


ROLES = ("boot", "agent")  # the peer's boot payload / its normal OS (host-recover agent)


class Outcome(enum.StrEnum):
    VERIFIED = "verified"
    FORGED = "forged"  # signature does not verify with the inventory's AK
    REPLAYED = "replayed"  # a valid signature, but not over our nonce
    UNKNOWN_HOST = "unknown-host"  # the answer is from a host not in the inventory
    UNEXPECTED_PCRS = "unexpected-pcrs"  # quoted PCRs differ from the inventory's
    INCONSISTENT = "inconsistent"  # the status contradicts the signed clock
    ROLE_MISMATCH = "role-mismatch"  # says "boot", but the quoted lock PCR is not at reset
    MALFORMED = "malformed"
    REFUSED = "refused"  # the peer said no (HTTP 4xx with a JSON error)
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"  # not needed: the verdict was already settled
    # The peer said it is busy (HTTP 503 "busy": its TPM queue is full) until the round's
    # deadline: it is alive and still pending, not unreachable. Never believed either.
    BUSY = "busy"


class Rejected(Exception):
    def __init__(
        self,
        outcome: Outcome,
        reason: str,
        http_status: int = 400,
        free_retry: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason
        self.http_status = http_status  # what a server answers for this problem
        self.free_retry = free_retry  # retry until the deadline without counting it
        self.retry_after = retry_after  # seconds the peer asked us to wait (busy)


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def request_qualifying_data(nonce: bytes, requester_id: str) -> bytes:
    return hashlib.sha256(REQUEST_CONTEXT + nonce + requester_id.encode()).digest()


def reply_qualifying_data(status: Mapping[str, Any], nonce: bytes) -> bytes:
    return hashlib.sha256(canonical_json(status) + nonce).digest()


@dataclasses.dataclass(frozen=True)
class Quote:
    """A peer's TPM quote over its status: the attestation, its signature and the PCRs."""

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
    """What a peer says about its own previous shutdown (signed by its TPM's quote)."""

    host_id: str
    boot_id: str
    failure_domain: str
    role: str  # "boot" (initramfs payload) or "agent" (normal OS)
    summary: Reading  # evidence summary of the peer's previous shutdown
    orderly: bool | None  # the peer's TPM orderly bit
    since_reset_s: float  # seconds since the peer's TPM reset when it answered
    since_reset_source: str  # "tpm" (TPM time) or "host" (the host's boot time)
    clock: Mapping[str, int]  # clock, reset_count, restart_count at answer time
    # role boot: whether the peer's payload still runs its own rounds (may ask us);
    # None: not said (an agent, or a peer older than the field).
    asking: bool | None = None

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["summary"] = str(self.summary)
        d["clock"] = dict(self.clock)
        if self.asking is None:  # as the peer sent it: without the field
            del d["asking"]
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
        asking = d.get("asking")
        if asking is not None and not isinstance(asking, bool):
            raise Rejected(Outcome.MALFORMED, "status.asking: must be true, false or absent")
        try:
            summary = Reading(need("summary", str))
        except ValueError:
            raise Rejected(
                Outcome.MALFORMED, "status.summary: not clean|abnormal|unknown"
            ) from None
        if need("role", str) not in ROLES:
            raise Rejected(Outcome.MALFORMED, f"status.role: not {'|'.join(ROLES)}")
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
            asking=asking,
        )


@dataclasses.dataclass(frozen=True)
class PeerResult:
    """The outcome of asking one peer, with its verified status if any."""

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
    """The outcomes of one peer round over the failure domain."""

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


def check_quote(ak_pub: bytes, quote: Quote, qualifying_data: bytes, expected: PcrValues) -> Any:
    """Verify ``quote`` and its PCRs against the inventory; return the QuoteInfo.

    Raises Rejected with FORGED (bad signature), REPLAYED (valid signature, other
    qualifying data) or UNEXPECTED_PCRS.
    """
    info, _ = check_reply_quote(ak_pub, quote, qualifying_data, expected, None)
    return info


def lock_selection(
    expected: PcrValues, lock_pcr: int, bank: str | None = None
) -> dict[str, tuple[int, ...]]:
    """The selection a reply's quote covers: the expected PCRs plus the lock PCR in the
    first bank (the set the sealed object's policy covers: core.policy.policy_selection),
    or in ``bank``."""
    want = {alg: tuple(sorted(v)) for alg, v in expected.items()}
    bank = bank or next(iter(want))
    want[bank] = tuple(sorted({*want[bank], lock_pcr}))
    return want


def check_reply_quote(
    ak_pub: bytes,
    quote: Quote,
    qualifying_data: bytes,
    expected: PcrValues,
    lock_pcr: int | None,
) -> tuple[Any, bytes | None]:
    """:func:`check_quote`, also accepting a quote that covers ``lock_pcr`` besides the
    expected PCRs. Returns (QuoteInfo, the lock PCR's value, or None when not covered).

    The lock PCR's value is the one the reply reports; it is believed because the quoted
    pcrDigest is recomputed over the expected values plus that value (the inventory holds
    no golden value for it: only "at reset" matters, judged by the caller).
    """
    from recover.core.attest import parse_attest, pcr_digest, verify_quote
    from recover.core.pcrsel import parse_selection

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
    values: dict[str, dict[int, bytes]] = {alg: dict(v) for alg, v in expected.items()}
    lock_value: bytes | None = None
    # The lock PCR sits in the first bank of the quoter's tpm.pcrs; the inventory may
    # list the banks in another order, so any bank that lacks it will do.
    bank = next(
        (
            b
            for b in want
            if lock_pcr is not None
            and lock_pcr not in want[b]
            and got == lock_selection(expected, lock_pcr, b)
        ),
        None,
    )
    with_lock = lock_pcr is not None and any(lock_pcr not in p for p in want.values())
    if bank is not None:
        assert lock_pcr is not None
        lock_value = quote.pcrs.get(bank, {}).get(lock_pcr)
        if lock_value is None:
            raise Rejected(
                Outcome.UNEXPECTED_PCRS,
                f"quote covers lock PCR {bank}:{lock_pcr}, but the reply does not report its value",
            )
        values[bank][lock_pcr] = lock_value
    elif got != want:
        also = f" (+ lock PCR {lock_pcr})" if with_lock else ""
        raise Rejected(
            Outcome.UNEXPECTED_PCRS,
            f"quote covers {info.pcr_selection or 'no PCRs'}, inventory expects "
            + "+".join(f"{a}:{','.join(map(str, p))}" for a, p in want.items())
            + also,
        )
    if pcr_digest(info.pcr_selection, values) != info.pcr_digest:
        differ = [
            f"{alg}:{i}"
            for alg, vals in expected.items()
            for i, v in sorted(vals.items())
            if quote.pcrs.get(alg, {}).get(i, v) != v
        ]
        detail = f" (reported values differ in {', '.join(differ)})" if differ else ""
        if lock_value is not None and not differ:
            detail = " (or the reported lock PCR value is not the quoted one)"
        raise Rejected(
            Outcome.UNEXPECTED_PCRS, "quoted PCR digest differs from the inventory" + detail
        )
    return info, lock_value


def check_peer_quote(
    peer: Peer, quote: Quote, qualifying_data: bytes, lock_pcr: int | None = None
) -> tuple[Any, bytes | None]:
    """:func:`check_reply_quote` against every PCR state the inventory accepts for
    ``peer`` (``Peer.accepted``: the baked entry's pinned values, or the endorsed states
    of its class in a signed inventory, docs/inventory.md): the quote verifies when it
    matches ANY of them. Only UNEXPECTED_PCRS moves on to the next state. The states the
    reply's (unverified) reported values agree with are tried first: one signature check
    in the usual case, whatever the number of states."""

    def agrees(state: PcrValues) -> bool:
        got = quote.pcrs
        return all(got.get(a, {}).get(i) == v for a, vals in state.items() for i, v in vals.items())

    last: Rejected | None = None
    for pcrs in sorted(peer.accepted, key=lambda s: not agrees(s)):
        try:
            return check_reply_quote(peer.ak_pub, quote, qualifying_data, pcrs, lock_pcr)
        except Rejected as e:
            if e.outcome is not Outcome.UNEXPECTED_PCRS:
                raise
            last = e
    if last is None or peer.states is not None:  # signed: name the class and versions
        why = f": {last.reason}" if last is not None else ""
        raise Rejected(Outcome.UNEXPECTED_PCRS, f"matches none of {peer.describe_states()}{why}")
    raise last


def verify_reply(
    peer: Peer, nonce: bytes, reply: Any, known_ids: set[str], requester: str | None = None
) -> PeerStatus:
    """Check one peer's reply to our ``nonce``; return its status or raise Rejected.

    A version-2 reply (a batched answer) needs ``requester``, our own id: its leaf binds it.
    """
    version = reply.get("version") if isinstance(reply, dict) else None
    if isinstance(version, bool) or version not in VERSIONS:
        raise Rejected(Outcome.MALFORMED, "not a v1 or v2 reply")
    if version == 2 and requester is None:
        raise Rejected(Outcome.MALFORMED, "a v2 reply needs the requester's id to check")
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
    if version == 1:
        qualifying = reply_qualifying_data(raw_status, nonce)
    else:
        assert requester is not None
        qualifying = batch_reply_qualifying_data(reply.get("batch"), raw_status, nonce, requester)
    info, lock_value = check_peer_quote(peer, quote, qualifying, peer.lock_pcr)
    if status.role == "boot":
        check_boot_role(lock_value, peer.lock_pcr)
    c = status.clock
    if (info.reset_count, info.restart_count) != (c["reset_count"], c["restart_count"]):
        raise Rejected(Outcome.INCONSISTENT, "status reset/restart counts differ from the quote's")
    if not 0 <= info.clock - c["clock"] <= CLOCK_SLACK_MS:
        raise Rejected(Outcome.INCONSISTENT, "status clock does not agree with the signed clock")
    if status.since_reset_source == "tpm" and status.since_reset_s * 1000 > info.clock + 1000:
        raise Rejected(Outcome.INCONSISTENT, "time since reset exceeds the signed TPM clock")
    return status


def status_hash(status: Mapping[str, Any]) -> bytes:
    return hashlib.sha256(canonical_json(status)).digest()


@dataclasses.dataclass(frozen=True)
class Batch:
    """Where one reply's leaf sits in its batch's tree."""

    size: int
    index: int
    path: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "index": self.index, "path": [p.hex() for p in self.path]}

    @classmethod
    def from_json(cls, obj: Any) -> Batch:
        from recover.core.merkle import MAX_LEAVES, MAX_PATH

        if not isinstance(obj, dict):
            raise Rejected(Outcome.MALFORMED, "batch must be an object")
        size, index, path = obj.get("size"), obj.get("index"), obj.get("path")
        for name, v in (("size", size), ("index", index)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise Rejected(Outcome.MALFORMED, f"batch.{name} must be an integer")
        assert isinstance(size, int) and isinstance(index, int)
        if not 0 <= index < size <= MAX_LEAVES:
            raise Rejected(Outcome.MALFORMED, f"batch: leaf {index} of a tree of {size}")
        if not isinstance(path, list) or len(path) > MAX_PATH:
            raise Rejected(Outcome.MALFORMED, f"batch.path must be a list of <= {MAX_PATH}")
        try:
            hashes = tuple(bytes.fromhex(p) for p in path)
        except (TypeError, ValueError):
            raise Rejected(Outcome.MALFORMED, "batch.path entries must be hex") from None
        return cls(size, index, hashes)


def batch_reply_qualifying_data(
    batch: Any, status: Mapping[str, Any], nonce: bytes, requester: str
) -> bytes:
    """The qualifying data a v2 reply's quote must carry: the root its audit path proves
    for the leaf (requester, nonce, status hash), bound with the tree's size."""
    from recover.core.merkle import (
        PathError,
        batch_qualifying_data,
        leaf_data,
        leaf_hash,
        root_from_path,
    )

    b = Batch.from_json(batch)
    leaf = leaf_hash(leaf_data(requester, nonce, status_hash(status)))
    try:
        root = root_from_path(leaf, b.index, b.size, b.path)
    except PathError as e:
        raise Rejected(Outcome.MALFORMED, f"batch: {e}") from None
    return batch_qualifying_data(root, b.size)


def check_boot_role(lock_value: bytes | None, lock_pcr: int) -> None:
    """A reply may say ``role: boot`` only if its quote shows the lock PCR at its reset
    value: the payload extends it before it ends, so the normal OS never shows zero."""
    if lock_value is None:
        raise Rejected(
            Outcome.ROLE_MISMATCH,
            f"says role boot, but its quote does not cover lock PCR {lock_pcr} "
            "(an older peer: its role cannot be attested)",
        )
    if any(lock_value):
        raise Rejected(
            Outcome.ROLE_MISMATCH,
            f"says role boot, but its lock PCR {lock_pcr} is extended: its normal OS answered",
        )


def make_request(self_id: str, nonce: bytes, quote: Quote, version: int = VERSION) -> bytes:
    """A request body (v1 and v2 requests differ only in ``version``)."""
    return canonical_json(
        {
            "version": version,
            "nonce": nonce.hex(),
            "requester": self_id,
            "quote": quote.to_json(),
            "pcrs": pcrs_to_json(quote.pcrs),
        }
    )


# --- receipts (docs/peer-protocol.md, "Receipts") ----------------------------------------

RECEIPT_PATH = "/v2/receipt"


RECEIPT_CONTEXT = b"host-recover/v2/receipt"


def receipt_tag(requester: str, nonce: bytes, signature: bytes) -> bytes:
    """What a requester echoes once a v2 reply verified: bound to its request (requester,
    nonce) and to the reply's quote signature, which only the requester and the network
    path saw (peers in the same batch share the signature, never the nonce)."""
    h = hashlib.sha256(RECEIPT_CONTEXT)
    for part in (requester.encode(), nonce, signature):
        h.update(len(part).to_bytes(4, "big") + part)
    return h.digest()


def make_receipt(self_id: str, nonce: bytes, signature: bytes) -> bytes:
    """A receipt body: "your reply to my request ``nonce`` reached me and verified"."""
    return canonical_json(
        {
            "version": 2,
            "requester": self_id,
            "nonce": nonce.hex(),
            "tag": receipt_tag(self_id, nonce, signature).hex(),
        }
    )


def reply_signature(reply: Mapping[str, Any]) -> bytes:
    """The quote signature of a reply this host produced or verified (Rejected if none)."""
    return Quote.from_json(reply.get("quote"), reply.get("pcrs")).signature
