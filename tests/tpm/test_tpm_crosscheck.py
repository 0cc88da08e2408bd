"""Cross-checks with tpm2-tools, an independent TPM client, against the same swtpm.

* tpm2_createpolicy computes the same PolicyPCR digest as recover.core.policy;
* tpm2_unseal (its own PCR policy session) unseals our persisted object;
* tpm2_checkquote verifies our quote, and our verifier verifies tpm2_quote's.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from recover.core import policy as pol
from recover.core.attest import verify_quote
from recover.tpm import Tpm
from recover.tpm.quote import der_to_rs, rs_to_der

pytestmark = pytest.mark.tpm

SRK, SEAL, AK = 0x81000001, 0x81000002, 0x81010002
SEL, LOCK = "sha256:0,2,4,7,16", 23
FULL = "sha256:0,2,4,7,16,23"


def _tool(swtpm, *argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(argv), env=swtpm.env, capture_output=True, timeout=30, check=False)


def test_tpm2_createpolicy_agrees_with_our_policy_pcr_digest(swtpm_module, tmp_path: Path) -> None:
    with Tpm.open(swtpm_module.tcti) as t:
        t.pcr_extend(16, b"something measured")
        values = t.pcr_read(SEL)
    out = tmp_path / "policy.dat"
    r = _tool(swtpm_module, "tpm2_createpolicy", "--policy-pcr", "-l", FULL, "-L", str(out))
    assert r.returncode == 0, r.stderr.decode()
    assert out.read_bytes() == pol.policy_pcr_digest(SEL, values, LOCK)


def test_tpm2_unseal_opens_our_sealed_object(swtpm_module, tmp_path: Path) -> None:
    secret = b"S" * 32
    with Tpm.open(swtpm_module.tcti) as t:
        t.ensure_srk(SRK)
        t.seal_master(
            secret, srk_handle=SRK, seal_handle=SEAL, selection=SEL, lock_pcr=LOCK,
            policy="pcr", policy_pubkey_pem=None, force=True,
        )  # fmt: skip
    r = _tool(swtpm_module, "tpm2_unseal", "-c", hex(SEAL), "-p", f"pcr:{FULL}")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == secret
    # Without the lock PCR in its policy, tpm2_unseal cannot open it.
    r = _tool(swtpm_module, "tpm2_unseal", "-c", hex(SEAL), "-p", f"pcr:{SEL}")
    assert r.returncode != 0 and r.stdout != secret


def _tpmt_signature(der: bytes) -> bytes:
    r, s = der_to_rs(der)
    return (
        struct.pack(">HH", 0x0018, 0x000B) + struct.pack(">H", 32) + r + struct.pack(">H", 32) + s
    )


def test_tpm2_checkquote_verifies_our_quote(swtpm_module, tmp_path: Path) -> None:
    nonce = bytes.fromhex("c0ffee0123456789")
    with Tpm.open(swtpm_module.tcti) as t:
        pem = t.ensure_ak(AK)
        attest, sig = t.quote(AK, nonce, SEL)
    (tmp_path / "ak.pem").write_bytes(pem)
    (tmp_path / "msg").write_bytes(attest)
    (tmp_path / "sig").write_bytes(_tpmt_signature(sig))
    argv = ["tpm2_checkquote", "-u", str(tmp_path / "ak.pem"), "-m", str(tmp_path / "msg")]
    argv += ["-s", str(tmp_path / "sig"), "-g", "sha256"]
    r = _tool(swtpm_module, *argv, "-q", nonce.hex())
    assert r.returncode == 0, r.stderr.decode()
    r = _tool(swtpm_module, *argv, "-q", "00" + nonce.hex()[2:])
    assert r.returncode != 0


def test_our_verifier_accepts_tpm2_quote(swtpm_module, tmp_path: Path) -> None:
    nonce = "0badc0de"
    with Tpm.open(swtpm_module.tcti) as t:
        pem = t.ensure_ak(AK)
        values = t.pcr_read(SEL)
    r = _tool(
        swtpm_module, "tpm2_quote", "-c", hex(AK), "-l", SEL, "-q", nonce, "-g", "sha256",
        "-m", str(tmp_path / "msg"), "-s", str(tmp_path / "sig"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    raw = (tmp_path / "sig").read_bytes()
    alg, _h, n = struct.unpack(">HHH", raw[:6])
    assert alg == 0x0018
    rr, (m,) = raw[6 : 6 + n], struct.unpack(">H", raw[6 + n : 8 + n])
    ss = raw[8 + n : 8 + n + m]
    info = verify_quote(
        pem, (tmp_path / "msg").read_bytes(), rs_to_der(rr, ss),
        qualifying_data=bytes.fromhex(nonce), pcr_values=values,
    )  # fmt: skip
    assert info.pcr_selection == SEL
