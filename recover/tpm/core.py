"""TPM connection, error translation, sessions, capabilities and PCRs (tpm2-pytss ESAPI).

tpm2_pytss is imported inside functions: importing this module costs nothing, so the
CLI's ``--help`` and pure tests stay fast. TPM return codes are translated into the
typed errors of recover/errors.py here and nowhere else.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, Self

from recover.core.pcrsel import HASH_SIZES, format_selection, parse_selection
from recover.errors import PolicyMismatch, TpmError, TpmUnavailable, UsageError

log = logging.getLogger(__name__)


# TPM_RC values with handle/parameter/session numbers stripped (tpm2-pytss .error).
RC_HANDLE = 0x08B
RC_VALUE = 0x084
RC_POLICY_FAIL = 0x09D
RC_SIGNATURE = 0x09B
RC_PCR_CHANGED = 0x128
RC_NV_UNINITIALIZED = 0x14A
RC_NV_DEFINED = 0x14C
RC_NV_RANGE = 0x146
RC_LOCKOUT = 0x921
RC_RETRY = 0x922
RC_YIELDED = 0x908
RC_TESTING = 0x90A
TCTI_LAYER = 10 << 16
TCTI_IO_ERROR = TCTI_LAYER | 0x0A
ESYS_BAD_SEQUENCE = (7 << 16) | 0x07  # ESAPI after a command the TCTI could not finish
RESMGR_TPM_LAYER = 11 << 16  # TPM-format codes made by a resource manager (tss2_common.h)

# Transient return codes (Part 2, 6.6.3): the TPM did not execute the command and asks
# for it again. libtss2's ESAPI re-sends the same bytes up to 5 times in a row, with no
# pause (measured with testing/tpmrelay.py); what still reaches us is re-issued by
# RetryingEsapi with a bounded exponential backoff (docs/tpm.md).
TRANSIENT = {RC_RETRY: "TPM_RC_RETRY", RC_YIELDED: "TPM_RC_YIELDED", RC_TESTING: "TPM_RC_TESTING"}
RETRY_FIRST_DELAY = 0.01  # s before the 2nd attempt, doubled after each one
RETRY_MAX_DELAY = 0.5  # s between attempts at most
RETRY_BUDGET = 30.0  # s per command, attempts and pauses included
RETRY_MAX_ATTEMPTS = 64  # ESAPI calls per command (libtss2 sends each up to 5 times)
RETRY_HINT = (
    "the TPM kept refusing the command as busy or self-testing; retry later or power-cycle "
    "the host, and look for tpm messages in the kernel log"
)
_TCTI_HINT = "check tpm.tcti (--tcti), e.g. device:/dev/tpmrm0; for swtpm check host and port"

# TPM_PT properties (Part 2, 6.13).
PT_PERMANENT = 0x200
PT_STARTUP_CLEAR = 0x201
OWNER_AUTH_SET = 1 << 0  # TPMA_PERMANENT.ownerAuthSet
RC_BAD_AUTH = 0x0A2  # TPM_RC_BAD_AUTH (NODA objects/hierarchies, incl. owner on swtpm)
RC_AUTH_FAIL = 0x08E  # TPM_RC_AUTH_FAIL
RC_POLICY = 0x126  # TPM_RC_POLICY: e.g. a PolicyNV comparison failed
RC_NV_AUTHORIZATION = 0x149  # TPM_RC_NV_AUTHORIZATION: this auth may not write the index
PT_LOCKOUT_COUNTER = 0x20E
PT_MAX_AUTH_FAIL = 0x20F
PT_LOCKOUT_INTERVAL = 0x210
PT_LOCKOUT_RECOVERY = 0x211
ORDERLY_BIT = 1 << 31

LOCKOUT_HINT = (
    "the TPM is in dictionary-attack lockout; wait for the recovery time or run "
    "`tpm2_dictionarylockout --clear-lockout` with the lockout auth"
)


class PcrChanged(Exception):
    """Internal: a PCR changed between PolicyPCR and the authorized command (retry)."""


def tss_error(e: Exception) -> tuple[int, int]:
    """(rc, error with handle/parameter/session stripped) of a TSS2_Exception."""
    return int(getattr(e, "rc", 0)), int(getattr(e, "error", 0))


def transient_rc(rc: int) -> int | None:
    """RC_RETRY, RC_YIELDED or RC_TESTING if ``rc`` is one (from the TPM or a resource
    manager's TPM layer), else None."""
    if (rc & 0xFFFF) in TRANSIENT and (rc & ~0xFFFF) in (0, RESMGR_TPM_LAYER):
        return rc & 0xFFFF
    return None


def _command_name(method: str) -> str:
    """``TPM2_PolicyPCR`` for the ESAPI method ``policy_pcr``."""
    from tpm2_pytss import TPM2_CC

    names = {n.replace("_", "").lower(): n for n in dir(TPM2_CC) if not n.startswith("_")}
    cc = names.get(method.replace("_", "").lower())
    return f"TPM2_{cc}" if cc else f"ESAPI {method}"


class RetryingEsapi:
    """The ESAPI context; a call the TPM answers with a transient code is made again.

    One ESAPI call is one TPM command, so only the command that was refused is re-issued,
    never a sequence: ESAPI computes fresh caller nonces and HMACs for its sessions, and
    the TPM, which did not execute the command, still holds the session's last nonce and
    policy digest. Bounded by RETRY_MAX_ATTEMPTS and RETRY_BUDGET; then TpmError (exit 3).
    """

    def __init__(self, esapi: Any) -> None:
        self.esapi = esapi

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.esapi, name)
        if not callable(attr):
            return attr
        return functools.partial(self.call, name, attr)

    def call(self, name: str, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        from tpm2_pytss import TSS2_Exception

        start, delay = time.monotonic(), RETRY_FIRST_DELAY
        for attempt in itertools.count(1):
            try:
                return fn(*args, **kwargs)
            except TSS2_Exception as e:
                rc = tss_error(e)[0]
                code = transient_rc(rc)
                if code is None:
                    raise
                elapsed = time.monotonic() - start
                if attempt >= RETRY_MAX_ATTEMPTS or elapsed + delay > RETRY_BUDGET:
                    raise TpmError(
                        f"{_command_name(name)}: the TPM still answered {TRANSIENT[code]} "
                        f"(0x{rc:x}) after {attempt} attempts in {elapsed:.1f} s",
                        rc=rc,
                        hint=RETRY_HINT,
                    ) from None
                log.debug(
                    "%s: %s (0x%x), attempt %d; re-issuing in %.3f s",
                    _command_name(name), TRANSIENT[code], rc, attempt, delay,
                )  # fmt: skip
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_DELAY)
        raise AssertionError("unreachable")


