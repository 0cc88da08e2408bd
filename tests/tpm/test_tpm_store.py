"""The secure store against a real swtpm: seal/unseal, PCR and lock policies, signed
policies, NV counters and blob, quotes.

One swtpm per module. Tests seal to PCRs 0,2,4,7,16 with lock PCR 23: 16 and 23 are
resettable at locality 0, so each test starts from reset values without a reboot.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from recover.core import policy as pol
from recover.core.attest import verify_quote
from recover.errors import PolicyMismatch, TpmUnavailable, UsageError
from recover.tpm import Tpm

pytestmark = pytest.mark.tpm

SRK, SEAL, AK = 0x81000001, 0x81000002, 0x81010002
SEL, LOCK = "sha256:0,2,4,7,16", 23
SECRET = bytes(range(32))


@pytest.fixture
def tpm(swtpm_module) -> Iterator[Tpm]:
    with Tpm.open(swtpm_module.tcti) as t:
        for pcr in (16, 23):
            t.ectx.pcr_reset(_pcr(pcr))
        t.ensure_srk(SRK)
        # The policy counter every signed policy names (PolicyNV: counter <= version).
        t.ensure_counter(pol.DEFAULT_POLICY_NV, orderly=False, attrs=pol.POLICY_COUNTER_ATTRS)
        yield t


def _pcr(n: int):  # noqa: ANN202 - ESYS_TR
    from tpm2_pytss import ESYS_TR

    return ESYS_TR(ESYS_TR.PCR0 + n)


def _keys() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return priv, pub


def _seal(t: Tpm, policy: str = "pcr", pub: bytes | None = None) -> None:
    t.seal_master(
        SECRET, srk_handle=SRK, seal_handle=SEAL, selection=SEL, lock_pcr=LOCK,
        policy=policy, policy_pubkey_pem=pub, force=True,
    )  # fmt: skip


def _unseal(t: Tpm, **kw) -> bytes:
    return t.unseal_master(srk_handle=SRK, seal_handle=SEAL, selection=SEL, lock_pcr=LOCK, **kw)


def test_srk_is_created_once_and_persistent(tpm: Tpm) -> None:
    assert tpm.ensure_srk(SRK) is False
    assert SRK in tpm.persistent_handles()


def test_seal_unseal_round_trip_and_policy_digest(tpm: Tpm) -> None:
    _seal(tpm)
    assert _unseal(tpm, policy="pcr") == SECRET
    assert _unseal(tpm, policy="pcr") == SECRET  # unsealing twice works until the lock
    values = tpm.pcr_read(SEL)
    assert tpm.sealed_policy_digest(SEAL) == pol.policy_pcr_digest(SEL, values, LOCK)
    # No session is left behind (libtpms has few slots): many more unseals still work.
    for _ in range(5):
        assert _unseal(tpm, policy="pcr") == SECRET


def test_refuses_to_replace_without_force(tpm: Tpm) -> None:
    _seal(tpm)
    with pytest.raises(UsageError, match="already exists"):
        tpm.seal_master(
            b"x" * 32, srk_handle=SRK, seal_handle=SEAL, selection=SEL, lock_pcr=LOCK,
            policy="pcr", policy_pubkey_pem=None, force=False,
        )  # fmt: skip
    assert _unseal(tpm, policy="pcr") == SECRET


def test_policy_pcr_change_is_a_policy_mismatch(tpm: Tpm) -> None:
    _seal(tpm)
    tpm.pcr_extend(16, b"new kernel")
    with pytest.raises(PolicyMismatch, match="do not satisfy"):
        _unseal(tpm, policy="pcr")


def test_lock_pcr_blocks_a_second_unseal(tpm: Tpm) -> None:
    _seal(tpm)
    assert _unseal(tpm, policy="pcr") == SECRET
    tpm.pcr_extend(LOCK, b"host-recover: locked")
    with pytest.raises(PolicyMismatch):
        _unseal(tpm, policy="pcr")


def test_pcr_changed_between_policy_and_unseal_is_retried(tpm: Tpm, monkeypatch) -> None:
    """A real concurrent extend after PolicyPCR makes the TPM answer 0x128; we retry."""
    _seal(tpm)
    real, calls = tpm.ectx.unseal, []

    def unseal_after_concurrent_extend(*args, **kw):  # noqa: ANN202
        calls.append(1)
        if len(calls) == 1:
            tpm.pcr_extend(10, b"another process measures something")
        return real(*args, **kw)

    monkeypatch.setattr(tpm.ectx, "unseal", unseal_after_concurrent_extend)
    assert _unseal(tpm, policy="pcr") == SECRET
    assert len(calls) == 2
    calls.clear()
    with pytest.raises(PolicyMismatch, match="kept changing"):
        _unseal(tpm, policy="pcr", retries=0)


def test_missing_objects_are_tpm_unavailable(tpm: Tpm) -> None:
    with pytest.raises(TpmUnavailable, match="does not exist"):
        tpm.unseal_master(
            srk_handle=SRK, seal_handle=0x81000077, selection=SEL, lock_pcr=LOCK, policy="pcr"
        )


def test_signed_policy_survives_pcr_change_after_resigning(tpm: Tpm) -> None:
    priv, pub = _keys()
    _seal(tpm, "signed", pub)
    signed = pol.sign_policy(priv, SEL, tpm.pcr_read(SEL), LOCK, 1)
    assert _unseal(tpm, policy="signed", signed_policy=signed, policy_pubkey_pem=pub) == SECRET
    tpm.pcr_extend(16, b"planned update")
    with pytest.raises(PolicyMismatch, match="differ from the values in the signed policy"):
        _unseal(tpm, policy="signed", signed_policy=signed, policy_pubkey_pem=pub)
    resigned = pol.sign_policy(priv, SEL, tpm.pcr_read(SEL), LOCK, 2)
    assert _unseal(tpm, policy="signed", signed_policy=resigned, policy_pubkey_pem=pub) == SECRET
    # The stale (version 1) policy is refused once version 2 is the floor.
    with pytest.raises(PolicyMismatch, match="stale"):
        _unseal(
            tpm, policy="signed", signed_policy=resigned, policy_pubkey_pem=pub,
            min_policy_version=3,
        )  # fmt: skip
    # The lock PCR still applies under a signed policy.
    tpm.pcr_extend(LOCK, b"locked")
    with pytest.raises(PolicyMismatch):
        _unseal(tpm, policy="signed", signed_policy=resigned, policy_pubkey_pem=pub)


def test_forged_signed_policy_is_refused_by_the_tpm(tpm: Tpm) -> None:
    priv, pub = _keys()
    attacker_priv, _ = _keys()
    _seal(tpm, "signed", pub)
    values = tpm.pcr_read(SEL)
    forged = pol.sign_policy(attacker_priv, SEL, values, LOCK, 1)
    # Claim our key's name: the software check refuses it ...
    forged = pol.SignedPolicy(**{**forged.__dict__, "key_name": pol.key_name(pub)})
    with pytest.raises(PolicyMismatch, match="bad signature"):
        _unseal(tpm, policy="signed", signed_policy=forged, policy_pubkey_pem=pub)
    # ... and so does the TPM, when the software check is bypassed.
    with pytest.raises(PolicyMismatch, match="rejected"):
        tpm._verify_policy_signature(forged, pub)
    # A policy signed by the right key but without the lock PCR is refused too.
    no_lock = pol.sign_policy(priv, SEL, values, 22, 1)
    with pytest.raises(PolicyMismatch, match="lock PCR"):
        _unseal(tpm, policy="signed", signed_policy=no_lock, policy_pubkey_pem=pub)


def test_signed_policy_key_with_short_coordinate(tpm: Tpm) -> None:
    """tpm2-pytss from_pem drops leading zeros (~1 key in 128 → 0x2dc); we pad."""
    for _ in range(5000):
        key = ec.generate_private_key(ec.SECP256R1())
        n = key.public_key().public_numbers()
        if n.x < 1 << 248 or n.y < 1 << 248:
            break
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _seal(tpm, "signed", pub)
    signed = pol.sign_policy(priv, SEL, tpm.pcr_read(SEL), LOCK, 1)
    assert _unseal(tpm, policy="signed", signed_policy=signed, policy_pubkey_pem=pub) == SECRET


def test_nv_counters(tpm: Tpm) -> None:
    idx = 0x01500020
    assert tpm.ensure_counter(idx, orderly=False) is True
    assert tpm.ensure_counter(idx, orderly=False) is False
    with pytest.raises(UsageError, match="not an orderly counter"):
        tpm.ensure_counter(idx, orderly=True)
    v = tpm.counter_read(idx)
    assert tpm.counter_increment(idx) == v + 1
    assert tpm.counter_advance_to(idx, v + 5) == v + 5
    assert tpm.counter_advance_to(idx, v) == v + 5  # never goes back
    with pytest.raises(UsageError, match="increments"):
        tpm.counter_advance_to(idx, v + 10**6)


def test_nv_blob(tpm: Tpm) -> None:
    idx = 0x01500021
    assert tpm.nv_blob_read(idx) is None
    tpm.nv_blob_write(idx, b'{"action": "recovering"}')
    assert tpm.nv_blob_read(idx) == b'{"action": "recovering"}'
    tpm.nv_blob_write(idx, b"x" * 512)
    assert tpm.nv_blob_read(idx) == b"x" * 512
    tpm.nv_blob_write(idx, b"")
    assert tpm.nv_blob_read(idx) == b""
    with pytest.raises(UsageError, match="at most 512"):
        tpm.nv_blob_write(idx, b"x" * 513)
    assert not tpm.nv_attributes(idx) & 0x4000000  # not TPMA_NV_ORDERLY


def test_quote_verifies_with_the_pure_verifier(tpm: Tpm) -> None:
    pem = tpm.ensure_ak(AK)
    assert tpm.ensure_ak(AK) == pem
    tpm.pcr_extend(16, b"measured")
    att, sig = tpm.quote(AK, b"fresh nonce", SEL)
    values = tpm.pcr_read(SEL)
    info = verify_quote(pem, att, sig, qualifying_data=b"fresh nonce", pcr_values=values)
    assert info.pcr_selection == SEL
    assert info.reset_count == tpm.clock()["resetCount"]
    # Endorsement-hierarchy AK: firmwareVersion is not obfuscated (same on every quote).
    att2, sig2 = tpm.quote(AK, b"n2", SEL)
    info2 = verify_quote(pem, att2, sig2, qualifying_data=b"n2")
    assert info2.firmware_version == info.firmware_version
    stale = {"sha256": {**values["sha256"], 16: bytes(32)}}
    with pytest.raises(Exception, match="PCR digest"):
        verify_quote(pem, att, sig, qualifying_data=b"fresh nonce", pcr_values=stale)


def test_signals(tpm: Tpm) -> None:
    lock = tpm.lockout()
    assert set(lock) == {"counter", "max_tries", "interval", "recovery"}
    assert lock["max_tries"] > 0
    clock = tpm.clock()
    assert clock["resetCount"] >= 0 and clock["clock"] > 0
    assert isinstance(tpm.orderly(), bool)


def test_unreachable_tpm() -> None:
    from testing.ports import free_port_pair

    with pytest.raises(TpmUnavailable, match="cannot connect"):
        Tpm.open(f"swtpm:host=127.0.0.1,port={free_port_pair()}", timeout=0.2)
    with pytest.raises(TpmUnavailable, match="no TPM device"):
        Tpm.open("device:/nonexistent/tpmrm9", timeout=0.1)
