"""The witness on etcd (docs/witness.md): etcd v3's JSON gateway over plain asyncio
streams (no new dependency in the initramfs), the agent's heartbeat, and the boot
payload's one range read of its domain.

Records and checks are pure (recover.core.witness); this module only moves bytes.
Every request is bounded: a timeout per request, a deadline per read, a cap on the
response size, endpoints tried in order at most once per call.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from recover.core import witness as core
from recover.core.inventory import parse_address

if TYPE_CHECKING:
    import asyncio

    from recover.config import Config
    from recover.core.inventory import Inventory, Peer
    from recover.peers.attestor import Attestor

log = logging.getLogger("recover.witness")


MAX_RESPONSE = 256 * 1024 * 1024  # a 10,000-host domain's range is ~30 MB of JSON
MAX_HEAD = 64 * 1024


class WitnessUnavailable(Exception):
    """No endpoint answered (or answered an error): the witness says nothing."""


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range_end for "every key starting with ``prefix``"."""
    p = bytearray(prefix)
    while p:
        if p[-1] < 0xFF:
            p[-1] += 1
            return bytes(p)
        p.pop()
    return b"\x00"


async def _read_body(reader: asyncio.StreamReader, head: list[str], limit: int) -> bytes:
    length = None
    chunked = False
    for line in head[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            if not value.isdigit():
                raise WitnessUnavailable("bad Content-Length")
            length = int(value)
        elif name == "transfer-encoding":
            if value != "chunked":
                raise WitnessUnavailable(f"Transfer-Encoding {value!r} is not supported")
            chunked = True
    if not chunked:
        if length is None:
            return await reader.read(limit + 1)  # HTTP/1.0 style: until close
        if length > limit:
            raise WitnessUnavailable(f"response of {length} bytes exceeds {limit}")
        return await reader.readexactly(length)
    parts: list[bytes] = []
    total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size_text = size_line.split(b";", 1)[0].strip()
        if not size_text or len(size_text) > 16:
            raise WitnessUnavailable("bad chunk size")
        size = int(size_text, 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        total += size
        if total > limit:
            raise WitnessUnavailable(f"response exceeds {limit} bytes")
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise WitnessUnavailable("bad chunk framing")


async def post_json(
    host: str, port: int, path: str, obj: Any, timeout: float, limit: int = MAX_RESPONSE
) -> tuple[int, Any]:
    """POST a JSON object (HTTP/1.1, Connection: close); return (status, parsed body)."""
    import asyncio

    body = json.dumps(obj, separators=(",", ":")).encode()

    async def run() -> tuple[int, Any]:
        reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEAD)
        try:
            hosthdr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: {hosthdr}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            try:
                raw_head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.LimitOverrunError, asyncio.IncompleteReadError):
                raise WitnessUnavailable("no HTTP response head") from None
            head = raw_head.decode("latin-1").split("\r\n")
            parts = head[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise WitnessUnavailable("not an HTTP/1.x response")
            try:
                data = await _read_body(reader, head, limit)
            except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, ValueError):
                raise WitnessUnavailable("truncated or malformed HTTP body") from None
            try:
                return int(parts[1]), json.loads(data) if data else {}
            except (ValueError, RecursionError):
                raise WitnessUnavailable(f"HTTP {parts[1]}: body is not JSON") from None
        finally:
            writer.close()

    return await asyncio.wait_for(run(), timeout)