@contextlib.contextmanager
def translate(what: str) -> Iterator[None]:
    """Turn a TSS2_Exception raised inside into a typed error about ``what``."""
    from tpm2_pytss import TSS2_Exception

    try:
        yield
    except TSS2_Exception as e:
        rc, err = tss_error(e)
        if rc & 0xFF0000 == TCTI_LAYER or rc == ESYS_BAD_SEQUENCE:
            raise TpmUnavailable(
                f"{what}: lost the connection to the TPM (0x{rc:x})",
                hint="check that the TPM device or swtpm is still there",
            ) from None
        if err == RC_POLICY_FAIL:
            raise PolicyMismatch(
                f"{what}: the PCRs do not satisfy the sealed policy (0x{rc:x})",
                hint="the measured boot state differs from the provisioned one; re-provision "
                "or sign a policy for the new PCR values",
            ) from None
        if err == RC_PCR_CHANGED:
            raise PcrChanged(what) from None
        if err == RC_LOCKOUT:
            raise TpmError(f"{what}: TPM in lockout (0x{rc:x})", rc=rc, hint=LOCKOUT_HINT) from None
        if err in (RC_BAD_AUTH, RC_AUTH_FAIL, RC_NV_AUTHORIZATION):
            raise UsageError(
                f"{what}: the TPM refused the authorization (0x{rc:x})",
                hint="the owner hierarchy auth is set: pass --owner-auth FILE with the file "
                "written by `host-recover provision --export-owner-auth`",
            ) from None
        raise TpmError(f"{what} failed: {e} (0x{rc:x})", rc=rc) from None


