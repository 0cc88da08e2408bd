"""Minimal HTTP/1.1 framing for the peer protocol over asyncio streams: bounded header
and body sizes, a deadline on every read. Shared by the client and the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from recover.core.protocol import MAX_BODY, PATH, Outcome, Rejected

if TYPE_CHECKING:
    import asyncio


async def http_post(
    host: str,
    port: int,
    body: bytes,
    timeout: float,
    path: str = PATH,
    source: str | None = None,
) -> tuple[int, bytes]:
    """POST ``body`` (HTTP/1.1, Connection: close); return (status, response body).
    ``source``: the local address to connect from (a host with several)."""
    import asyncio

    async def run() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(
            host, port, limit=MAX_BODY, local_addr=(source, 0) if source else None
        )
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

    async with asyncio.timeout(timeout):  # no extra task per request (unlike wait_for)
        return await run()


async def read_http_message(
    reader: asyncio.StreamReader,
    *,
    response: bool,
    writer: asyncio.StreamWriter | None = None,
    header_timeout: float | None = None,
) -> tuple[int, str, bytes]:
    """Read one HTTP/1.1 message; return (status code or 0 for a request, start line, body).

    A server passes its ``writer`` to answer ``Expect: 100-continue`` (curl sends it),
    and a ``header_timeout`` (TimeoutError): a connection that sends no headers is let go
    soon. Raises Rejected(MALFORMED) on bad framing and a body over MAX_BODY.
    """
    import asyncio

    try:
        async with asyncio.timeout(header_timeout):
            head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise Rejected(Outcome.MALFORMED, "headers too large", 431) from None
    except asyncio.IncompleteReadError as e:
        if response and not e.partial:  # not a word: nobody there (e.g. behind a NAT/proxy)
            raise ConnectionResetError("connection closed without a reply") from None
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
