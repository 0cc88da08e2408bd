"""The peer client: one query round to every peer of the failure domain concurrently,
under one deadline, with per-peer timeouts, bounded retries, a cap on requests in
flight and an early stop once the verdict cannot change (docs/peer-protocol.md).

It asks with protocol v2 and falls back to v1 for a peer that does not know v2 (the
request's quote serves both: no second quote). A peer that says it is busy is waited
for (its Retry-After, within the deadline) and never counted unreachable: if the round
ends while it is still busy its outcome is ``busy`` (still pending).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from recover.core.inventory import Peer
from recover.core.protocol import (
    NONCE_SIZE,
    PATHS,
    RECEIPT_PATH,
    VERSION,
    Outcome,
    PeerResult,
    PeerResults,
    PeerStatus,
    Rejected,
    make_receipt,
    make_request,
    reply_signature,
    request_qualifying_data,
    verify_reply,
)
from recover.peers.attestor import Attestor
from recover.peers.http import http_post

if TYPE_CHECKING:
    import asyncio

    from recover.core.inventory import Inventory

log = logging.getLogger(__name__)


DEADLINE_GRACE = 0.05  # seconds after the deadline for peers to report their own outcome


MAX_INFLIGHT = 64


SLOT_HOLD = 0.25  # seconds a request holds an in-flight slot


MAX_ATTEMPTS = 200  # per peer and query; refused connections retry until the deadline


StopEarly = Callable[[Sequence[PeerResult], int], bool]


MAX_DIGITS = 40  # longest integer a reply may carry (a 64-bit counter has 20 digits)


RECEIPT_TIMEOUT = 1.0  # seconds for one receipt (one attempt, never retried)


RECEIPT_GRACE = 0.2  # seconds the round's end waits for receipts still in flight


def _bounded_int(text: str) -> int:
    if len(text) > MAX_DIGITS:
        raise ValueError(f"a {len(text)}-digit number")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")) or len(text) > MAX_DIGITS:
        raise ValueError(f"number {text[:20]!r}")
    return value


def _no_constant(text: str) -> float:
    raise ValueError(f"{text} is not JSON")


def loads_bounded(data: bytes) -> object:
    """JSON from a peer, refusing what costs or crashes: nesting deeper than the
    interpreter's recursion limit (RecursionError), huge or non-finite numbers."""
    try:
        return json.loads(
            data,
            parse_int=_bounded_int,
            parse_float=_finite_float,
            parse_constant=_no_constant,
        )
    except RecursionError:
        raise ValueError("nested too deeply") from None


class _OldPeer(Rejected):
    """The peer does not speak the version we asked with (it answered 404 or "version")."""


@dataclasses.dataclass(frozen=True)
class _Round:
    """What every request of one round shares."""

    bodies: dict[int, bytes]  # by protocol version
    nonce: bytes
    known: set[str]
    self_id: str
    timeout: float
    retries: int
    end: float
    source: str | None
    receipts: list[asyncio.Future[None]] = dataclasses.field(default_factory=list)


async def _send_receipt(peer: Peer, rnd: _Round, body: bytes) -> None:
    """Tell ``peer`` its answer reached us and verified, so it need not keep answering
    us (docs/peer-protocol.md, "Receipts"). One attempt; whatever happens is only
    logged: without the receipt the peer answers a while longer, as before."""
    try:
        code, _ = await http_post(
            peer.host, peer.port, body, min(rnd.timeout, RECEIPT_TIMEOUT), RECEIPT_PATH, rnd.source
        )
    except Exception as e:  # noqa: BLE001 - a receipt never affects the round
        log.debug("receipt to %s not delivered: %s", peer.id, e)
        return
    if code != 200:  # 404 from a peer that predates receipts
        log.debug("receipt to %s: HTTP %d", peer.id, code)


