"""NV indices: monotonic counters (plain and orderly/hybrid) and the decision-record blob.

All indices are NODA with an empty authValue: a power cut never counts as a failed
authorization, so it cannot lock the host out. Reads are open (AUTHREAD|OWNERREAD). The
policy counter is written with the owner auth only (OWNERWRITE, docs/tpm.md "NV
indices"); the others are still AUTHWRITE|OWNERWRITE.

* Counter (TPM_NT_COUNTER): only ever increments. A plain one is written to NV on each
  increment (anti-rollback). An orderly (hybrid) one lives in RAM and reaches NV only
  on an orderly shutdown; after a non-orderly startup the TPM advances it so that its
  low 8 bits are 0xFF (measured on swtpm, docs/tpm.md): a crash signal.
* Blob: an ordinary index of 2 + 512 bytes holding ``u16 length ‖ data``. Never
  TPMA_NV_ORDERLY, which would lose the data on a TPM reset.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from recover.core.policy import (
    NV_AUTHREAD,
    NV_AUTHWRITE,
    NV_NO_DA,
    NV_ORDERLY,
    NV_OWNERREAD,
    NV_OWNERWRITE,
    NV_TPM_NT_COUNTER,
    NV_WRITTEN,
    POLICY_COUNTER_ATTRS,
)
from recover.errors import TpmError, TpmUnavailable, UsageError
from recover.tpm.core import RC_NV_UNINITIALIZED, TpmCore, translate

log = logging.getLogger(__name__)

__all__ = ["NV_WRITTEN", "POLICY_COUNTER_ATTRS", "NvOps"]

NV_BASE = NV_OWNERWRITE | NV_AUTHWRITE | NV_OWNERREAD | NV_AUTHREAD | NV_NO_DA
# What tells two layouts of one index apart (TPMA_NV_WRITTEN and others the TPM sets).
NV_LAYOUT_MASK = ~NV_WRITTEN & 0xFFFFFFFF

BLOB_MAX = 512
BLOB_SIZE = 2 + BLOB_MAX
MAX_ADVANCE = 4096


class NvOps(TpmCore):
    def _nv_define(self, index: int, attrs: int, size: int) -> None:
        from tpm2_pytss import TPM2_ALG, TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC

        pub = TPM2B_NV_PUBLIC(
            nvPublic=TPMS_NV_PUBLIC(
                nvIndex=index, nameAlg=TPM2_ALG.SHA256, attributes=attrs, dataSize=size
            )
        )
        with translate(f"defining NV index 0x{index:08x}"):
            self.ectx.nv_define_space(b"", pub)

    def _nv(self, index: int) -> Any:
        return self._tr(index, "NV index")

    def nv_attributes(self, index: int) -> int:
        with translate(f"reading NV index 0x{index:08x}"):
            pub, _ = self.ectx.nv_read_public(self._nv(index))
        return int(pub.nvPublic.attributes)

    def _nv_writer(self, index: int, nv: Any) -> Any:
        """The auth handle that may write ``index``: the index itself (AUTHWRITE) or
        the owner hierarchy (OWNERWRITE only; its auth set with set_owner_auth)."""
        from tpm2_pytss import ESYS_TR

        with translate(f"reading NV index 0x{index:08x}"):
            pub, _ = self.ectx.nv_read_public(nv)
        return nv if int(pub.nvPublic.attributes) & NV_AUTHWRITE else ESYS_TR.OWNER

    # --- counters -------------------------------------------------------------------

    def ensure_counter(self, index: int, *, orderly: bool, attrs: int | None = None) -> bool:
        """Define (and initialise with one increment) a NODA counter unless present.

        ``attrs``: the TPMA_NV layout (default AUTHWRITE|OWNERWRITE, open reads). When
        given, an existing counter with another layout is an NvLayoutError (provision
        migrates it)."""
        want = attrs if attrs is not None else NV_BASE | NV_TPM_NT_COUNTER
        want |= NV_ORDERLY if orderly else 0
        if index in self.nv_indices():
            have = self.nv_attributes(index)
            if not have & NV_TPM_NT_COUNTER or bool(have & NV_ORDERLY) != orderly:
                raise UsageError(
                    f"NV index 0x{index:08x} exists but is not an "
                    f"{'orderly ' if orderly else ''}counter",
                    hint="undefine it (tpm2_nvundefine) or configure another index",
                )
            if attrs is not None and have & NV_LAYOUT_MASK != want:
                raise NvLayoutError(index, have, want)
            return False
        self._nv_define(index, want, 8)
        self.counter_increment(index)
        log.info("defined %scounter 0x%08x", "orderly " if orderly else "", index)
        return True

    def migrate_counter(self, index: int, *, attrs: int) -> int:
        """Redefine a counter with the layout ``attrs`` at (at least) its old value.

        Undefining needs the owner auth; the new counter starts at the TPM's highest
        counter value ever (TPM_PT_NV_COUNTERS semantics), never below the old one."""
        from tpm2_pytss import ESYS_TR

        old = self.counter_read(index)
        with translate(f"undefining NV index 0x{index:08x} (owner auth)"):
            self.ectx.nv_undefine_space(self._nv(index), ESYS_TR.OWNER)
        self._nv_define(index, attrs, 8)
        self.counter_increment(index)
        value = self.counter_advance_to(index, old)
        log.info("migrated counter 0x%08x to attributes 0x%08x at %d", index, attrs, value)
        return value

    def counter_read(self, index: int) -> int:
        """The counter's value; an undefined or never-written counter is TpmUnavailable
        (never 0: a counter that reads 0 would accept every version)."""
        from tpm2_pytss import TSS2_Exception

        nv = self._nv(index)
        try:
            data = self.ectx.nv_read(nv, 8, 0, auth_handle=nv)
        except TSS2_Exception as e:
            if getattr(e, "error", 0) == RC_NV_UNINITIALIZED:
                raise TpmUnavailable(
                    f"NV counter 0x{index:08x} is defined but was never initialised",
                    hint="run `host-recover provision` (or undefine the index and provision)",
                ) from None
            with translate(f"reading counter 0x{index:08x}"):
                raise
        return int.from_bytes(bytes(data), "big")

    def counter_increment(self, index: int) -> int:
        nv = self._nv(index)
        with translate(f"incrementing counter 0x{index:08x}"):
            self.ectx.nv_increment(nv, auth_handle=self._nv_writer(index, nv))
        return self.counter_read(index)

    def counter_advance_to(self, index: int, value: int) -> int:
        """Increment until the counter is >= ``value`` (bounded: MAX_ADVANCE steps)."""
        current = self.counter_read(index)
        if value - current > MAX_ADVANCE:
            raise UsageError(
                f"counter 0x{index:08x} is at {current}; advancing to {value} would take "
                f"more than {MAX_ADVANCE} increments",
                hint="use small consecutive versions",
            )
        nv = self._nv(index)
        writer = self._nv_writer(index, nv)
        for _ in range(max(0, value - current)):
            with translate(f"incrementing counter 0x{index:08x}"):
                self.ectx.nv_increment(nv, auth_handle=writer)
        return self.counter_read(index)

    # --- decision-record blob -------------------------------------------------------

    def nv_blob_write(self, index: int, data: bytes) -> None:
        """Store up to 512 bytes in an ordinary NODA index (defined on first write)."""
        if len(data) > BLOB_MAX:
            raise UsageError(f"NV blob is {len(data)} bytes; at most {BLOB_MAX} fit")
        if index not in self.nv_indices():
            self._nv_define(index, NV_BASE, BLOB_SIZE)
        elif self.nv_attributes(index) & (NV_TPM_NT_COUNTER | 0xF0 | NV_ORDERLY):
            raise TpmError(f"NV index 0x{index:08x} is not an ordinary index")
        nv = self._nv(index)
        with translate(f"writing NV index 0x{index:08x}"):
            self.ectx.nv_write(nv, struct.pack(">H", len(data)) + data, 0, auth_handle=nv)

    def nv_blob_read(self, index: int) -> bytes | None:
        """The stored blob, or None when the index is undefined or never written."""
        from tpm2_pytss import TSS2_Exception

        if index not in self.nv_indices():
            return None
        nv = self._nv(index)
        try:
            head = bytes(self.ectx.nv_read(nv, 2, 0, auth_handle=nv))
        except TSS2_Exception as e:
            if getattr(e, "error", 0) == RC_NV_UNINITIALIZED:
                return None
            with translate(f"reading NV index 0x{index:08x}"):
                raise
        (n,) = struct.unpack(">H", head)
        if n > BLOB_MAX:
            raise TpmError(f"NV index 0x{index:08x} holds a bad length {n}")
        if n == 0:
            return b""
        with translate(f"reading NV index 0x{index:08x}"):
            return bytes(self.ectx.nv_read(nv, n, 2, auth_handle=nv))


class NvLayoutError(UsageError):
    """An NV index exists with other attributes than this version defines."""

    def __init__(self, index: int, have: int, want: int) -> None:
        super().__init__(
            f"NV index 0x{index:08x} has attributes 0x{have:08x}, not 0x{want:08x} "
            "(an older host-recover layout)",
            hint="run `host-recover provision` to migrate it (with --owner-auth FILE once "
            "an owner auth is set)",
        )
        self.index, self.have, self.want = index, have, want
