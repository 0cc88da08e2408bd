"""Pure tests of recover/core/policy.py and recover/core/attest.py (no TPM).

Agreement of these digests with a real TPM and tpm2-tools is tested in
test_tpm_crosscheck.py; here: structure, known answers, forgery and staleness.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from recover.core import attest
from recover.core import policy as pol
from recover.core.attest import verify_quote
from recover.errors import IntegrityError, PolicyMismatch
from recover.store.unseal import load_signed_policy

ZERO = bytes(32)


def _keypair() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return priv, pub


def test_pcr_selection_marshalling() -> None:
    sel = pol.policy_selection("sha256:0,2,4,7,9", 15)
    assert sel == (("sha256", (0, 2, 4, 7, 9, 15)),)
    assert pol.marshal_pcr_selection(sel) == bytes.fromhex("00000001000b03958200")


def test_policy_pcr_digest_known_answer() -> None:
    # All-zero PCRs 0 and 7 in sha256 and no lock PCR: independent re-derivation of
    # TPM 2.0 Part 3 PolicyPCR, PolicyUpdate with the command code 0x17F.
    composite = hashlib.sha256(ZERO + ZERO).digest()
    tpml = struct.pack(">IHB3s", 1, 0x000B, 3, bytes([0x81, 0, 0]))
    expected = hashlib.sha256(ZERO + struct.pack(">I", 0x17F) + tpml + composite).digest()
    values = {"sha256": {0: ZERO, 7: ZERO}}
    assert pol.policy_pcr_digest("sha256:0,7", values, None) == expected


def test_lock_pcr_is_expected_at_zero_whatever_its_current_value() -> None:
    values = {"sha256": {0: ZERO, 15: b"\x11" * 32}}
    with_lock = pol.policy_pcr_digest("sha256:0", values, 15)
    assert with_lock == pol.policy_pcr_digest("sha256:0,15", {"sha256": {0: ZERO, 15: ZERO}}, None)
    assert with_lock != pol.policy_pcr_digest("sha256:0", values, None)


def test_policy_pcr_digest_depends_on_every_value() -> None:
    base = {"sha256": {p: ZERO for p in (0, 2, 4, 7, 9)}}
    d0 = pol.policy_pcr_digest("sha256:0,2,4,7,9", base, 15)
    for p in (0, 2, 4, 7, 9):
        changed = {"sha256": {**base["sha256"], p: b"\x01" * 32}}
        assert pol.policy_pcr_digest("sha256:0,2,4,7,9", changed, 15) != d0


def test_ecc_public_area_pads_coordinates() -> None:
    # ~1 key in 128 has a coordinate with a leading zero byte; find one (bounded).
    for _ in range(5000):
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
        n = key.public_numbers()
        if n.x < 1 << 248 or n.y < 1 << 248:
            break
    else:
        pytest.fail("no short coordinate found in 5000 keys")
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    area = pol.ecc_public_area(pem)
    assert len(area) == 2 + 2 + 4 + 2 + 8 + 2 * (2 + 32)
    assert area[-68:-66] == b"\x00\x20" and area[-34:-32] == b"\x00\x20"
    name = pol.key_name(pem)
    assert name[:2] == b"\x00\x0b" and len(name) == 34


def test_policy_authorize_digest_structure() -> None:
    _, pub = _keypair()
    inner = hashlib.sha256(ZERO + struct.pack(">I", 0x16A) + pol.key_name(pub)).digest()
    assert pol.policy_authorize_digest(pub) == hashlib.sha256(inner).digest()
    assert pol.policy_authorize_digest(pub, b"ref") == hashlib.sha256(inner + b"ref").digest()


def test_signed_policy_round_trip_and_verify(tmp_path) -> None:
    priv, pub = _keypair()
    values = {"sha256": {p: bytes([p]) * 32 for p in (0, 2, 4, 7, 9)}}
    signed = pol.sign_policy(priv, "sha256:0,2,4,7,9", values, 15, 3)
    path = tmp_path / "policy.json"
    signed.save(path)
    loaded = load_signed_policy(path)
    assert loaded == signed
    loaded.verify(pub, min_version=3)
    assert loaded.approved_policy == pol.approved_policy_digest(
        "sha256:0,2,4,7,9", values, 15, pol.DEFAULT_POLICY_NV, 3
    )


def test_signed_policy_refuses_forgery_staleness_and_other_keys() -> None:
    priv, pub = _keypair()
    other_priv, other_pub = _keypair()
    values = {"sha256": {0: ZERO, 7: ZERO}}
    signed = pol.sign_policy(priv, "sha256:0,7", values, 15, 5)
    with pytest.raises(PolicyMismatch, match="stale"):
        signed.verify(pub, min_version=6)
    with pytest.raises(PolicyMismatch, match="another policy key"):
        signed.verify(other_pub)
    # Someone edits the version (to escape the anti-rollback floor): the approved digest
    # names the version (PolicyNV), so it no longer matches; with the digest recomputed
    # the TPM-checked signature fails.
    with pytest.raises(PolicyMismatch, match="approved digest"):
        dataclasses.replace(signed, policy_version=9).verify(pub, min_version=6)
    bumped = dataclasses.replace(
        signed,
        policy_version=9,
        approved_policy=pol.approved_policy_digest("sha256:0,7", values, 15, signed.policy_nv, 9),
    )
    with pytest.raises(PolicyMismatch, match="bad signature"):
        bumped.verify(pub, min_version=6)
    # New PCR values with the old approved digest: the digest check catches it.
    moved = {"sha256": {0: b"\x01" * 32, 7: ZERO}}
    with pytest.raises(PolicyMismatch, match="approved digest"):
        dataclasses.replace(signed, pcrs=moved).verify(pub)
    # A policy signed by another key but claiming ours.
    forged = pol.sign_policy(other_priv, "sha256:0,7", values, 15, 5)
    forged = dataclasses.replace(forged, key_name=pol.key_name(pub))
    with pytest.raises(PolicyMismatch, match="bad signature"):
        forged.verify(pub)


def test_signed_policy_malformed_file_is_a_policy_mismatch(tmp_path) -> None:
    path = tmp_path / "p.json"
    path.write_text('{"format": "something-else"}')
    with pytest.raises(PolicyMismatch, match="malformed"):
        load_signed_policy(path)
    with pytest.raises(PolicyMismatch, match="cannot read"):
        load_signed_policy(tmp_path / "missing.json")


def test_write_atomic_mode(tmp_path) -> None:
    path = tmp_path / "secret"
    pol.write_atomic(path, b"x" * 32, mode=0o600)
    assert path.read_bytes() == b"x" * 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]


# --- quotes ------------------------------------------------------------------------


def _quote(key: ec.EllipticCurvePrivateKey, nonce: bytes, values: dict, **kw) -> tuple:
    att = attest.make_attest(
        qualified_signer=b"\x00\x0b" + bytes(32),
        extra_data=nonce,
        selection="sha256:0,7",
        pcr_values=values,
        reset_count=7,
        restart_count=2,
        clock=12345,
        **kw,
    )
    return att, key.sign(att, ec.ECDSA(hashes.SHA256()))


def _pub(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_verify_quote_accepts_a_good_quote() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    values = {"sha256": {0: ZERO, 7: b"\x07" * 32}}
    att, sig = _quote(key, b"nonce", values)
    info = verify_quote(_pub(key), att, sig, qualifying_data=b"nonce", pcr_values=values)
    assert (info.reset_count, info.restart_count, info.clock) == (7, 2, 12345)
    assert info.pcr_selection == "sha256:0,7"
    assert info.pcr_digest == attest.pcr_digest("sha256:0,7", values)


def test_verify_quote_rejects() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    values = {"sha256": {0: ZERO, 7: ZERO}}
    att, sig = _quote(key, b"nonce", values)
    with pytest.raises(IntegrityError, match="signature"):
        verify_quote(_pub(other), att, sig, qualifying_data=b"nonce")
    with pytest.raises(IntegrityError, match="signature"):
        verify_quote(_pub(key), att[:-1] + bytes([att[-1] ^ 1]), sig, qualifying_data=b"nonce")
    with pytest.raises(IntegrityError, match="qualifying data"):
        verify_quote(_pub(key), att, sig, qualifying_data=b"other")
    with pytest.raises(IntegrityError, match="PCR digest"):
        verify_quote(
            _pub(key), att, sig, qualifying_data=b"nonce",
            pcr_values={"sha256": {0: ZERO, 7: b"\x01" * 32}},
        )  # fmt: skip
    with pytest.raises(IntegrityError, match="PCR"):
        verify_quote(
            _pub(key), att, sig, qualifying_data=b"nonce", pcr_values={"sha256": {0: ZERO}}
        )
    bad_magic = b"\x00" + att[1:]
    with pytest.raises(IntegrityError, match="magic"):
        verify_quote(
            _pub(key), bad_magic, key.sign(bad_magic, ec.ECDSA(hashes.SHA256())),
            qualifying_data=b"nonce",
        )  # fmt: skip
    bad_type = att[:4] + b"\x80\x17" + att[6:]
    with pytest.raises(IntegrityError, match="not a quote"):
        verify_quote(
            _pub(key), bad_type, key.sign(bad_type, ec.ECDSA(hashes.SHA256())),
            qualifying_data=b"nonce",
        )  # fmt: skip
    short = att[:-3]
    with pytest.raises(IntegrityError, match="truncated"):
        verify_quote(
            _pub(key), short, key.sign(short, ec.ECDSA(hashes.SHA256())), qualifying_data=b"nonce"
        )


def test_attest_module_is_pure() -> None:
    import subprocess
    import sys

    code = (
        "import sys, recover.tpm, recover.core.attest, recover.core.policy, recover.store.provision, "
        "recover.cli.policy; assert 'tpm2_pytss' not in sys.modules, 'tpm2_pytss imported'; "
        "assert 'cryptography' not in sys.modules, 'cryptography imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


_FUZZ_KEY = ec.generate_private_key(ec.SECP256R1())


@settings(max_examples=300, deadline=None)
@given(
    pcrs=st.sets(st.integers(0, 23), min_size=1, max_size=8),
    nonce=st.binary(max_size=64),
    flip=st.integers(min_value=0),
    data=st.data(),
)
def test_verify_quote_fuzz(pcrs: set[int], nonce: bytes, flip: int, data) -> None:
    """Signed but mangled quotes only ever raise IntegrityError (peer data is untrusted)."""
    values = {"sha256": {p: bytes([p]) * 32 for p in pcrs}}
    selection = "sha256:" + ",".join(str(p) for p in sorted(pcrs))
    att = attest.make_attest(
        qualified_signer=b"\x00\x0b" + bytes(32), extra_data=nonce,
        selection=selection, pcr_values=values,
    )  # fmt: skip
    pub = _pub(_FUZZ_KEY)
    ok = verify_quote(
        pub, att, _FUZZ_KEY.sign(att, ec.ECDSA(hashes.SHA256())),
        qualifying_data=nonce, pcr_values=values,
    )  # fmt: skip
    assert ok.pcr_selection == selection
    mangled = bytearray(att)
    if data.draw(st.booleans()):
        mangled[flip % len(att)] ^= 1 + flip % 255
    else:
        del mangled[flip % len(att) :]
    mangled_b = bytes(mangled)
    try:
        verify_quote(
            pub, mangled_b, _FUZZ_KEY.sign(mangled_b, ec.ECDSA(hashes.SHA256())),
            qualifying_data=nonce, pcr_values=values,
        )  # fmt: skip
    except IntegrityError:
        pass


def test_approved_digest_is_policy_pcr_then_policy_nv() -> None:
    """Independent re-derivation of Part 3 PolicyNV (CC 0x149) after PolicyPCR: the
    policy counter <= version, TPM_EO_UNSIGNED_LE (9), operandB 8 bytes big-endian."""
    values = {"sha256": {0: ZERO, 7: ZERO}}
    pcr = pol.policy_pcr_digest("sha256:0,7", values, 15)
    # TPMS_NV_PUBLIC: index, nameAlg, attributes (+ WRITTEN), authPolicy (empty), size 8.
    attrs = 0x2 | 0x10 | 0x20000 | 0x40000 | 0x2000000 | 0x20000000
    public = struct.pack(">IHIHH", 0x01500013, 0x000B, attrs, 0, 8)
    name = b"\x00\x0b" + hashlib.sha256(public).digest()
    assert pol.policy_counter_name(0x01500013) == name
    args = hashlib.sha256((3).to_bytes(8, "big") + struct.pack(">HH", 0, 9)).digest()
    expected = hashlib.sha256(pcr + struct.pack(">I", 0x149) + args + name).digest()
    assert pol.approved_policy_digest("sha256:0,7", values, 15, 0x01500013, 3) == expected
    # Each version, and each counter index, approves a different digest.
    assert pol.approved_policy_digest("sha256:0,7", values, 15, 0x01500013, 4) != expected
    assert pol.approved_policy_digest("sha256:0,7", values, 15, 0x01500014, 3) != expected


def test_format_v1_files_are_refused_with_a_hint() -> None:
    priv, _ = _keypair()
    doc = json.loads(
        pol.sign_policy(priv, "sha256:0,7", {"sha256": {0: ZERO, 7: ZERO}}, 15, 1).to_json()
    )
    doc["version"] = 1
    with pytest.raises(PolicyMismatch, match="format v1"):
        pol.SignedPolicy.from_json(json.dumps(doc))