async def _ask(peer: Peer, rnd: _Round, version: int, timeout: float) -> PeerStatus:
    try:
        code, data = await http_post(
            peer.host, peer.port, rnd.bodies[version], timeout, PATHS[version], rnd.source
        )
    except TimeoutError:
        raise Rejected(Outcome.TIMEOUT, f"no answer within {timeout:g} s") from None
    except ConnectionRefusedError:
        raise Rejected(Outcome.UNREACHABLE, "connection refused", free_retry=True) from None
    except OSError as e:
        raise Rejected(Outcome.UNREACHABLE, e.strerror or str(e)) from None
    try:
        reply = loads_bounded(data)
    except ValueError as e:
        raise Rejected(
            Outcome.MALFORMED, f"HTTP {code}: body is not acceptable JSON: {e}"
        ) from None
    if code != 200:
        err = reply.get("error") if isinstance(reply, dict) else None
        err = err if isinstance(err, dict) else {}
        msg, kind = err.get("message"), err.get("code")
        why = f"HTTP {code}: {msg or 'no reason given'}"
        if version > 1 and (code == 404 or (code == 400 and kind == "version")):
            raise _OldPeer(Outcome.REFUSED, why)
        if code == 503 and kind == "busy":
            wait = err.get("retry_after")
            wait = float(wait) if isinstance(wait, int | float) and 0 < wait < 60 else 0.5
            raise Rejected(Outcome.BUSY, why, free_retry=True, retry_after=wait)
        outcome = Outcome.UNREACHABLE if code == 503 else Outcome.REFUSED
        raise Rejected(outcome, why)
    status = verify_reply(peer, rnd.nonce, reply, rnd.known, requester=rnd.self_id)
    if version == 2:
        import asyncio

        assert isinstance(reply, dict)
        body = make_receipt(rnd.self_id, rnd.nonce, reply_signature(reply))
        rnd.receipts.append(asyncio.ensure_future(_send_receipt(peer, rnd, body)))
    return status


_RETRYABLE = (Outcome.TIMEOUT, Outcome.UNREACHABLE, Outcome.BUSY)


async def _query_peer(peer: Peer, rnd: _Round, sem: asyncio.Semaphore) -> PeerResult:
    import asyncio

    loop = asyncio.get_running_loop()
    last = Rejected(Outcome.TIMEOUT, "deadline reached before asking")
    attempt = failures = 0
    version = max(rnd.bodies)
    while attempt < MAX_ATTEMPTS:
        attempt += 1
        await sem.acquire()
        t0 = loop.time()
        if rnd.end - t0 <= 0.001:
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
            status = await _ask(peer, rnd, version, min(rnd.timeout, rnd.end - t0))
            rtt = (loop.time() - t0) * 1000
            return PeerResult(peer.id, Outcome.VERIFIED, "", status, round(rtt, 2), attempt)
        except _OldPeer as e:
            last = e
        except Rejected as e:
            last = e
        except Exception as e:  # noqa: BLE001 - one bad peer never aborts the round
            why = f"{type(e).__name__}: {str(e)[:80]}"
            last = Rejected(Outcome.MALFORMED, f"reply could not be checked ({why})")
        finally:
            timer.cancel()
            give_back()
        if isinstance(last, _OldPeer) and version - 1 in rnd.bodies:
            log.info("peer %s does not speak v%d: asking with v%d", peer.id, version, version - 1)
            version -= 1
            continue
        if last.outcome not in _RETRYABLE:
            break
        if not last.free_retry:  # refused connections are free: the peer may be booting
            failures += 1
            if failures > rnd.retries:
                break
        left = rnd.end - loop.time()
        if left <= 0.001:
            break
        # busy: it said how long to wait; otherwise back off 50 ms -> 500 ms
        wait = last.retry_after or min(0.05 * 2 ** min(attempt - 1, 4), 0.5)
        await asyncio.sleep(min(wait, left))
    return PeerResult(peer.id, last.outcome, last.reason, None, None, attempt)


