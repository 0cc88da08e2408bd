"""Witness records on etcd (docs/witness.md): the attested heartbeat, its checks, and
what a booting host learns from its domain's heartbeats. Pure: no sockets, no TPM.

Keys (``P`` = ``witness.prefix``, ``D`` = failure domain, ``H`` = host id)::

    P/D/H          the last heartbeat: {"status": {...}, "quote": {...}, "pcrs": {...}},
                   rewritten every ``witness.interval``; NOT lease-bound, so it stays
                   after the host stops ("last seen")
    P/D/H/alive    lease-bound (TTL = witness.ttl_intervals × interval): present while
                   the agent keeps its lease alive

One range request over ``P/D/`` returns the whole domain. The heartbeat's status carries
the etcd revision the agent read just before quoting (``rev_read``) and the one its
previous heartbeat read (``prev_rev``); the quote's qualifying data is
SHA-256("host-recover/v1/witness" ‖ canonical_json(status)). So etcd (or anyone with
write access to it) cannot forge or alter a heartbeat, nor move it on the logical clock:
the time of a heartbeat is its signed ``rev_read``, and a record written much later than
it was made (a replay) is refused.

This host's power loss is placed on the same clock: its own last heartbeat's
``rev_read``. A peer whose lease has expired and whose last ``rev_read`` lies within
the window of ours stopped with us: "same event (witnessed)".
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from recover.core.inventory import Peer
from recover.core.protocol import (
    CLOCK_SLACK_MS,
    Outcome,
    Quote,
    Rejected,
    canonical_json,
    check_peer_quote,
)

VERSION = 1


CONTEXT = b"host-recover/v1/witness"


ALIVE_SUFFIX = "/alive"


MAX_RECORD = 16 * 1024  # bytes of one heartbeat record (a decision's reasons included)


class WitnessClass(enum.StrEnum):
    """What the witness says about one peer, relative to this host's last heartbeat."""

    SAME = "same"  # lease expired, last heartbeat within the window of ours
    EARLIER = "earlier"  # lease expired, last heartbeat before ours - window (other event)
    LATER = "later"  # lease expired, last heartbeat after ours + window (other event)
    ALIVE = "alive"  # lease held, heartbeating after ours + window
    PENDING = "pending"  # lease still held, last heartbeat near ours: may just have stopped
    ABSENT = "absent"  # no heartbeat record
    UNVERIFIED = "unverified"  # a record that is not believed
    NO_ANCHOR = "no-anchor"  # this host's own last heartbeat is missing or not believed


#: Classes that say "this peer did not go down with us" (count as unaffected).
OTHER_EVENT = (WitnessClass.EARLIER, WitnessClass.LATER, WitnessClass.ALIVE)


def check_name(text: str, what: str) -> str:
    """A host id or domain usable as one key segment."""
    if not text or "/" in text or text in (".", "..") or len(text) > 253:
        raise ValueError(f"{what} {text!r} cannot be a witness key segment (no '/')")
    return text


def domain_prefix(prefix: str, domain: str) -> str:
    return f"{prefix.rstrip('/')}/{check_name(domain, 'failure domain')}/"


def heartbeat_key(prefix: str, domain: str, host_id: str) -> str:
    return domain_prefix(prefix, domain) + check_name(host_id, "host id")


def alive_key(prefix: str, domain: str, host_id: str) -> str:
    return heartbeat_key(prefix, domain, host_id) + ALIVE_SUFFIX


def qualifying_data(status: Mapping[str, Any]) -> bytes:
    return hashlib.sha256(CONTEXT + canonical_json(status)).digest()


def make_record(status: Mapping[str, Any], quote: Quote) -> bytes:
    from recover.core.inventory import pcrs_to_json

    return canonical_json(
        {"status": dict(status), "quote": quote.to_json(), "pcrs": pcrs_to_json(quote.pcrs)}
    )


@dataclasses.dataclass(frozen=True)
class Heartbeat:
    """A verified heartbeat (its fields are signed; ``mod_revision`` is etcd's)."""

    host_id: str
    failure_domain: str
    boot_id: str
    seq: int
    rev_read: int  # the revision the agent read before quoting: when it was alive
    prev_rev: int  # the revision its previous heartbeat read (the lease's write: first)
    interval_s: float
    summary: str  # the host's evidence summary of its current boot
    time: float  # the agent's wall clock (informative: display only)
    decision: Mapping[str, Any] | None  # the current boot's decision (kind, action, reasons)
    mod_revision: int

    @property
    def span(self) -> int:
        """Revisions the cluster advanced during this host's last beat (>= 1)."""
        return max(1, self.rev_read - self.prev_rev)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["decision"] = dict(self.decision) if self.decision is not None else None
        return d


