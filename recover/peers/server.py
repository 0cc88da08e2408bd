"""The status server (peer protocol v1 and v2, docs/peer-protocol.md).

Used two ways: ``host-recover agent`` in the normal OS (systemd unit
host-recover-agent.service), and inside the boot payload, in a background thread, while
the payload asks its own peers (hosts that lose power together reboot together and must
find each other): ``with serve_in_background(cfg, attestor, status) as srv: ...``.

A request is answered only after the requester's quote verifies against the inventory
(else HTTP 403 with a JSON error). Bad JSON, wrong types, oversized bodies, slow clients
and too many connections get a clear JSON error; the server keeps serving. TPM use is
serialised by the attestor's lock and runs off the event loop. Every request pending when
the TPM becomes free is answered by ONE quote (v2 batches); a retry joins its pending
answer, a replay is answered from the nonce cache, a full queue says ``busy``. Answer
quotes are paced (:func:`next_quote_at`): the more this host quoted lately, the longer
the next batch gathers, so a domain's requests trickling in over a second or two cost a
few quotes, not one per quote time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recover.core.evidence import Evidence, since_reset
from recover.core.inventory import Inventory
from recover.core.merkle import MAX_LEAVES
from recover.core.protocol import (
    MAX_BODY,
    NONCE_SIZE,
    PATHS,
    RECEIPT_PATH,
    VERSION,
    VERSIONS,
    Batch,
    Quote,
    Rejected,
    canonical_json,
    check_peer_quote,
    receipt_tag,
    reply_qualifying_data,
    reply_signature,
    request_qualifying_data,
    status_hash,
)
from recover.errors import ConfigError, HostRecoverError
from recover.peers.attestor import Attestor
from recover.peers.http import read_http_message

if TYPE_CHECKING:
    import asyncio

    from recover.config import Config

log = logging.getLogger("recover.agent")


_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclasses.dataclass(frozen=True)
class StatusSource:
    """What this host says about itself; ``build`` adds the live clock fields."""

    host_id: str
    failure_domain: str
    role: str  # "boot" or "agent"
    evidence: Evidence
    boot_id: str = ""
    # The boot payload's: set when its own rounds have ended (it will not ask again).
    # Without one this host never asks (an agent, a simulated payload).
    decided: threading.Event | None = None

    def build(self, clock: dict[str, int]) -> dict[str, Any]:
        seconds, source = since_reset(clock)
        out = {
            "host_id": self.host_id,
            "boot_id": self.boot_id or boot_id(),
            "failure_domain": self.failure_domain,
            "role": self.role,
            "summary": str(self.evidence.summary),
            "orderly": self.evidence.orderly,
            "since_reset_s": round(seconds or 0.0, 3),
            "since_reset_source": source,
            "clock": {k: int(clock[k]) for k in ("clock", "reset_count", "restart_count")},
        }
        if self.role == "boot":
            out["asking"] = self.decided is not None and not self.decided.is_set()
        return out


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _error(code: str, message: str, version: int = VERSION, **extra: Any) -> dict[str, Any]:
    return {"version": version, "error": {"code": code, "message": message, **extra}}


@dataclasses.dataclass(frozen=True)
class Limits:
    """What the server accepts; everything over a limit is refused before any TPM work."""

    max_body: int = MAX_BODY
    read_timeout: float = 5.0  # whole request (headers + body)
    header_timeout: float = 2.0  # the request line and headers: idle connections go fast
    max_connections: int = 1024  # open at once, every source together
    max_per_source: int = 16  # open at once from one source address
    max_pending: int = 1024  # requests waiting for the TPM (the bounded work queue)
    max_pending_per_requester: int = 4  # distinct nonces of one requester waiting
    max_batch: int = MAX_LEAVES  # requests answered by one quote
    cache_size: int = 4096  # answered (requester, nonce) kept: replays and retries
    answer_timeout: float = 60.0  # a request waits this long for its batch's quote
    retry_after: float = 0.5  # what a busy server asks the client to wait (seconds)
    # Pacing of answer quotes (next_quote_at): the n-th answer quote of the last
    # ``pace_window`` seconds is followed by the next one no sooner than
    # min(pace * n**2, pace_cap) after its start. 0 turns pacing off.
    pace: float = 0.2
    pace_cap: float = 1.5  # never longer than a client's default per-attempt timeout
    pace_window: float = 10.0
    # False: the pre-v2 behaviour (one quote per request, no joining, no nonce cache, no
    # busy queue): bench/storm.py's "before".
    batching: bool = True


@dataclasses.dataclass(frozen=True)
class Request:
    """A request that passed every check that costs no TPM work."""

    version: int
    requester: str
    nonce: bytes
    quote: Quote


Answer = tuple[int, dict[str, Any]]


def next_quote_at(starts: list[float], now: float, limits: Limits) -> float:
    """When the next answer quote may start, given the start times of this host's
    earlier answer quotes (oldest first) and the time now (one monotonic clock).

    The n-th answer quote of the last ``pace_window`` seconds is followed by the next
    one no sooner than ``min(pace * n**2, pace_cap)`` after its start: a quiet host's
    first answer goes at once (a small domain, a peer booting late), a gap shorter than
    the TPM's own quote time costs nothing, and a host asked by a whole sample of a
    large domain gathers longer and longer batches. In one round of the 1000-host storm
    (docs/performance.md) this cuts a host's quotes from 11 to 5 at the most, for a
    longer tail of answer waits; a request waits at most ``pace_cap`` for its batch on
    top of the TPM's own time.
    """
    n = sum(1 for t in starts if t > now - limits.pace_window)
    if limits.pace <= 0 or n == 0:
        return now
    return max(now, starts[-1] + min(limits.pace * n * n, limits.pace_cap))


class Responder:
    """Answers requests: verify the requester, then quote our status.

    :meth:`handle` answers one body with its own quote (synchronous; the v1 way, also
    ``Limits(batching=False)``). :meth:`answer` is the batched path the server uses: a
    request joins the answer already pending for its (requester, nonce), is answered
    from the nonce cache when it was answered before, or waits for the next batch; one
    quote answers the whole batch (protocol v2; v1 requests in a batch get one quote
    each, their reply format has no room for a tree).
    """

    def __init__(
        self,
        inventory: Inventory,
        attestor: Attestor,
        status: StatusSource,
        limits: Limits = Limits(),
    ) -> None:
        self.inventory = inventory
        self.attestor = attestor
        self.status = status
        self.limits = limits
        self.quotes = 0  # TPM quotes made for replies
        self.batches = 0
        self.cache_hits = 0
        self.joined = 0
        self.busy = 0
        self.paced = 0  # batches that waited for the pace
        self._starts: list[float] = []  # start times of answer quotes (pace_window)
        self._sleep: Any = None  # the pace's wait, asyncio.sleep (a test holds it by an event)
        self._verified: OrderedDict[tuple[str, bytes, bytes], None] = OrderedDict()
        self._cache: OrderedDict[tuple[str, bytes, int], Answer] = OrderedDict()
        self._pending: dict[tuple[str, bytes, int], asyncio.Future[Answer]] = {}
        self._queue: list[tuple[Request, asyncio.Future[Answer]]] = []
        self._per_requester: dict[str, int] = {}
        self._worker: asyncio.Task[None] | None = None
        self._count = threading.Lock()

    # --- the cheap checks ---------------------------------------------------------------

    def parse(self, body: bytes, version: int | None = None) -> Request | Answer:
        """Everything that can be refused without the TPM (the requester's quote is an
        ECDSA verification, cached per requester and nonce); a Request or an answer."""
        from recover.peers.client import loads_bounded

        try:
            req = loads_bounded(body)
        except (ValueError, UnicodeDecodeError):
            return 400, _error("malformed", "request body is not JSON")
        if not isinstance(req, dict):
            return 400, _error("malformed", "request must be a JSON object")
        got = req.get("version")
        if isinstance(got, bool) or got not in VERSIONS or version not in (None, got):
            want = f"{version} on {PATHS[version]}" if version else "1 or 2"
            return 400, _error("version", f"unsupported version {got!r} (want {want})")
        v = int(got)
        requester, nonce_hex = req.get("requester"), req.get("nonce")
        if not isinstance(requester, str) or not isinstance(nonce_hex, str):
            return 400, _error("malformed", "requester and nonce must be strings", v)
        try:
            nonce = bytes.fromhex(nonce_hex)
        except ValueError:
            nonce = b""
        if len(nonce) != NONCE_SIZE:
            return 400, _error("malformed", f"nonce must be {NONCE_SIZE} bytes of hex", v)
        peer = self.inventory.get(requester)
        if peer is None:
            return 403, _error("unknown-requester", f"requester {requester!r} not in inventory", v)
        try:
            quote = Quote.from_json(req.get("quote"), req.get("pcrs"))
        except Rejected as e:
            return 400, _error("malformed", e.reason, v)
        seen = (requester, nonce, hashlib.sha256(quote.attest + quote.signature).digest())
        if seen not in self._verified:
            try:
                check_peer_quote(peer, quote, request_qualifying_data(nonce, requester))
            except Rejected as e:
                log.warning("refused %s: %s: %s", requester, e.outcome, e.reason)
                return 403, _error(str(e.outcome), f"requester {requester!r}: {e.reason}", v)
            self._remember(self._verified, seen, None)
        return Request(v, requester, nonce, quote)

    def _remember(self, cache: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        with self._count:
            cache[key] = value
            cache.move_to_end(key)
            while len(cache) > self.limits.cache_size:
                cache.popitem(last=False)

    def receipt(self, body: bytes) -> tuple[int, dict[str, Any], str | None]:
        """A requester's receipt for an answer of ours (docs/peer-protocol.md,
        "Receipts"): (HTTP code, reply, the requester when it counts). It counts only
        for a request this host answered and still has in its answer cache, with the tag
        of that very answer; no TPM work, no signature check (the tag is the secret)."""
        import hmac

        from recover.peers.client import loads_bounded

        try:
            obj = loads_bounded(body)
        except (ValueError, UnicodeDecodeError):
            return 400, _error("malformed", "receipt body is not JSON"), None
        if not isinstance(obj, dict) or obj.get("version") != 2:
            return 400, _error("malformed", "a receipt is a version 2 JSON object"), None
        requester, nonce_hex, tag_hex = obj.get("requester"), obj.get("nonce"), obj.get("tag")
        if not all(isinstance(x, str) for x in (requester, nonce_hex, tag_hex)):
            return 400, _error("malformed", "requester, nonce and tag must be strings"), None
        assert isinstance(requester, str) and isinstance(nonce_hex, str)
        assert isinstance(tag_hex, str)
        try:
            nonce, tag = bytes.fromhex(nonce_hex), bytes.fromhex(tag_hex)
        except ValueError:
            return 400, _error("malformed", "nonce and tag must be hex"), None
        answered = self._cache.get((requester, nonce, 2))
        if answered is None:
            return 404, _error("unknown", "no answer of this host to that request"), None
        try:
            expected = receipt_tag(requester, nonce, reply_signature(answered[1]))
        except Rejected:  # pragma: no cover - a cached answer always carries its quote
            return 404, _error("unknown", "no answer of this host to that request"), None
        if not hmac.compare_digest(tag, expected):
            log.warning("refused a receipt for %s: the tag does not match our answer", requester)
            return 403, _error("mismatch", "the tag does not match this host's answer"), None
        return 200, {"version": 2, "received": True}, requester

    # --- the TPM work -------------------------------------------------------------------

    def quote_batch(self, batch: list[Request]) -> list[Answer]:
        """One status and, for the v2 requests, ONE quote over their tree (each v1
        request gets its own quote); a reply per request, in order."""
        from recover.core.inventory import pcrs_to_json
        from recover.core.merkle import batch_qualifying_data, leaf_data, leaf_hash, tree

        try:
            status = self.status.build(self.attestor.clock())
            out: list[Answer | None] = [None] * len(batch)
            v2 = [i for i, r in enumerate(batch) if r.version == 2]
            if v2:
                digest = status_hash(status)
                leaves = [
                    leaf_hash(leaf_data(batch[i].requester, batch[i].nonce, digest)) for i in v2
                ]
                root, paths = tree(leaves)
                mine = self._quote(batch_qualifying_data(root, len(v2)))
                for k, i in enumerate(v2):
                    out[i] = (
                        200,
                        {
                            "version": 2,
                            "nonce": batch[i].nonce.hex(),
                            "status": status,
                            "batch": Batch(len(v2), k, tuple(paths[k])).to_json(),
                            "quote": mine.to_json(),
                            "pcrs": pcrs_to_json(mine.pcrs),
                        },
                    )
            for i, r in enumerate(batch):
                if r.version == 1:
                    mine = self._quote(reply_qualifying_data(status, r.nonce))
                    out[i] = (
                        200,
                        {
                            "version": 1,
                            "nonce": r.nonce.hex(),
                            "status": status,
                            "quote": mine.to_json(),
                            "pcrs": pcrs_to_json(mine.pcrs),
                        },
                    )
        except HostRecoverError as e:
            log.error("cannot quote: %s", e.message)
            return [(503, _error("tpm", f"cannot quote: {e.message}", r.version)) for r in batch]
        with self._count:
            self.batches += 1
        return [a for a in out if a is not None]

    def _quote(self, qualifying_data: bytes) -> Quote:
        quote = self.attestor.quote(qualifying_data, with_lock=True)
        with self._count:
            self.quotes += 1
        return quote

    def handle(self, body: bytes, version: int | None = None) -> Answer:
        """Answer one request body with its own quote (no batching, no cache)."""
        req = self.parse(body, version)
        if not isinstance(req, Request):
            return req
        return self.quote_batch([req])[0]

    # --- the batched path ---------------------------------------------------------------

    async def answer(self, body: bytes, version: int) -> Answer:
        """Answer one request body on the server's event loop (see the class doc)."""
        import asyncio

        if not self.limits.batching:
            return await self._run(self.handle, body, version)
        req = self.parse(body, version)
        if not isinstance(req, Request):
            return req
        key = (req.requester, req.nonce, req.version)
        cached = self._cache.get(key)
        if cached is not None:
            self.cache_hits += 1
            return cached
        fut = self._pending.get(key)
        if fut is not None:
            self.joined += 1
        else:
            waiting = self._per_requester.get(req.requester, 0)
            if (
                len(self._queue) >= self.limits.max_pending
                or waiting >= self.limits.max_pending_per_requester
            ):
                self.busy += 1
                return 503, _error(
                    "busy",
                    f"{len(self._queue)} requests wait for this host's TPM, retry later",
                    req.version,
                    retry_after=self.limits.retry_after,
                )
            fut = asyncio.get_running_loop().create_future()
            self._pending[key] = fut
            self._per_requester[req.requester] = waiting + 1
            self._queue.append((req, fut))
            if self._worker is None or self._worker.done():
                self._worker = asyncio.ensure_future(self._work())
        try:
            async with asyncio.timeout(self.limits.answer_timeout):
                return await asyncio.shield(fut)
        except TimeoutError:
            return 503, _error("tpm", "the TPM did not answer in time", req.version)

    async def _run(self, fn: Any, *args: Any) -> Any:
        import asyncio

        if self.attestor.inline:
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    async def _work(self) -> None:
        """Drain the queue: every request pending when the TPM becomes free and the pace
        allows (:func:`next_quote_at`) is one batch."""
        import asyncio

        loop = asyncio.get_running_loop()
        while self._queue:
            now = loop.time()
            at = next_quote_at(self._starts, now, self.limits)
            if at > now:
                self.paced += 1
                await (self._sleep or asyncio.sleep)(at - now)
            now = loop.time()
            self._starts = [t for t in self._starts if t > now - self.limits.pace_window]
            self._starts.append(now)
            n = self.limits.max_batch
            batch, self._queue = self._queue[:n], self._queue[n:]
            try:
                answers = await self._run(self.quote_batch, [r for r, _ in batch])
            except Exception as e:  # noqa: BLE001 - a bug must not leave requests hanging
                log.exception("internal error answering a batch")
                answers = [(500, _error("internal", f"{type(e).__name__}: {e}"))] * len(batch)
            for (req, fut), ans in zip(batch, answers, strict=True):
                key = (req.requester, req.nonce, req.version)
                self._pending.pop(key, None)
                left = self._per_requester.get(req.requester, 1) - 1
                if left:
                    self._per_requester[req.requester] = left
                else:
                    self._per_requester.pop(req.requester, None)
                if ans[0] == 200:
                    self._remember(self._cache, key, ans)
                if not fut.done():
                    fut.set_result(ans)


