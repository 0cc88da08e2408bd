"""Rounds: ask the failure domain's peers again, round after round, until every one has
answered, the verdict is settled, or the wait (``verdict.wait``) ends.

Real servers spend 1-5 minutes in POST and power returns in stages, so the peers of a
domain reach their payloads minutes apart. One round (recover.peers.client) asks every
peer once under ``peers.deadline``; a peer that is silent in it (unreachable, timeout,
busy) is asked again in the next round, after a pause that doubles up to
:data:`PAUSE_MAX`. The payload keeps answering its own peers meanwhile (its server runs
in recover.boot.gather around this call). A silent peer is never counted as fine: while
rounds remain it is pending, after the last one undecided (recover.core.verdict.Judge).
docs/verdict.md, "Staggered boots".
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from recover.core.protocol import PeerResult, PeerResults
from recover.core.verdict import Convergence, Judge, Stop, silent
from recover.peers.client import MAX_INFLIGHT, Late, query_all_async

if TYPE_CHECKING:
    from recover.core.inventory import Inventory, Peer
    from recover.peers.attestor import Attestor

log = logging.getLogger(__name__)


PAUSE = 1.0  # seconds between the first and the second round; doubles each round
PAUSE_MAX = 15.0  # ... up to this: a peer leaving POST waits at most this for a round
MAX_ROUNDS = 64  # a bound whatever the settings (240 s default wait: about 20 rounds)
MIN_ROUND = 0.5  # seconds: a shorter rest of the wait is not worth another round


def pause(rounds: int) -> float:
    """The pause after round ``rounds`` (1-based)."""
    return float(min(PAUSE * 2 ** min(rounds - 1, 16), PAUSE_MAX))


def choose_sample(peers: Sequence[Peer], size: int | None) -> list[Peer]:
    """A uniform random sample of ``size`` peers (cryptographically random: a peer
    cannot predict whether it will be asked), or every peer when ``size`` is None."""
    if size is None or size >= len(peers):
        return list(peers)
    return secrets.SystemRandom().sample(list(peers), size)


async def converge_async(
    peers: Sequence[Peer],
    known_ids: set[str],
    self_id: str,
    attestor: Attestor,
    judge: Judge,
    *,
    deadline: float,
    timeout: float,
    retries: int,
    wait: float,
    origin: float,
    domain: int | None = None,
    clock: Callable[[], float] = time.monotonic,
    max_inflight: int = MAX_INFLIGHT,
    on_round: Callable[[int, PeerResults], None] | None = None,
    source: str | None = None,
    late: list[Late] | None = None,
) -> tuple[PeerResults, Convergence]:
    """Ask ``peers`` (the domain, or a sample of it: ``domain`` is then the domain's
    size) in rounds. ``origin``: the ``clock()`` time the evidence was read (a later
    round compares the peers' reset times with this host's at that round).
    ``on_round(n, results)`` runs after every round that another one follows; ``source``:
    the local address to ask from (the storm benchmark's simulated hosts); ``late``: where
    the queries still out when the verdict settled go, left running
    (recover.peers.client.Late; the caller closes them), instead of cancelled."""
    import asyncio

    start = clock()
    end = start + wait
    latest: dict[str, PeerResult] = {}
    offsets: dict[str, float] = {}
    todo = list(peers)
    rounds, stopped = 0, Stop.ROUNDS
    while todo and rounds < MAX_ROUNDS:
        rounds += 1
        now = clock()
        span = deadline if rounds == 1 else min(deadline, end - now)
        last = now + span + pause(rounds) + MIN_ROUND >= end
        offset = now - origin
        res = await query_all_async(
            todo,
            known_ids,
            self_id,
            attestor,
            span,
            timeout,
            retries,
            judge.round_stop(offset, last),
            max_inflight,
            source=source,
            late=late,
        )
        for r in res.results:
            latest[r.peer_id] = r
            offsets[r.peer_id] = round(offset, 3)
            judge.add(r, offset)
        todo = [p for p in todo if silent(latest[p.id])]
        if res.stopped_early or judge.settled(len(todo)):
            stopped = Stop.SETTLED
            break
        if not todo:
            stopped = Stop.ANSWERED
            break
        if last or clock() + pause(rounds) + MIN_ROUND >= end:
            stopped = Stop.WINDOW
            break
        if on_round is not None:
            on_round(rounds, res)
        left = end - clock()
        log.info(
            "peers round %d: %d of %d answered, %d silent (%s); asking again in %.0f s, "
            "the wait ends in %.0f s",
            rounds,
            len(peers) - len(todo),
            len(peers),
            len(todo),
            _why(latest[p.id] for p in todo),
            pause(rounds),
            left,
        )
        await asyncio.sleep(pause(rounds))
    if not todo and stopped is Stop.ROUNDS:  # no peers at all
        stopped = Stop.ANSWERED
    order = {p.id: i for i, p in enumerate(peers)}
    results = tuple(sorted(latest.values(), key=lambda r: order[r.peer_id]))
    waited = clock() - start
    conv = Convergence(
        rounds=rounds,
        waited_s=waited,
        wait_s=wait,
        stopped=stopped,
        domain=len(peers) if domain is None else domain,
        asked=len(peers),
        silent=tuple(r.peer_id for r in results if silent(r)),
        offsets=offsets,
    )
    return PeerResults(results, len(peers), waited * 1000, stopped is Stop.SETTLED), conv


def _why(results: Iterable[PeerResult]) -> str:
    counts: dict[str, int] = {}
    for r in results:
        counts[str(r.outcome)] = counts.get(str(r.outcome), 0) + 1
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))


async def converge_domain(
    inventory: Inventory,
    self_id: str,
    attestor: Attestor,
    judge: Judge,
    *,
    deadline: float,
    timeout: float,
    retries: int,
    wait: float,
    origin: float,
    sample: int | None = None,
    late: list[Late] | None = None,
) -> tuple[PeerResults, Convergence]:
    """:func:`converge_async` over this host's failure domain (or a random ``sample`` of
    it)."""
    domain = inventory.domain_peers(self_id)
    return await converge_async(
        choose_sample(domain, sample),
        {p.id for p in inventory},
        self_id,
        attestor,
        judge,
        deadline=deadline,
        timeout=timeout,
        retries=retries,
        wait=wait,
        origin=origin,
        domain=len(domain),
        late=late,
    )


class Session:
    """The payload's rounds and its answer wait after them, in one event loop
    (``asyncio.Runner``): with ``keep_late``, the queries still out when the verdict
    settled (recover.peers.client.Late) keep running whenever the caller waits through
    :meth:`sleep`, and :meth:`late` gives what they brought. Leaving the session cancels
    what is still out and closes the loop."""

    def __init__(self, keep_late: bool = True) -> None:
        import asyncio

        self._runner = asyncio.Runner()
        self._late: list[Late] | None = [] if keep_late else None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._runner.run(self._close())
        finally:
            self._runner.close()

    async def _close(self) -> None:
        for queries in self._late or []:
            await queries.close()

    def converge(
        self,
        inventory: Inventory,
        self_id: str,
        attestor: Attestor,
        judge: Judge,
        **kw: Any,
    ) -> tuple[PeerResults, Convergence]:
        """:func:`converge_domain` (same keywords) in this session's loop."""
        return self._runner.run(
            converge_domain(inventory, self_id, attestor, judge, late=self._late, **kw)
        )

    def still_out(self) -> int:
        """How many queries of the settled round are still out."""
        return sum(len(q) for q in self._late or [])

    def late(self) -> list[PeerResult]:
        """The results of queries of the settled round that ended since the last call."""
        return [r for q in self._late or [] for r in q.finished()]

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, the queries still out running meanwhile."""
        import asyncio

        self._runner.run(asyncio.sleep(seconds))