def _int(d: Mapping[str, Any], key: str) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**63:
        raise Rejected(Outcome.MALFORMED, f"status.{key}: missing or not a revision")
    return v


def _str(d: Mapping[str, Any], key: str) -> str:
    v = d.get(key)
    if not isinstance(v, str):
        raise Rejected(Outcome.MALFORMED, f"status.{key}: missing or not a string")
    return v


def _num(d: Mapping[str, Any], key: str) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1e12:
        raise Rejected(Outcome.MALFORMED, f"status.{key}: missing or out of range")
    return float(v)


def verify_record(peer: Peer, raw: bytes, mod_revision: int) -> Heartbeat:
    """Check one heartbeat record read from etcd against the inventory; raise Rejected.

    Believed only if: it parses; its status names this peer and its failure domain; its
    quote verifies with the peer's AK over the status and covers the inventory's PCRs
    (recover.core.protocol.check_peer_quote, against any PCR state the inventory
    accepts: FORGED, REPLAYED, UNEXPECTED_PCRS); the status's
    clock agrees with the signed clockInfo; and the write's ``mod_revision`` follows the
    signed ``rev_read`` by at most one interval's worth of revisions (else REPLAYED:
    someone wrote an old record again).
    """
    if len(raw) > MAX_RECORD:
        raise Rejected(Outcome.MALFORMED, f"record of {len(raw)} bytes exceeds {MAX_RECORD}")
    try:
        rec = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Rejected(Outcome.MALFORMED, "record is not JSON") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("status"), dict):
        raise Rejected(Outcome.MALFORMED, "record needs a status object")
    st = rec["status"]
    if st.get("version") != VERSION:
        raise Rejected(Outcome.MALFORMED, f"not a v{VERSION} heartbeat")
    host, domain = _str(st, "host_id"), _str(st, "failure_domain")
    if host != peer.id:
        raise Rejected(Outcome.UNKNOWN_HOST, f"record says {host!r}, stored as {peer.id!r}")
    if domain != peer.failure_domain:
        raise Rejected(
            Outcome.UNKNOWN_HOST,
            f"record says domain {domain!r}, inventory {peer.failure_domain!r}",
        )
    quote = Quote.from_json(rec.get("quote"), rec.get("pcrs"))
    info, _ = check_peer_quote(peer, quote, qualifying_data(st))
    clock = st.get("clock")
    if not isinstance(clock, dict):
        raise Rejected(Outcome.MALFORMED, "status.clock: missing")
    if (info.reset_count, info.restart_count) != (
        clock.get("reset_count"),
        clock.get("restart_count"),
    ):
        raise Rejected(Outcome.INCONSISTENT, "status reset/restart counts differ from the quote's")
    if not isinstance(clock.get("clock"), int) or not (
        0 <= info.clock - clock["clock"] <= CLOCK_SLACK_MS
    ):
        raise Rejected(Outcome.INCONSISTENT, "status clock does not agree with the signed clock")
    rev_read, prev_rev = _int(st, "rev_read"), _int(st, "prev_rev")
    if not 0 < prev_rev <= rev_read:
        raise Rejected(Outcome.MALFORMED, "status.prev_rev must be in (0, rev_read]")
    # The write follows the read by the quote's time, a part of one beat: at most the
    # revisions a whole beat saw (twice, for jitter; +1: its own write). More means the
    # record was written again later: a replay.
    if not rev_read < mod_revision <= rev_read + 2 * (rev_read - prev_rev) + 1:
        raise Rejected(
            Outcome.REPLAYED,
            f"written at revision {mod_revision}, made at {rev_read}: not its own write",
        )
    decision = st.get("decision")
    if decision is not None and not isinstance(decision, dict):
        raise Rejected(Outcome.MALFORMED, "status.decision: must be an object or null")
    interval = _num(st, "interval_s")
    if interval <= 0:
        raise Rejected(Outcome.MALFORMED, "status.interval_s must be > 0")
    return Heartbeat(
        host_id=host,
        failure_domain=domain,
        boot_id=_str(st, "boot_id"),
        seq=_int(st, "seq"),
        rev_read=rev_read,
        prev_rev=prev_rev,
        interval_s=interval,
        summary=_str(st, "summary"),
        time=_num(st, "time"),
        decision=decision,
        mod_revision=mod_revision,
    )


