"""NV indices: monotonic counters (plain and orderly/hybrid) and the decision-record blob.

All indices are NODA with an empty authValue (AUTHREAD/AUTHWRITE) and owner read/write:
a power cut never counts as a failed authorization, so it cannot lock the host out.

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

from recover.errors import TpmError, UsageError
from recover.tpm.core import RC_NV_UNINITIALIZED, TpmCore, translate

log = logging.getLogger(__name__)


# TPMA_NV bits (Part 2, 13.4).
NV_OWNERWRITE = 0x2
NV_AUTHWRITE = 0x4
NV_TPM_NT_COUNTER = 0x1 << 4
NV_OWNERREAD = 0x20000
NV_AUTHREAD = 0x40000
NV_NO_DA = 0x2000000
NV_ORDERLY = 0x4000000
NV_WRITTEN = 0x20000000
NV_BASE = NV_OWNERWRITE | NV_AUTHWRITE | NV_OWNERREAD | NV_AUTHREAD | NV_NO_DA

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

    # --- counters -------------------------------------------------------------------

    def ensure_counter(self, index: int, *, orderly: bool) -> bool:
        """Define (and initialise with one increment) a NODA counter unless present."""
        if index in self.nv_indices():
            attrs = self.nv_attributes(index)
            if not attrs & NV_TPM_NT_COUNTER or bool(attrs & NV_ORDERLY) != orderly:
                raise UsageError(
                    f"NV index 0x{index:08x} exists but is not an "
                    f"{'orderly ' if orderly else ''}counter",
                    hint="undefine it (tpm2_nvundefine) or configure another index",
                )
            return False
        attrs = NV_BASE | NV_TPM_NT_COUNTER | (NV_ORDERLY if orderly else 0)
        self._nv_define(index, attrs, 8)
        self.counter_increment(index)
        log.info("defined %scounter 0x%08x", "orderly " if orderly else "", index)
        return True

    def counter_read(self, index: int) -> int:
        from tpm2_pytss import TSS2_Exception

        nv = self._nv(index)
        try:
            data = self.ectx.nv_read(nv, 8, 0, auth_handle=nv)
        except TSS2_Exception as e:
            if getattr(e, "error", 0) == RC_NV_UNINITIALIZED:
                return 0
            with translate(f"reading counter 0x{index:08x}"):
                raise
        return int.from_bytes(bytes(data), "big")

    def counter_increment(self, index: int) -> int:
        nv = self._nv(index)
        with translate(f"incrementing counter 0x{index:08x}"):
            self.ectx.nv_increment(nv, auth_handle=nv)
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
        for _ in range(max(0, value - current)):
            with translate(f"incrementing counter 0x{index:08x}"):
                self.ectx.nv_increment(nv, auth_handle=nv)
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