class EtcdClient:
    """The few etcd v3 calls the witness needs, over the JSON gateway."""

    def __init__(self, endpoints: str, timeout: float = 2.0) -> None:
        self.endpoints = [
            parse_address(e.strip(), "witness.endpoints") for e in endpoints.split(",") if e.strip()
        ]
        if not self.endpoints:
            raise WitnessUnavailable("witness.endpoints is empty")
        self.timeout = timeout
        self.current = 0  # the endpoint that answered last
        self.bytes_sent = 0

    async def call(self, path: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        errors: list[str] = []
        n = len(self.endpoints)
        for i in range(n):
            host, port = self.endpoints[(self.current + i) % n]
            try:
                code, reply = await post_json(host, port, path, obj, self.timeout)
            except TimeoutError:
                errors.append(f"{host}:{port}: no answer within {self.timeout:g} s")
                continue
            except OSError as e:
                errors.append(f"{host}:{port}: {e.strerror or e}")
                continue
            except WitnessUnavailable as e:
                errors.append(f"{host}:{port}: {e}")
                continue
            if code != 200 or not isinstance(reply, dict):
                msg = reply.get("error") or reply.get("message") if isinstance(reply, dict) else ""
                errors.append(f"{host}:{port}: HTTP {code}: {msg or 'no reason given'}")
                continue
            self.current = (self.current + i) % n
            return reply
        raise WitnessUnavailable("; ".join(errors))

    @staticmethod
    def _revision(reply: Mapping[str, Any]) -> int:
        try:
            return int(reply["header"]["revision"])
        except (KeyError, TypeError, ValueError):
            raise WitnessUnavailable("reply without a header revision") from None

    async def revision(self, key: str) -> int:
        reply = await self.call("/v3/kv/range", {"key": _b64(key), "count_only": True})
        return self._revision(reply)

    async def range_prefix(self, prefix: str) -> tuple[dict[str, tuple[bytes, int]], int]:
        """Every key under ``prefix`` in ONE range request: key → (value, mod_revision)."""
        p = prefix.encode()
        reply = await self.call("/v3/kv/range", {"key": _b64(p), "range_end": _b64(prefix_end(p))})
        out: dict[str, tuple[bytes, int]] = {}
        for kv in reply.get("kvs") or ():
            try:
                key = base64.b64decode(kv["key"]).decode()
                value = base64.b64decode(kv.get("value", ""))
                out[key] = (value, int(kv["mod_revision"]))
            except (KeyError, TypeError, ValueError):
                continue  # a key this reader cannot decode is not one of ours
        return out, self._revision(reply)

    async def put(self, key: str, value: bytes, lease: str | None = None) -> int:
        obj: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            obj["lease"] = lease
        self.bytes_sent += len(value)
        return self._revision(await self.call("/v3/kv/put", obj))

    async def grant(self, ttl: int) -> str:
        reply = await self.call("/v3/lease/grant", {"TTL": str(ttl)})
        lease = reply.get("ID")
        if not lease or reply.get("error"):
            raise WitnessUnavailable(f"lease not granted: {reply.get('error')}")
        return str(lease)

    async def keepalive(self, lease: str) -> int:
        """Refresh ``lease``; its new TTL, 0 when it has expired (etcd forgot it)."""
        reply = await self.call("/v3/lease/keepalive", {"ID": lease})
        result = reply.get("result", reply)
        try:
            return int(result.get("TTL", 0))
        except (TypeError, ValueError, AttributeError):
            return 0


# --- the boot payload's read ------------------------------------------------------------


def read_prefix(
    endpoints: str, prefix: str, timeout: float
) -> tuple[dict[str, tuple[bytes, int]], int]:
    """Every key under ``prefix`` (one range request) and the store's revision, within
    ``timeout`` seconds; raises WitnessUnavailable."""
    import asyncio

    client = EtcdClient(endpoints, timeout=timeout)
    try:
        return asyncio.run(asyncio.wait_for(client.range_prefix(prefix), timeout))
    except TimeoutError:
        raise WitnessUnavailable(f"no answer within {timeout:g} s") from None


def self_entry(
    inventory: Inventory, me: str, own_ak: bytes | None, own_pcrs: Any
) -> tuple[Peer | None, str]:
    """How this host's own heartbeat is verified, and its failure domain.

    Its inventory entry when it has one. A host is often not in its own baked inventory
    (its entry's PCRs would have to include the initramfs that contains it): then its own
    AK and the PCRs it reads now (the same measured boot chain its normal OS ran, unless
    it changed) stand in, and its domain is the one domain its inventory lists."""
    from recover.core.inventory import Peer

    entry = inventory.get(me)
    if entry is not None:
        return entry, entry.failure_domain
    domains = {p.failure_domain for p in inventory}
    if len(domains) != 1:
        raise WitnessUnavailable(
            f"this host ({me}) is not in its inventory, which lists {len(domains)} failure "
            "domains: its own is unknown"
        )
    domain = domains.pop()
    if own_ak is None or not own_pcrs:
        return None, domain
    return Peer(me, "0.0.0.0", 0, domain, own_ak, own_pcrs), domain


def read_domain(
    cfg: Config,
    inventory: Inventory,
    me: str,
    own_ak: bytes | None = None,
    own_pcrs: Any = None,
    previous_boot: str | None = None,
) -> core.View:
    """The witness's view of this host's domain, within ``witness.deadline``; never
    raises: an unreachable or broken witness is a view with ``error`` (nothing known).
    ``own_ak``/``own_pcrs``: this host's AK (PEM) and current ``tpm.pcrs`` values, to
    verify its own last heartbeat when the inventory does not list it; ``previous_boot``:
    the id prefix of the boot that went down (its TPM decision record), which this host's
    last heartbeat must come from."""
    t0 = time.monotonic()
    try:
        entry, domain = self_entry(inventory, me, own_ak, own_pcrs)
    except WitnessUnavailable as e:
        return core.unavailable(str(e))
    try:
        prefix = core.domain_prefix(cfg.witness_prefix, domain)
        kvs, revision = read_prefix(cfg.witness_endpoints, prefix, cfg.witness_deadline)
    except (WitnessUnavailable, ValueError) as e:
        return core.unavailable(str(e), (time.monotonic() - t0) * 1000)
    v = core.view(
        me,
        inventory.domain_peers(me),
        entry,
        kvs,
        cfg.witness_prefix,
        domain,
        float(cfg.verdict_window),
        revision,
        previous_boot,
    )
    return dataclasses.replace(v, elapsed_ms=(time.monotonic() - t0) * 1000)


# --- the agent's heartbeat --------------------------------------------------------------


StatusFn = Callable[[dict[str, int]], dict[str, Any]]  # clock → the status fields of now


class Heartbeat:
    """The agent's heartbeat loop: lease + alive key, then every interval: read the
    revision, quote the status over it, write the record, refresh the lease."""

    def __init__(
        self,
        client: EtcdClient,
        attestor: Attestor,
        host_id: str,
        domain: str,
        prefix: str,
        interval: float,
        ttl_intervals: int,
        status: StatusFn,
    ) -> None:
        self.client, self.attestor = client, attestor
        self.host_id, self.domain = host_id, domain
        self.key = core.heartbeat_key(prefix, domain, host_id)
        self.alive = core.alive_key(prefix, domain, host_id)
        self.interval = interval
        self.ttl = max(2, int(round(interval * ttl_intervals)))
        self.status = status
        self.lease: str | None = None
        self.prev_rev = 0
        self.seq = 0
        self.beats = 0  # heartbeats written
        self.failures = 0

    async def beat(self) -> int | None:
        """One heartbeat; returns its write's revision (None: the first call, which only
        takes the lease: a record's span is measured from a previous revision)."""
        import asyncio

        if self.lease is None or await self.client.keepalive(self.lease) <= 0:
            self.lease = await self.client.grant(self.ttl)
            rev = await self.client.put(self.alive, self.host_id.encode(), lease=self.lease)
            if self.prev_rev == 0:
                self.prev_rev = rev
                return None
        rev_read = await self.client.revision(self.key)
        self.seq += 1
        clock = await asyncio.to_thread(self.attestor.clock)
        status = {
            **self.status(clock),
            "version": core.VERSION,
            "host_id": self.host_id,
            "failure_domain": self.domain,
            "seq": self.seq,
            "rev_read": rev_read,
            "prev_rev": self.prev_rev,
            "interval_s": self.interval,
        }
        quote = await asyncio.to_thread(self.attestor.quote, core.qualifying_data(status))
        rev = await self.client.put(self.key, core.make_record(status, quote))
        # The next record's span runs from this read: a whole beat (read, quote, write,
        # wait), however slow the quote, so the reader's replay bound holds.
        self.prev_rev = rev_read
        self.beats += 1
        return rev

    async def run(self, stop: asyncio.Event) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        while not stop.is_set():
            t0 = loop.time()
            try:
                await self.beat()
                if self.failures:
                    log.info("witness: heartbeat restored after %d failures", self.failures)
                self.failures = 0
            except Exception as e:  # noqa: BLE001 - etcd or the TPM failing never stops the agent
                self.failures += 1
                if self.failures == 1 or self.failures % 20 == 0:
                    log.warning("witness: heartbeat failed (%d): %s", self.failures, e)
            wait = max(0.05, self.interval - (loop.time() - t0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)


@contextlib.contextmanager
def heartbeat_in_background(hb: Heartbeat) -> Iterator[Heartbeat]:
    """Run ``hb`` in a thread with its own event loop while the body runs."""
    import asyncio

    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(hb.run(stop))
        loop.run_until_complete(loop.shutdown_default_executor())

    thread = threading.Thread(target=run, name="host-recover-witness", daemon=True)
    thread.start()
    try:
        yield hb
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(max(30.0, hb.interval))
        if not thread.is_alive():
            loop.close()


def decision_summary(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The part of a decision record (recover.boot.record) that leaves the host."""
    if not isinstance(record, dict):
        return None
    verdict = record.get("verdict")
    if not isinstance(verdict, dict):
        verdict = {}
    reasons = [str(r)[:300] for r in (verdict.get("reasons") or [])][:12]
    return {
        "boot_id": str(record.get("boot_id", ""))[:64],
        "time": record.get("time") if isinstance(record.get("time"), (int, float)) else None,
        "action": str(record.get("action", ""))[:32],
        "kind": verdict.get("kind"),
        "exit_code": record.get("exit_code") if isinstance(record.get("exit_code"), int) else None,
        "error": (str(record["error"])[:300] if record.get("error") else None),
        "reasons": reasons,
    }