class Server:
    """An asyncio HTTP/1.1 server for one Responder (one request per connection)."""

    def __init__(self, responder: Responder, limits: Limits | None = None) -> None:
        self.responder = responder
        self.limits = limits or responder.limits
        responder.limits = self.limits
        self.active = 0
        self.by_source: dict[str, int] = {}
        self.served = 0
        # requester -> time.monotonic() of its latest answered request (its keys: the
        # requesters that got a status); a requester that asks again did not receive an
        # answer (recover.boot.gather.answer_wait)
        self.last_answer: dict[str, float] = {}
        # requester -> time.monotonic() of its latest receipt: it has verified an answer
        # of ours and will not ask again (docs/peer-protocol.md, "Receipts")
        self.receipts: dict[str, float] = {}
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> Server:
        import asyncio

        self.server = await asyncio.start_server(
            self._connection, host, port, limit=self.limits.max_body, backlog=1024
        )
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Answer:
        import asyncio

        try:
            async with asyncio.timeout(self.limits.read_timeout):
                _, start, body = await read_http_message(
                    reader,
                    response=False,
                    writer=writer,
                    header_timeout=self.limits.header_timeout,
                )
        except TimeoutError:
            return 408, _error(
                "timeout",
                f"request not received in time (headers within {self.limits.header_timeout:g}"
                f" s, whole request within {self.limits.read_timeout:g} s)",
            )
        except Rejected as e:
            return e.http_status, _error("malformed", e.reason)
        method, path = start.split(" ")[:2]
        if method == "POST" and path == RECEIPT_PATH:
            code, reply, requester = self.responder.receipt(body)
            if requester is not None:
                self.receipts[requester] = time.monotonic()
            return code, reply
        version = next((v for v, p in PATHS.items() if p == path), None)
        if method != "POST" or version is None:
            return 404, _error("not-found", f"only POST {' or '.join(PATHS.values())}")
        code, reply = await self.responder.answer(body, version)
        if code == 200:
            self.last_answer[json.loads(body)["requester"]] = time.monotonic()
        return code, reply

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        try:
            if self.active >= self.limits.max_connections:
                code, obj = (
                    503,
                    _error(
                        "busy",
                        "too many connections, retry later",
                        retry_after=self.limits.retry_after,
                    ),
                )
            elif self.by_source.get(source, 0) >= self.limits.max_per_source:
                code, obj = (
                    503,
                    _error(
                        "busy",
                        f"too many connections from {source}, retry later",
                        retry_after=self.limits.retry_after,
                    ),
                )
            else:
                self.active += 1
                self.by_source[source] = self.by_source.get(source, 0) + 1
                try:
                    code, obj = await self._handle(reader, writer)
                except (ConnectionError, OSError):
                    raise
                except Exception as e:  # noqa: BLE001 - a bug must not stop the server
                    log.exception("internal error answering a peer")
                    code, obj = 500, _error("internal", f"{type(e).__name__}: {e}")
                finally:
                    self.active -= 1
                    left = self.by_source[source] - 1
                    if left:
                        self.by_source[source] = left
                    else:
                        del self.by_source[source]
            self.served += 1
            body = canonical_json(obj)
            extra = ""
            if code == 503 and "retry_after" in obj.get("error", {}):
                extra = f"Retry-After: {max(1, math.ceil(obj['error']['retry_after']))}\r\n"
            writer.write(
                f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"peers.listen {text!r} is not host:port", hint="e.g. 0.0.0.0:7469")
    return host or "0.0.0.0", int(port)


