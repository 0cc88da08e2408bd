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

    def quote(self, qualifying_data: bytes, with_lock: bool = False) -> Quote:
        """A quote over the policy PCRs; ``with_lock``: plus the lock PCR (replies:
        it attests the role, docs/peer-protocol.md)."""
        ...


class TpmAttestor:
    """Quotes with the TPM's AK; one TPM command at a time (``lock``)."""

    inline = False

    def __init__(
        self,
        tpm: Tpm,
        ak_handle: int,
        selection: str,
        lock: Any = None,
        lock_pcr: int | None = None,
    ) -> None:
        import threading

        from recover.core.pcrsel import format_selection
        from recover.core.policy import policy_selection

        self.tpm = tpm
        self.ak_handle = ak_handle
        self.selection = selection
        self.lock = lock or threading.Lock()
        # The reply's selection: the policy PCRs + the lock PCR in the first bank, the set
        # the sealed object's policy covers.
        self.reply_selection = (
            format_selection(policy_selection(selection, lock_pcr))
            if lock_pcr is not None
            else selection
        )

    def clock(self) -> dict[str, int]:
        from recover.core.evidence import clock_fields

        with self.lock:
            return clock_fields(self.tpm.clock())

    def quote(self, qualifying_data: bytes, with_lock: bool = False) -> Quote:
        selection = self.reply_selection if with_lock else self.selection
        with self.lock:
            attest, sig = self.tpm.quote(self.ak_handle, qualifying_data, selection)
            pcrs = self.tpm.pcr_read(selection)
        return Quote(bytes(attest), bytes(sig), pcrs)
