"""The peer protocol over the network: HTTP framing, the client (fan-out), the server,
the attestor. The only importer of asyncio."""