@contextlib.contextmanager
def serve_in_background(
    cfg: Config,
    attestor: Attestor,
    status: StatusSource,
    inventory: Inventory | None = None,
    listen: str | None = None,
    limits: Limits = Limits(),
) -> Iterator[Server]:
    """Run the status server in a thread with its own event loop while the body runs."""
    import asyncio

    from recover.store import inventory as inventory_store

    inventory = inventory if inventory is not None else inventory_store.load(cfg)
    host, port = parse_listen(listen or cfg.peers_listen)
    srv = Server(Responder(inventory, attestor, status), limits)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(srv.start(host, port))
        except OSError as e:
            failure.append(e)
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(srv.close())
        # Wait for TPM work still running in executor threads: when this returns, the
        # caller owns the TPM again.
        loop.run_until_complete(loop.shutdown_default_executor())

    thread = threading.Thread(target=run, name="host-recover-agent", daemon=True)
    thread.start()
    ready.wait(10)
    if failure:
        thread.join(5)
        loop.close()
        e = failure[0]
        raise ConfigError(f"cannot listen on {host}:{port}: {e}", hint="set peers.listen") from None
    log.info("answering peers on %s:%d", host, srv.port)
    try:
        yield srv
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(120)  # a real TPM may take seconds per command
        if thread.is_alive():
            log.error("the status server did not stop within 120 s")
        else:
            loop.close()


def serve_forever(srv: Server, host: str, port: int, on_ready: Any = None) -> None:
    """Serve until SIGTERM or SIGINT (``host-recover agent``)."""
    import asyncio
    import signal

    async def serve() -> None:
        await srv.start(host, port)
        if on_ready is not None:
            on_ready(srv)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await srv.close()

    asyncio.run(serve())
