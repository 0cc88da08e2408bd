"""Attestors: "produce my quote" for the peer protocol (the TPM's AK, one command at a
time), used by both the client (the request's quote) and the server (each reply's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from recover.core.protocol import Quote

if TYPE_CHECKING:
    from recover.tpm import Tpm


class Attestor(Protocol):
    inline: bool  # True: cheap and thread-safe, may run on the event loop

    def clock(self) -> dict[str, int]: ...

    def quote(self, qualifying_data: bytes) -> Quote: ...


class TpmAttestor:
    """Quotes with the TPM's AK; one TPM command at a time (``lock``)."""

    inline = False

    def __init__(self, tpm: Tpm, ak_handle: int, selection: str, lock: Any = None) -> None:
        import threading

        self.tpm = tpm
        self.ak_handle = ak_handle
        self.selection = selection
        self.lock = lock or threading.Lock()

    def clock(self) -> dict[str, int]:
        from recover.core.evidence import clock_fields

        with self.lock:
            return clock_fields(self.tpm.clock())

    def quote(self, qualifying_data: bytes) -> Quote:
        with self.lock:
            attest, sig = self.tpm.quote(self.ak_handle, qualifying_data, self.selection)
            pcrs = self.tpm.pcr_read(self.selection)
        return Quote(bytes(attest), bytes(sig), pcrs)
