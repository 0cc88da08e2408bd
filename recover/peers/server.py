"""The status server (peer protocol v1, docs/peer-protocol.md).

Used two ways: ``host-recover agent`` in the normal OS (systemd unit
host-recover-agent.service), and inside the boot payload, in a background thread, while
the payload asks its own peers (hosts that lose power together reboot together and must
find each other): ``with serve_in_background(cfg, attestor, status) as srv: ...``.

A request is answered only after the requester's quote verifies against the inventory
(else HTTP 403 with a JSON error). Bad JSON, wrong types, oversized bodies, slow clients
and too many connections get a clear JSON error; the server keeps serving. TPM use is
serialised by the attestor's lock and runs off the event loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recover.core.evidence import Evidence, since_reset
from recover.core.inventory import Inventory
from recover.core.protocol import (
    MAX_BODY,
    NONCE_SIZE,
    PATH,
    VERSION,
    Quote,
    Rejected,
    canonical_json,
    check_peer_quote,
    reply_qualifying_data,
    request_qualifying_data,
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

    def build(self, clock: dict[str, int]) -> dict[str, Any]:
        seconds, source = since_reset(clock)
        return {
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


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _error(code: str, message: str) -> dict[str, Any]:
    return {"version": VERSION, "error": {"code": code, "message": message}}


@dataclasses.dataclass(frozen=True)
class Limits:
    max_body: int = MAX_BODY
    read_timeout: float = 5.0  # whole request (headers + body)
    max_connections: int = 256


class Responder:
    """Answers one request body: verify the requester, then quote our status."""

    def __init__(self, inventory: Inventory, attestor: Attestor, status: StatusSource) -> None:
        self.inventory = inventory
        self.attestor = attestor
        self.status = status

    def handle(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            req = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return 400, _error("malformed", "request body is not JSON")
        if not isinstance(req, dict):
            return 400, _error("malformed", "request must be a JSON object")
        if req.get("version") != VERSION:
            return 400, _error("version", f"unsupported version {req.get('version')!r}")
        requester, nonce_hex = req.get("requester"), req.get("nonce")
        if not isinstance(requester, str) or not isinstance(nonce_hex, str):
            return 400, _error("malformed", "requester and nonce must be strings")
        try:
            nonce = bytes.fromhex(nonce_hex)
        except ValueError:
            nonce = b""
        if len(nonce) != NONCE_SIZE:
            return 400, _error("malformed", f"nonce must be {NONCE_SIZE} bytes of hex")
        peer = self.inventory.get(requester)
        if peer is None:
            return 403, _error("unknown-requester", f"requester {requester!r} not in inventory")
        try:
            quote = Quote.from_json(req.get("quote"), req.get("pcrs"))
        except Rejected as e:
            return 400, _error("malformed", e.reason)
        try:
            check_peer_quote(peer, quote, request_qualifying_data(nonce, requester))
        except Rejected as e:
            log.warning("refused %s: %s: %s", requester, e.outcome, e.reason)
            return 403, _error(str(e.outcome), f"requester {requester!r}: {e.reason}")
        try:
            status = self.status.build(self.attestor.clock())
            mine = self.attestor.quote(reply_qualifying_data(status, nonce), with_lock=True)
        except HostRecoverError as e:
            log.error("cannot quote: %s", e.message)
            return 503, _error("tpm", f"cannot quote: {e.message}")
        from recover.core.inventory import pcrs_to_json

        return 200, {
            "version": VERSION,
            "nonce": nonce_hex.lower(),
            "status": status,
            "quote": mine.to_json(),
            "pcrs": pcrs_to_json(mine.pcrs),
        }


class Server:
    """An asyncio HTTP/1.1 server for one Responder (one request per connection)."""

    def __init__(self, responder: Responder, limits: Limits = Limits()) -> None:
        self.responder = responder
        self.limits = limits
        self.active = 0
        self.served = 0
        self.answered: set[str] = set()  # requesters that got a status
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

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[int, dict[str, Any]]:
        import asyncio

        try:
            _, start, body = await asyncio.wait_for(
                read_http_message(reader, response=False, writer=writer), self.limits.read_timeout
            )
        except TimeoutError:
            return 408, _error(
                "timeout", f"request not received within {self.limits.read_timeout:g} s"
            )
        except Rejected as e:
            return e.http_status, _error("malformed", e.reason)
        method, path = start.split(" ")[:2]
        if method != "POST" or path != PATH:
            return 404, _error("not-found", f"only POST {PATH}")
        if self.responder.attestor.inline:
            code, reply = self.responder.handle(body)
        else:
            code, reply = await asyncio.to_thread(self.responder.handle, body)
        if code == 200:
            self.answered.add(json.loads(body)["requester"])
        return code, reply

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.active >= self.limits.max_connections:
                code, obj = 503, _error("busy", "too many connections, retry later")
            else:
                self.active += 1
                try:
                    code, obj = await self._handle(reader, writer)
                except (ConnectionError, OSError):
                    raise
                except Exception as e:  # noqa: BLE001 - a bug must not stop the server
                    log.exception("internal error answering a peer")
                    code, obj = 500, _error("internal", f"{type(e).__name__}: {e}")
                finally:
                    self.active -= 1
            self.served += 1
            body = canonical_json(obj)
            writer.write(
                f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
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
