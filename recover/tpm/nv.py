"""NV indices: monotonic counters (plain and orderly/hybrid) and the decision-record blob.

All indices are NODA with an empty authValue: a power cut never counts as a failed
authorization, so it cannot lock the host out. Reads are open (AUTHREAD|OWNERREAD).
Writes (docs/tpm.md "NV indices"):

* the policy and rollback counters: the owner auth only (OWNERWRITE);
* the evidence indices — the hybrid counter and the decision record — only through
  their write policy (POLICYWRITE: PolicyPCR over the lock PCR at its reset value,
  PolicyCommandCode of the write command; ``recover.core.policy.WriteLock``), so only
  the boot payload before its lock writes them, never the normal OS;
* indices of older layouts (AUTHWRITE) with their empty authValue, until provision
  migrates them.

* Counter (TPM_NT_COUNTER): only ever increments. A plain one is written to NV on each
  increment (anti-rollback). An orderly (hybrid) one lives in RAM and reaches NV only
  on an orderly shutdown; after a non-orderly startup the TPM advances it so that its
  low 8 bits are 0xFF (measured on swtpm, docs/tpm.md): a crash signal — once it was
  written at least once (the payload's pre-lock increment does that).
* Blob: an ordinary index of 2 + 512 bytes holding ``u16 length ‖ data``. Never
  TPMA_NV_ORDERLY, which would lose the data on a TPM reset.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from collections.abc import Iterator
from typing import Any

from recover.core.policy import (
    CC_NV_INCREMENT,
    CC_NV_WRITE,
    NV_AUTHREAD,
    NV_AUTHWRITE,
    NV_NO_DA,
    NV_ORDERLY,
    NV_OWNERREAD,
    NV_OWNERWRITE,
    NV_POLICYWRITE,
    NV_TPM_NT_COUNTER,
    NV_WRITTEN,
    POLICY_COUNTER_ATTRS,
    RECORD_BLOB_ATTRS,
    WriteLock,
)
from recover.errors import PolicyMismatch, TpmError, TpmUnavailable, UsageError
from recover.tpm.core import RC_NV_UNINITIALIZED, RC_VALUE, TpmCore, translate, tss_error

log = logging.getLogger(__name__)

__all__ = ["NV_WRITTEN", "POLICY_COUNTER_ATTRS", "NvOps"]

NV_BASE = NV_OWNERWRITE | NV_AUTHWRITE | NV_OWNERREAD | NV_AUTHREAD | NV_NO_DA
# What tells two layouts of one index apart (TPMA_NV_WRITTEN and others the TPM sets).
NV_LAYOUT_MASK = ~NV_WRITTEN & 0xFFFFFFFF

BLOB_MAX = 512
BLOB_SIZE = 2 + BLOB_MAX
MAX_ADVANCE = 4096


class NvOps(TpmCore):
    def _nv_define(self, index: int, attrs: int, size: int, auth_policy: bytes = b"") -> None:
        from tpm2_pytss import TPM2_ALG, TPM2B_DIGEST, TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC

        pub = TPM2B_NV_PUBLIC(
            nvPublic=TPMS_NV_PUBLIC(
                nvIndex=index,
                nameAlg=TPM2_ALG.SHA256,
                attributes=attrs,
                authPolicy=TPM2B_DIGEST(auth_policy),
                dataSize=size,
            )
        )
        with translate(f"defining NV index 0x{index:08x}"):
            self.ectx.nv_define_space(b"", pub)

    def _nv_undefine(self, index: int) -> None:
        from tpm2_pytss import ESYS_TR

        with translate(f"undefining NV index 0x{index:08x} (owner auth)"):
            self.ectx.nv_undefine_space(self._nv(index), ESYS_TR.OWNER)

    def nv_undefine(self, index: int) -> None:
        """NV_UndefineSpace(OWNER) of ``index`` (deprovision)."""
        self._nv_undefine(index)

    def _nv(self, index: int) -> Any:
        return self._tr(index, "NV index")

    def nv_layout(self, index: int, nv: Any = None) -> tuple[int, bytes]:
        """The index's TPMA_NV attributes and its authPolicy (``nv``: its ESYS_TR)."""
        with translate(f"reading NV index 0x{index:08x}"):
            pub, _ = self.ectx.nv_read_public(nv if nv is not None else self._nv(index))
        return int(pub.nvPublic.attributes), bytes(pub.nvPublic.authPolicy)

    def nv_attributes(self, index: int) -> int:
        return self.nv_layout(index)[0]

    def nv_written(self, index: int) -> bool:
        return bool(self.nv_attributes(index) & NV_WRITTEN)

    @contextlib.contextmanager
    def _nv_write_auth(
        self, index: int, nv: Any, command_code: int, lock: WriteLock | None
    ) -> Iterator[tuple[Any, Any]]:
        """(auth handle, session) that may write ``index``: the index with its empty
        authValue (AUTHWRITE), a policy session satisfying its write policy
        (POLICYWRITE: needs ``lock``), or the owner hierarchy (OWNERWRITE only; its auth
        set with use_owner_auth)."""
        from tpm2_pytss import ESYS_TR

        attrs, _ = self.nv_layout(index, nv)
        if attrs & NV_AUTHWRITE:
            yield nv, ESYS_TR.PASSWORD
        elif attrs & NV_POLICYWRITE:
            if lock is None:
                raise UsageError(
                    f"NV index 0x{index:08x} is written only through its write policy "
                    "(the boot payload, before the lock)"
                )
            session = self._write_policy_session(index, lock, command_code)
            try:
                yield nv, session
            finally:
                self._flush(session)
        else:
            yield ESYS_TR.OWNER, ESYS_TR.PASSWORD

    def _write_policy_session(self, index: int, lock: WriteLock, command_code: int) -> Any:
        """A policy session for ``WriteLock.digest(command_code)``; PolicyMismatch (exit
        4) when the lock PCR is no longer at its reset value (after the lock)."""
        from tpm2_pytss import TPML_PCR_SELECTION, TSS2_Exception

        session = self.policy_session()
        try:
            try:
                self.ectx.policy_pcr(
                    session, lock.reset_digest, TPML_PCR_SELECTION.parse(lock.selection)
                )
            except TSS2_Exception as e:
                if tss_error(e)[1] == RC_VALUE:
                    raise PolicyMismatch(
                        f"NV index 0x{index:08x}: lock PCR {lock.selection} is extended in "
                        "this boot; only the boot payload writes this index, before its lock",
                    ) from None
                with translate("PolicyPCR (lock PCR)"):
                    raise
            with translate("PolicyCommandCode"):
                self.ectx.policy_command_code(session, command_code)
        except BaseException:
            self._flush(session)
            raise
        return session

    # --- counters -------------------------------------------------------------------

    def ensure_counter(
        self,
        index: int,
        *,
        orderly: bool,
        attrs: int | None = None,
        auth_policy: bytes = b"",
        initialise: bool = True,
    ) -> bool:
        """Define a NODA counter unless present; initialise it with one increment unless
        it is written through a write policy (the boot payload initialises those) or
        ``initialise`` is false (the credential floor: no floor until first raised).

        ``attrs``: the TPMA_NV layout (default AUTHWRITE|OWNERWRITE, open reads), with
        ``auth_policy``. When given, an existing counter with another layout or write
        policy is an NvLayoutError (provision migrates it)."""
        want = attrs if attrs is not None else NV_BASE | NV_TPM_NT_COUNTER
        want |= NV_ORDERLY if orderly else 0
        if index in self.nv_indices():
            have, policy = self.nv_layout(index)
            if not have & NV_TPM_NT_COUNTER or bool(have & NV_ORDERLY) != orderly:
                raise UsageError(
                    f"NV index 0x{index:08x} exists but is not an "
                    f"{'orderly ' if orderly else ''}counter",
                    hint="undefine it (tpm2_nvundefine) or configure another index",
                )
            if attrs is not None and (have & NV_LAYOUT_MASK != want or policy != auth_policy):
                raise NvLayoutError(index, have, want, auth_policy)
            return False
        self._nv_define(index, want, 8, auth_policy)
        if initialise and not want & NV_POLICYWRITE:
            self.counter_increment(index)
        log.info("defined %scounter 0x%08x", "orderly " if orderly else "", index)
        return True

    def migrate_counter(self, index: int, *, attrs: int, auth_policy: bytes = b"") -> int | None:
        """Redefine a counter with the layout ``attrs`` (+ write policy).

        Undefining needs the owner auth. A floor (owner-write counter) comes back at
        (at least) its old value: the new counter starts at the TPM's highest counter
        value ever (TPM_PT_NV_COUNTERS semantics) and is advanced to the old one. A
        policy-written counter (the hybrid crash signal: its value is no floor) is left
        for the next boot's payload to initialise: returns None."""
        old = self.counter_read(index) if self.nv_written(index) else 0
        self._nv_undefine(index)
        self._nv_define(index, attrs, 8, auth_policy)
        if attrs & NV_POLICYWRITE:
            log.info("migrated counter 0x%08x to attributes 0x%08x", index, attrs)
            return None
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

    def _increment(self, index: int, nv: Any, lock: WriteLock | None) -> None:
        with self._nv_write_auth(index, nv, CC_NV_INCREMENT, lock) as (auth, session):
            with translate(f"incrementing counter 0x{index:08x}"):
                self.ectx.nv_increment(nv, auth_handle=auth, session1=session)

    def counter_increment(self, index: int, *, lock: WriteLock | None = None) -> int:
        """Increment; ``lock``: the write policy of a policy-written counter."""
        self._increment(index, self._nv(index), lock)
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
            self._increment(index, nv, None)
        return self.counter_read(index)

    # --- decision-record blob -------------------------------------------------------

    def ensure_blob(self, index: int, lock: WriteLock) -> bool:
        """Define the decision-record index with its write policy unless present; an
        index of another layout is an NvLayoutError (provision migrates it)."""
        policy = lock.digest(CC_NV_WRITE)
        if index not in self.nv_indices():
            self._nv_define(index, RECORD_BLOB_ATTRS, BLOB_SIZE, policy)
            log.info("defined the decision-record index 0x%08x", index)
            return True
        have, have_policy = self.nv_layout(index)
        if have & NV_LAYOUT_MASK != RECORD_BLOB_ATTRS or have_policy != policy:
            raise NvLayoutError(index, have, RECORD_BLOB_ATTRS, policy)
        return False

    def migrate_blob(self, index: int, lock: WriteLock) -> None:
        """Redefine the decision-record index with its write policy (owner auth); the
        previous record is lost (the next boot reads "no record")."""
        self._nv_undefine(index)
        self.ensure_blob(index, lock)

    def nv_blob_write(self, index: int, data: bytes, *, lock: WriteLock | None = None) -> None:
        """Store up to 512 bytes in an ordinary NODA index. ``lock``: its write policy;
        an undefined index is defined with it (owner auth: works while it is empty) or,
        without ``lock``, with the older AUTHWRITE layout."""
        if len(data) > BLOB_MAX:
            raise UsageError(f"NV blob is {len(data)} bytes; at most {BLOB_MAX} fit")
        if index not in self.nv_indices():
            if lock is not None:
                self.ensure_blob(index, lock)
            else:
                self._nv_define(index, NV_BASE, BLOB_SIZE)
        elif self.nv_attributes(index) & (NV_TPM_NT_COUNTER | 0xF0 | NV_ORDERLY):
            raise TpmError(f"NV index 0x{index:08x} is not an ordinary index")
        nv = self._nv(index)
        with self._nv_write_auth(index, nv, CC_NV_WRITE, lock) as (auth, session):
            with translate(f"writing NV index 0x{index:08x}"):
                self.ectx.nv_write(
                    nv, struct.pack(">H", len(data)) + data, 0, auth_handle=auth, session1=session
                )

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

    def __init__(self, index: int, have: int, want: int, auth_policy: bytes = b"") -> None:
        super().__init__(
            f"NV index 0x{index:08x} has attributes 0x{have:08x} or a write policy other "
            f"than 0x{want:08x} with this configuration's (an older host-recover layout, "
            "or another tpm.lock_pcr or first bank of tpm.pcrs)",
            hint="run `host-recover provision` to migrate it (with --owner-auth FILE once "
            "an owner auth is set)",
        )
        self.index, self.have, self.want, self.auth_policy = index, have, want, auth_policy