@contextlib.contextmanager
def _import_quietly() -> Iterator[None]:
    """The cyclic garbage collector paused while tpm2_pytss (and with it cryptography)
    is first imported: tens of thousands of new objects, none of them garbage, that each
    collection during the import would only scan again (about a tenth of the import's
    CPU, docs/performance.md); afterwards they are frozen out of later collections.
    Most of cryptography is not loaded until tpm2_pytss needs it (recover/deferred.py).
    """
    if "tpm2_pytss" in sys.modules:
        yield
        return
    from recover import deferred

    pause = gc.isenabled()
    if pause:
        gc.disable()
    try:
        with deferred.importing():
            yield
    finally:
        if pause:
            gc.freeze()
            gc.enable()


class TpmCore:
    """An open ESAPI context. Use ``Tpm.open(...)`` as a context manager."""

    def __init__(self, ectx: Any, tcti: str) -> None:
        self.ectx: Any = ectx if isinstance(ectx, RetryingEsapi) else RetryingEsapi(ectx)
        self.tcti = tcti

    # --- connection -----------------------------------------------------------------

    @classmethod
    def open(cls, tcti: str, timeout: float = 30, *, device_wait: float = 0.0) -> Self:
        """Connect to the TPM behind ``tcti``. A missing device fails at once unless
        ``device_wait`` > 0 (the boot path: the driver may still be probing); ``timeout``
        bounds the retries of a busy device or a starting simulator."""
        os.environ.setdefault("TSS2_LOG", "all+none")
        with _import_quietly():
            from tpm2_pytss import ESAPI, TSS2_Exception

        name, _, conf = tcti.partition(":")
        if name == "device":
            path = conf or "/dev/tpmrm0"
            if device_wait > 0:
                deadline = time.monotonic() + device_wait
                while not os.path.exists(path) and time.monotonic() < deadline:
                    time.sleep(0.05)
            if not os.path.exists(path):
                waited = f" after {device_wait:g} s" if device_wait > 0 else ""
                raise TpmUnavailable(
                    f"no TPM device {path}{waited}",
                    hint="check the firmware TPM setting, the tpm_tis/tpm_crb drivers and "
                    "tpm.tcti (--tcti)",
                )
            if os.path.isdir(path):
                raise TpmUnavailable(f"TPM device {path} is a directory", hint=_TCTI_HINT)
            if not os.access(path, os.R_OK | os.W_OK):
                raise TpmUnavailable(
                    f"no permission to use the TPM device {path}",
                    hint="run as root or as a member of the device's group (usually tss)",
                )
        # Only an I/O failure (device busy, swtpm still starting) is worth retrying, and
        # briefly for a socket TCTI; an unknown TCTI or a bad parameter fails at once.
        deadline = time.monotonic() + min(timeout, 5.0 if name == "device" else 1.0)
        while True:
            try:
                ectx = ESAPI(tcti)
                break
            except TSS2_Exception as e:
                if tss_error(e)[0] != TCTI_IO_ERROR or time.monotonic() >= deadline:
                    raise TpmUnavailable(
                        f"cannot connect to the TPM via {tcti!r}: {e}",
                        hint=_TCTI_HINT,
                    ) from None
                time.sleep(0.1)
        return cls(ectx, tcti)

    def close(self) -> None:
        if self.ectx is not None:
            with contextlib.suppress(Exception):
                self.ectx.close()
            self.ectx = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- helpers --------------------------------------------------------------------

    def _flush(self, handle: Any) -> None:
        """Flush a transient object or session, ignoring one that is already gone."""
        from tpm2_pytss import ESYS_TR

        if handle is None or handle == ESYS_TR.NONE:
            return
        with contextlib.suppress(Exception):
            self.ectx.flush_context(handle)

    def _tr(self, handle: int, what: str) -> Any:
        """ESYS_TR for a persistent object or NV index; TpmUnavailable when missing."""
        from tpm2_pytss import TSS2_Exception

        try:
            return self.ectx.tr_from_tpmpublic(handle)
        except TSS2_Exception as e:
            _, err = tss_error(e)
            if err in (RC_HANDLE, RC_NV_RANGE):
                raise TpmUnavailable(
                    f"{what} 0x{handle:08x} does not exist in the TPM",
                    hint="run `host-recover provision` first",
                ) from None
            with translate(f"reading {what}"):
                raise

    def salted_session(self, srk: Any, policy: bool = False) -> Any:
        """A session salted with the SRK, AES-128-CFB parameter encryption, SHA-256."""
        from tpm2_pytss import ESYS_TR, TPM2_ALG, TPM2_SE, TPMA_SESSION, TPMT_SYM_DEF

        sym = TPMT_SYM_DEF(algorithm=TPM2_ALG.AES)
        sym.keyBits.aes = 128
        sym.mode.aes = TPM2_ALG.CFB
        with translate("starting a salted session"):
            s = self.ectx.start_auth_session(
                tpm_key=srk,
                bind=ESYS_TR.NONE,
                session_type=TPM2_SE.POLICY if policy else TPM2_SE.HMAC,
                symmetric=sym,
                auth_hash=TPM2_ALG.SHA256,
            )
        self.ectx.trsess_set_attributes(
            s, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.DECRYPT | TPMA_SESSION.ENCRYPT
        )
        return s

    def policy_session(self) -> Any:
        """An unsalted SHA-256 policy session (nothing secret crosses the bus: the
        evidence indices' write policy, recover.tpm.nv)."""
        from tpm2_pytss import ESYS_TR, TPM2_ALG, TPM2_SE, TPMT_SYM_DEF

        with translate("starting a policy session"):
            return self.ectx.start_auth_session(
                tpm_key=ESYS_TR.NONE,
                bind=ESYS_TR.NONE,
                session_type=TPM2_SE.POLICY,
                symmetric=TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                auth_hash=TPM2_ALG.SHA256,
            )

    def _properties(self, first: int, count: int) -> dict[int, int]:
        from tpm2_pytss import TPM2_CAP

        with translate("reading TPM properties"):
            _, data = self.ectx.get_capability(TPM2_CAP.TPM_PROPERTIES, first, count)
        return {int(p.property): int(p.value) for p in data.data.tpmProperties}

    def _handles(self, first: int) -> list[int]:
        from tpm2_pytss import TPM2_CAP

        out: list[int] = []
        nxt = first
        for _ in range(64):  # bounded: 64 pages of up to 128 handles
            with translate("listing TPM handles"):
                more, data = self.ectx.get_capability(TPM2_CAP.HANDLES, nxt, 128)
            hs = [int(h) for h in data.data.handles if (int(h) >> 24) == (first >> 24)]
            out += hs
            if not more or not hs:
                break
            nxt = hs[-1] + 1
        return out

    # --- signals --------------------------------------------------------------------

    def orderly(self) -> bool:
        """TPMA_STARTUP_CLEAR.orderly: 1 iff the previous cycle ended with TPM2_Shutdown."""
        return bool(self._properties(PT_STARTUP_CLEAR, 1).get(PT_STARTUP_CLEAR, 0) & ORDERLY_BIT)

    def lockout(self) -> dict[str, int]:
        p = self._properties(PT_LOCKOUT_COUNTER, 4)
        return {
            "counter": p.get(PT_LOCKOUT_COUNTER, 0),
            "max_tries": p.get(PT_MAX_AUTH_FAIL, 0),
            "interval": p.get(PT_LOCKOUT_INTERVAL, 0),
            "recovery": p.get(PT_LOCKOUT_RECOVERY, 0),
        }

    def clock(self) -> dict[str, int | bool]:
        with translate("reading the TPM clock"):
            t = self.ectx.read_clock()
        ci = t.clockInfo
        return {
            "time": int(t.time),
            "clock": int(ci.clock),
            "resetCount": int(ci.resetCount),
            "restartCount": int(ci.restartCount),
            "safe": bool(ci.safe),
        }

    # --- owner hierarchy ------------------------------------------------------------

    def owner_auth_set(self) -> bool:
        """TPMA_PERMANENT.ownerAuthSet: the owner hierarchy has a non-empty auth."""
        return bool(self._properties(PT_PERMANENT, 1).get(PT_PERMANENT, 0) & OWNER_AUTH_SET)

    def use_owner_auth(self, auth: bytes) -> None:
        """Authorise later owner-hierarchy commands with ``auth`` (not sent anywhere)."""
        from tpm2_pytss import ESYS_TR

        self.ectx.tr_set_auth(ESYS_TR.OWNER, auth)

    def change_owner_auth(self, new: bytes) -> None:
        """HierarchyChangeAuth(OWNER): the current auth (use_owner_auth) authorises it."""
        from tpm2_pytss import ESYS_TR

        with translate("setting the owner hierarchy auth"):
            self.ectx.hierarchy_change_auth(ESYS_TR.OWNER, new)
        self.use_owner_auth(new)

    def persistent_handles(self) -> list[int]:
        return self._handles(0x81000000)

    def nv_indices(self) -> list[int]:
        return self._handles(0x01000000)

    # --- PCRs -----------------------------------------------------------------------

    def pcr_read(self, selection: str) -> dict[str, dict[int, bytes]]:
        """Current values of ``selection`` (several PCR_Read calls if needed)."""
        from tpm2_pytss import TPML_PCR_SELECTION

        sel = parse_selection(selection)
        out: dict[str, dict[int, bytes]] = {alg: {} for alg, _ in sel}
        for _ in range(32):  # bounded: each call returns at least one PCR
            missing = tuple((alg, tuple(p for p in pcrs if p not in out[alg])) for alg, pcrs in sel)
            missing = tuple((a, ps) for a, ps in missing if ps)
            if not missing:
                return out
            with translate("reading PCRs"):
                _, got_sel, digests = self.ectx.pcr_read(
                    TPML_PCR_SELECTION.parse(format_selection(missing))
                )
            values = [bytes(d) for d in digests]
            got = 0
            for s in got_sel.pcrSelections[: got_sel.count]:
                alg = next(a for a, _ in sel if _alg_id(a) == int(s.hash))
                bitmap = bytes(s.pcrSelect)[: s.sizeofSelect]
                for p in range(len(bitmap) * 8):
                    if bitmap[p // 8] & (1 << (p % 8)):
                        out[alg][p] = values[got]
                        got += 1
            if got == 0:
                raise UsageError(
                    f"the TPM has no PCR bank for {format_selection(missing)}",
                    hint="check tpm.pcrs against `tpm2_pcrread`",
                )
        raise TpmError("reading PCRs did not converge")

    def pcr_extend(self, pcr: int, data: bytes, bank: str = "sha256") -> None:
        """Extend ``pcr`` in ``bank`` with the digest (of that bank) of ``data``."""
        import hashlib

        from tpm2_pytss import ESYS_TR, TPML_DIGEST_VALUES, TPMT_HA

        if bank not in HASH_SIZES:
            raise UsageError(f"unknown PCR bank {bank!r}")
        ha = TPMT_HA(hashAlg=_alg_id(bank))
        setattr(ha.digest, bank, hashlib.new(bank, data).digest())
        with translate(f"extending PCR {bank}:{pcr}"):
            self.ectx.pcr_extend(ESYS_TR(ESYS_TR.PCR0 + pcr), TPML_DIGEST_VALUES([ha]))


def _alg_id(name: str) -> int:
    from recover.core.policy import ALG_IDS

    return ALG_IDS[name]