@dataclasses.dataclass(frozen=True)
class Entry:
    """What the domain's range holds for one host."""

    heartbeat: Heartbeat | None = None
    rejected: str = ""  # why the record is not believed ("" when believed or absent)
    alive: bool = False  # its lease-bound key is present


def window_revisions(anchor: Heartbeat, window: float) -> int:
    """``window`` seconds as revisions at the rate this host's last beat saw, plus one
    interval: a heartbeat is up to one interval older than the stop it precedes."""
    return int(anchor.span * (window + anchor.interval_s) / anchor.interval_s) + 1


def classify(anchor: Heartbeat | None, entry: Entry, window: float) -> WitnessClass:
    if anchor is None:
        return WitnessClass.NO_ANCHOR
    if entry.heartbeat is None:
        return WitnessClass.UNVERIFIED if entry.rejected else WitnessClass.ABSENT
    d = entry.heartbeat.rev_read - anchor.rev_read
    w = window_revisions(anchor, window)
    if entry.alive:
        return WitnessClass.ALIVE if d > w else WitnessClass.PENDING
    if d > w:
        return WitnessClass.LATER
    if d < -w:
        return WitnessClass.EARLIER
    return WitnessClass.SAME


@dataclasses.dataclass(frozen=True)
class View:
    """The witness's view of this host's domain (what the verdict takes)."""

    classes: Mapping[str, WitnessClass]  # peer id → class
    anchor: Heartbeat | None = None  # this host's own last heartbeat
    anchor_problem: str = ""  # why there is no anchor
    revision: int = 0  # the store's revision when read
    window_revs: int = 0
    entries: Mapping[str, Entry] = dataclasses.field(default_factory=dict)
    error: str = ""  # the witness could not be read: nothing is known
    elapsed_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "error": self.error or None,
            "revision": self.revision,
            "anchor_rev": self.anchor.rev_read if self.anchor else None,
            "anchor_problem": self.anchor_problem or None,
            "window_revisions": self.window_revs,
            "elapsed_ms": round(self.elapsed_ms, 1),
            "peers": {
                pid: {
                    "class": str(c),
                    "rev": (
                        e.heartbeat.rev_read
                        if (e := self.entries.get(pid)) and e.heartbeat
                        else None
                    ),
                    "alive": bool(e and e.alive),
                    "rejected": (e.rejected or None) if e else None,
                }
                for pid, c in sorted(self.classes.items())
            },
        }


def unavailable(error: str, elapsed_ms: float = 0.0) -> View:
    return View({}, error=error, elapsed_ms=elapsed_ms)


def view(
    me: str,
    peers: tuple[Peer, ...],
    self_entry: Peer | None,
    kvs: Mapping[str, tuple[bytes, int]],
    prefix: str,
    domain: str,
    window: float,
    revision: int,
    previous_boot: str | None = None,
) -> View:
    """Classify every peer from the domain's key-values (key → (value, mod_revision)).

    ``previous_boot``: the id (prefix) of the boot that went down, from this host's TPM
    decision record (written by that boot's payload, before its lock): the anchor must
    be a heartbeat of that boot, not an older one (an agent that did not run last time)."""
    base = domain_prefix(prefix, domain)

    def entry(p: Peer) -> Entry:
        alive = (base + p.id + ALIVE_SUFFIX) in kvs
        kv = kvs.get(base + p.id)
        if kv is None:
            return Entry(None, "", alive)
        try:
            return Entry(verify_record(p, kv[0], kv[1]), "", alive)
        except Rejected as e:
            return Entry(None, f"{e.outcome}: {e.reason}", alive)

    anchor, problem = None, ""
    if self_entry is None:
        problem = f"this host ({me}) is not in the inventory"
    else:
        own = entry(self_entry)
        anchor = own.heartbeat
        problem = "" if anchor else own.rejected or "no heartbeat of this host in the witness"
        if anchor is not None and previous_boot and not anchor.boot_id.startswith(previous_boot):
            problem = (
                f"this host's last heartbeat is from boot {anchor.boot_id[:8]}, not from the "
                f"boot that went down ({previous_boot}): stale"
            )
            anchor = None
    entries = {p.id: entry(p) for p in peers}
    classes = {pid: classify(anchor, e, window) for pid, e in entries.items()}
    w = window_revisions(anchor, window) if anchor else 0
    return View(classes, anchor, problem, revision, w, entries)