class Late:
    """The queries still out when a round stopped because the verdict was settled, left
    running instead of cancelled: the verdict does not wait for them, but what those
    peers say tells the payload whether they may still ask it (recover.boot.gather's
    answer wait). Each query keeps its own bounds (``peers.timeout``, the round's
    deadline); :meth:`close` cancels what is left. Their results stay out of the
    round's (there they are ``skipped``)."""

    def __init__(self, tasks: dict[asyncio.Future[PeerResult], Peer], rnd: _Round) -> None:
        self._tasks = tasks
        self._rnd = rnd

    def __len__(self) -> int:
        return len(self._tasks)

    def finished(self) -> list[PeerResult]:
        """The results of the queries that have ended since the last call."""
        done = [t for t in self._tasks if t.done()]
        out = []
        for t in done:
            del self._tasks[t]
            if not t.cancelled() and t.exception() is None:
                out.append(t.result())
        return out

    async def close(self) -> None:
        """Cancel the queries still out; the receipts of late answers get the round's
        grace (:data:`RECEIPT_GRACE`), then the rest is cancelled. Returns once every
        one of them has ended."""
        import asyncio

        left: list[asyncio.Future[Any]] = [t for t in self._tasks if not t.done()]
        self._tasks.clear()
        for t in left:
            t.cancel()
        receipts = [r for r in self._rnd.receipts if not r.done()]
        if receipts:
            _, unsent = await asyncio.wait(receipts, timeout=RECEIPT_GRACE)
            for r in unsent:
                r.cancel()
            left += unsent
        if left:
            await asyncio.gather(*left, return_exceptions=True)


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
    *,
    version: int = VERSION,
    source: str | None = None,
    late: list[Late] | None = None,
) -> PeerResults:
    """One round (see the module doc). ``version``: the protocol to ask with (2; 1 is the
    pre-batching protocol, for benchmarks and old fleets); ``source``: the local address
    to connect from; ``late``: when given and the round stops early (the verdict is
    settled), its queries still out are appended to it as a :class:`Late` and left
    running (the caller closes it), instead of cancelled."""
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
    bodies = {v: make_request(self_id, nonce, quote, v) for v in range(1, version + 1)}
    rnd = _Round(bodies, nonce, known_ids, self_id, timeout, retries, end, source)
    sem = asyncio.Semaphore(max_inflight)
    tasks = {asyncio.ensure_future(_query_peer(p, rnd, sem)): p for p in peers}
    done: list[PeerResult] = []
    pending = set(tasks)
    stopped = False
    # Completions arrive on a queue: O(1) per answer (asyncio.wait re-arms every pending
    # task on each call, O(peers) per answer: quadratic in a large domain).
    finished: asyncio.Queue[asyncio.Future[PeerResult]] = asyncio.Queue()
    for t in tasks:
        t.add_done_callback(finished.put_nowait)
    while pending:
        left = end - loop.time()
        if left <= 0:
            break
        try:
            async with asyncio.timeout(left):
                first = await finished.get()
        except TimeoutError:
            break
        batch = [first]
        while not finished.empty():
            batch.append(finished.get_nowait())
        pending.difference_update(batch)
        done.extend(t.result() for t in batch)
        if pending and stop_early is not None and stop_early(done, len(pending)):
            stopped = True
            break
    if pending and not stopped:
        # Peers retrying a refused connection end their own loop at the deadline with
        # their real outcome (unreachable): a moment's grace keeps it from being
        # reported as a bare "deadline".
        graced, pending = await asyncio.wait(pending, timeout=DEADLINE_GRACE)
        done.extend(t.result() for t in graced)
    if stopped and late is not None and pending:
        late.append(Late({t: tasks[t] for t in pending}, rnd))
    else:
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    if rnd.receipts:  # most went out while the round ran; the rest get a moment
        _, unsent = await asyncio.wait(rnd.receipts, timeout=RECEIPT_GRACE)
        for r in unsent:
            r.cancel()
        if unsent:
            await asyncio.gather(*unsent, return_exceptions=True)
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
    *,
    version: int = VERSION,
    source: str | None = None,
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
            version=version,
            source=source,
        )
    )
    log.debug("peers: %d asked in %.1f ms", len(peers), (time.monotonic() - t0) * 1000)
    return res
