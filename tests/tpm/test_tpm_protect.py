"""Protected TPM state against a real swtpm (issue 9, findings 4, 5 and 6): superseded
signed policies fail at the TPM, the policy counter and the owner hierarchy need the
offline owner auth, uninitialised counters are errors, and provisioning pins objects.

Each test gets a fresh swtpm (the owner auth it sets persists in the TPM).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from recover.core import policy as pol
from recover.errors import PolicyMismatch, TpmUnavailable, UsageError
from recover.store import unseal
from recover.store.keyfile import read_key_file
from recover.tpm import Tpm
from recover.tpm.nv import NV_BASE
from tests.tpm.test_tpm_cli import PROVISION, Host

pytestmark = pytest.mark.tpm

POLICY_NV = 0x01500013  # tpm.policy_nv (default)


@pytest.fixture
def host(swtpm, tmp_path: Path) -> Iterator[Host]:
    h = Host(swtpm.tcti, tmp_path)
    h.swtpm = swtpm
    yield h


def _signed_conf(host: Host, capsys) -> Path:
    """A policy key pair and tpm.policy = signed; returns the private policy key."""
    priv, pub = host.root / "policy.key", host.root / "policy-pub.pem"
    rc, _, err = host.run(capsys, "policy", "keygen", "--private", str(priv), "--public", str(pub))
    assert rc == 0, err
    host.write_conf("signed")
    return priv


def _signed_host(host: Host, capsys) -> Path:
    """A host provisioned with tpm.policy = signed; returns the private policy key."""
    priv = _signed_conf(host, capsys)
    assert host.run(capsys, *PROVISION)[0] == 0
    return priv


def _sign(host: Host, capsys, priv: Path, out: Path, version: int) -> Path:
    rc, _, err = host.run(
        capsys, "policy", "sign", "--allow-unbound", "--key", str(priv), "--output", str(out),
        "--policy-version", str(version),
    )  # fmt: skip
    assert rc == 0, err
    return out


# --- finding 4: revocation in the TPM -------------------------------------------------


def test_superseded_policy_is_refused_by_the_tpm(host: Host, capsys) -> None:
    priv = _signed_host(host, capsys)
    v1 = _sign(host, capsys, priv, host.root / "v1.json", 1)
    v2 = _sign(host, capsys, priv, host.root / "v2.json", 2)
    assert host.run(capsys, "policy", "install", str(v1))[0] == 0
    assert unseal.unseal_master(host.cfg())  # v1 unseals
    rc, _, err = host.run(capsys, "policy", "install", str(v2))
    assert rc == 0, err
    assert json.loads((host.root / "policy.json").read_text())["policy_version"] == 2
    with Tpm.open(host.tcti) as t:
        assert t.counter_read(POLICY_NV) == 2
        old = unseal.load_signed_policy(v1)
        pub = (host.root / "policy-pub.pem").read_bytes()
        # Past the software floor (min_policy_version=0): the TPM's PolicyNV refuses it.
        with pytest.raises(PolicyMismatch, match="revoked"):
            t.unseal_master(
                srk_handle=0x81000001, seal_handle=0x81000002, selection=old.selection,
                lock_pcr=14, policy="signed", signed_policy=old, policy_pubkey_pem=pub,
                min_policy_version=0,
            )  # fmt: skip
    # The CLI refuses to install it again, and the installed v2 still unseals.
    rc, _, err = host.run(capsys, "policy", "install", str(v1))
    assert rc == 4 and "older than the installed" in err
    assert host.run(capsys, "unseal", "--check")[0] == 0


def test_unsealing_no_longer_raises_the_policy_counter(host: Host, capsys) -> None:
    priv = _signed_host(host, capsys)
    _sign(host, capsys, priv, host.root / "policy.json", 5)
    assert host.run(capsys, "unseal", "--check")[0] == 0
    with Tpm.open(host.tcti) as t:
        assert t.counter_read(POLICY_NV) == 1  # only `policy install` raises it


def test_approved_digest_matches_a_tpm_trial_session(swtpm) -> None:
    """PolicyPCR + PolicyNV(counter <= v) computed in Python == the TPM's own digest."""
    from tpm2_pytss import (
        ESYS_TR,
        TPM2_ALG,
        TPM2_EO,
        TPM2_SE,
        TPM2B_OPERAND,
        TPML_PCR_SELECTION,
        TPMT_SYM_DEF,
    )

    sel, lock, version = "sha256:0,2,4,7", 14, 7
    with Tpm.open(swtpm.tcti) as t:
        t.ensure_counter(POLICY_NV, orderly=False, attrs=pol.POLICY_COUNTER_ATTRS)
        values = t.pcr_read(sel)
        want = pol.approved_policy_digest(sel, values, lock, POLICY_NV, version)
        session = t.ectx.start_auth_session(
            ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL,
            TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256,
        )  # fmt: skip
        try:
            psel = pol.policy_selection(sel, lock)
            composite = pol.pcr_composite(psel, pol.expected_values(sel, values, lock))
            t.ectx.policy_pcr(session, composite, TPML_PCR_SELECTION.parse("sha256:0,2,4,7,14"))
            nv = t.ectx.tr_from_tpmpublic(POLICY_NV)
            t.ectx.policy_nv(
                nv, nv, session, TPM2B_OPERAND(pol.version_operand(version)),
                TPM2_EO.UNSIGNED_LE, 0,
            )  # fmt: skip
            got = bytes(t.ectx.policy_get_digest(session))
        finally:
            t.ectx.flush_context(session)
        _, name = t.ectx.nv_read_public(nv)
        assert bytes(name) == pol.policy_counter_name(POLICY_NV)
    assert got == want


# --- finding 5: protected NV indices --------------------------------------------------


def test_owner_auth_protects_the_policy_counter(host: Host, capsys) -> None:
    from tpm2_pytss import ESYS_TR, TSS2_Exception

    priv = _signed_conf(host, capsys)
    auth = host.root / "owner.auth"
    rc, out, err = host.run(
        capsys, "provision", "--allow-unbound", "--json", "--export-owner-auth", str(auth)
    )
    assert rc == 0, err
    assert json.loads(out)["owner_auth_set"] is True
    assert auth.stat().st_mode & 0o777 == 0o600 and len(read_key_file(auth, "owner auth")) == 32
    assert auth.read_bytes().startswith(b"-----BEGIN HOST-RECOVER OWNER AUTH-----\n")
    with Tpm.open(host.tcti) as t:
        assert t.owner_auth_set()
        attrs = t.nv_attributes(POLICY_NV)
        assert not attrs & pol.NV_AUTHWRITE and attrs & pol.NV_OWNERWRITE
        nv = t.ectx.tr_from_tpmpublic(POLICY_NV)
        # Root in the normal OS: neither the index's own (empty) auth nor an empty owner
        # auth raises the counter or undefines it.
        with pytest.raises(TSS2_Exception):
            t.ectx.nv_increment(nv, auth_handle=nv)
        with pytest.raises(TSS2_Exception):
            t.ectx.nv_increment(nv, auth_handle=ESYS_TR.OWNER)
        with pytest.raises(TSS2_Exception):
            t.ectx.nv_undefine_space(nv, ESYS_TR.OWNER)
        assert t.counter_read(POLICY_NV) == 1
    v2 = _sign(host, capsys, priv, host.root / "v2.json", 2)
    rc, _, err = host.run(capsys, "policy", "install", str(v2))
    assert rc == 2 and "--owner-auth" in err
    assert host.run(capsys, "policy", "install", str(v2), "--owner-auth", str(auth))[0] == 0
    with Tpm.open(host.tcti) as t:
        assert t.counter_read(POLICY_NV) == 2
    assert host.run(capsys, "unseal", "--check")[0] == 0
    # A second --export-owner-auth without the current one: refused, nothing written.
    rc, _, err = host.run(
        capsys, "provision", "--allow-unbound", "--export-owner-auth", str(host.root / "o2")
    )
    assert rc == 2 and "--owner-auth" in err
    assert not (host.root / "o2").exists()


def test_force_needs_the_owner_auth(host: Host, capsys) -> None:
    auth = host.root / "owner.auth"
    assert (
        host.run(capsys, "provision", "--allow-unbound", "--export-owner-auth", str(auth))[0] == 0
    )
    master = host.root / "attacker.key"
    master.write_bytes(bytes(range(32)))
    rc, _, err = host.run(
        capsys,
        *PROVISION,
        "--force",
        "--master-from",
        str(master),
    )
    assert rc == 2 and "prove ownership" in err
    assert unseal.unseal_master(host.cfg()) != master.read_bytes()
    wrong = host.root / "wrong.auth"
    wrong.write_bytes(bytes(32))
    rc, _, err = host.run(
        capsys,
        *PROVISION,
        "--force",
        "--master-from",
        str(master),
        "--owner-auth",
        str(wrong),
    )
    assert rc == 2 and "refused the authorization" in err
    assert unseal.unseal_master(host.cfg()) != master.read_bytes()
    rc, _, err = host.run(
        capsys,
        *PROVISION,
        "--force",
        "--master-from",
        str(master),
        "--owner-auth",
        str(auth),
    )
    assert rc == 0, err
    assert unseal.unseal_master(host.cfg()) == master.read_bytes()


def test_uninitialised_counter_is_an_error_not_zero(swtpm) -> None:
    with Tpm.open(swtpm.tcti) as t:
        t._nv_define(0x01500030, NV_BASE | pol.NV_TPM_NT_COUNTER, 8)
        with pytest.raises(TpmUnavailable, match="never initialised"):
            t.counter_read(0x01500030)


def test_provision_migrates_an_old_policy_counter(host: Host, capsys) -> None:
    with Tpm.open(host.tcti) as t:  # the layout before this change: AUTHWRITE
        t._nv_define(POLICY_NV, NV_BASE | pol.NV_TPM_NT_COUNTER, 8)
        t.counter_increment(POLICY_NV)
        t.counter_advance_to(POLICY_NV, 3)
        with pytest.raises(UsageError, match="older host-recover layout"):
            t.ensure_counter(POLICY_NV, orderly=False, attrs=pol.POLICY_COUNTER_ATTRS)
    rc, out, err = host.run(capsys, *PROVISION, "--json")
    assert rc == 0, err
    assert json.loads(out)["counters_migrated"] == ["policy_nv"]
    with Tpm.open(host.tcti) as t:
        assert t.counter_read(POLICY_NV) >= 3
        assert t.nv_attributes(POLICY_NV) == pol.POLICY_COUNTER_ATTRS | pol.NV_WRITTEN


# --- finding 6: pinned objects ---------------------------------------------------------


def test_provision_pins_the_srk_the_sealed_object_and_the_key_id(host: Host, capsys) -> None:
    from recover.core import imageformat, keys

    priv = _signed_conf(host, capsys)
    master = host.root / "master.key"
    rc, out, err = host.run(
        capsys,
        *PROVISION,
        "--json",
        "--export-master",
        str(master),
    )
    assert rc == 0, err
    pins = Path(json.loads(out)["pinned"])
    assert pins == host.root / "host-recover.conf.d" / "50-provisioned.conf"
    cfg = host.cfg()  # the drop-in is part of the configuration now
    with Tpm.open(host.tcti) as t:
        assert cfg.tpm_srk_name == t.object_name(0x81000001).hex()
        assert cfg.tpm_seal_name == t.object_name(0x81000002).hex()
    kid = imageformat.key_id(keys.image_root_key(read_key_file(master, "master secret"))).hex()
    assert cfg.tpm_image_key_id == kid
    _sign(host, capsys, priv, host.root / "policy.json", 1)
    assert host.run(capsys, "unseal", "--check")[0] == 0


def _replace_srk(tcti: str, owner_auth: bytes = b"") -> None:
    """Root in the normal OS (empty owner auth): another key at the SRK's handle."""
    from tpm2_pytss import ESYS_TR, TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE

    from recover.tpm.seal import SRK_ATTRS

    with Tpm.open(tcti) as t:
        t.use_owner_auth(owner_auth)
        old = t.ectx.tr_from_tpmpublic(0x81000001)
        t.ectx.evict_control(ESYS_TR.OWNER, old, 0x81000001)
        tmpl = TPM2B_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=SRK_ATTRS)
        tmpl.publicArea.unique.ecc.x = b"attacker"  # another unique: another key
        key, *_ = t.ectx.create_primary(TPM2B_SENSITIVE_CREATE(), tmpl, ESYS_TR.OWNER)
        t.ectx.evict_control(ESYS_TR.OWNER, key, 0x81000001)
        t.ectx.flush_context(key)


def test_a_replaced_srk_is_refused_before_salting(host: Host, capsys) -> None:
    assert host.run(capsys, *PROVISION)[0] == 0
    assert host.run(capsys, "unseal", "--check")[0] == 0
    _replace_srk(host.tcti)
    rc, _, err = host.run(capsys, "unseal", "--check")
    assert rc == 5 and "storage key at 0x81000001 is not the provisioned one" in err


def test_a_replaced_sealed_object_is_refused(host: Host, capsys) -> None:
    """Root replaces the sealed object (empty owner auth) with one holding its own master:
    the pinned image key id refuses what it unseals (exit 5)."""
    assert host.run(capsys, *PROVISION)[0] == 0
    with Tpm.open(host.tcti) as t:
        t.seal_master(
            bytes(range(32)), srk_handle=0x81000001, seal_handle=0x81000002,
            selection="sha256:0,2,4,7,16", lock_pcr=14, policy="pcr",
            policy_pubkey_pem=None, force=True,
        )  # fmt: skip
    rc, _, err = host.run(capsys, "unseal", "--check")
    assert rc == 5 and "not the provisioned" in err


def test_pins_never_create_the_configuration_directory(
    swtpm, tmp_path: Path, capsys, monkeypatch
) -> None:
    """HOST_RECOVER_CONFIG naming a file in a missing directory: provision works, warns
    and reports the pins, and creates no directory."""
    from recover.cli import main

    conf = tmp_path / "missing" / "host-recover.conf"
    monkeypatch.setenv("HOST_RECOVER_CONFIG", str(conf))
    capsys.readouterr()
    rc = main.main(["--tcti", swtpm.tcti, *PROVISION, "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["pinned"] is None and set(doc["pins"]) == {"srk_name", "image_key_id"}
    assert "could not write the pinned names" in err
    assert not conf.parent.exists()


def test_status_shows_owner_auth_and_pins(host: Host, capsys) -> None:
    assert (
        host.run(
            capsys, "provision", "--allow-unbound", "--export-owner-auth", str(host.root / "o")
        )[0]
        == 0
    )
    rc, out, _ = host.run(capsys, "status", "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["owner_auth_set"] is True
    assert doc["pins"]["srk_name"] == "match" and doc["pins"]["seal_name"] == "not pinned"
    _replace_srk(host.tcti, read_key_file(host.root / "o", "owner auth"))
    rc, out, _ = host.run(capsys, "status")
    assert rc == 0 and "owner auth: set" in out and "srk_name MISMATCH" in out
    assert "orderly_nv protected, record_nv protected" in out


def test_rollback_counter_needs_the_owner_auth(host: Host, capsys) -> None:
    """Root in the normal OS cannot raise the image floor past the current image (a
    permanent denial of recovery); the operator can, with the owner auth."""
    from tpm2_pytss import ESYS_TR, TSS2_Exception

    auth = host.root / "owner.auth"
    assert (
        host.run(capsys, "provision", "--allow-unbound", "--export-owner-auth", str(auth))[0] == 0
    )
    rollback = 0x01500010
    with Tpm.open(host.tcti) as t:
        assert t.nv_attributes(rollback) == pol.ROLLBACK_COUNTER_ATTRS | pol.NV_WRITTEN
        nv = t.ectx.tr_from_tpmpublic(rollback)
        for auth_handle in (nv, ESYS_TR.OWNER):
            with pytest.raises(TSS2_Exception):
                t.ectx.nv_increment(nv, auth_handle=auth_handle)
        assert t.counter_read(rollback) == 1
    rc, _, err = host.run(capsys, "image", "floor", "3")
    assert rc == 2 and "--owner-auth" in err
    assert host.run(capsys, "image", "floor", "3", "--owner-auth", str(auth))[0] == 0
    assert (
        host.run(capsys, "image", "floor", "2", "--owner-auth", str(auth))[0] == 0
    )  # never lowers
    assert unseal.rollback_version(host.cfg()) == 3


def test_provision_migrates_an_old_rollback_counter(host: Host, capsys) -> None:
    rollback = 0x01500010
    with Tpm.open(host.tcti) as t:  # the layout before this change: AUTHWRITE
        t._nv_define(rollback, NV_BASE | pol.NV_TPM_NT_COUNTER, 8)
        t.counter_increment(rollback)
        t.counter_advance_to(rollback, 5)
    rc, out, err = host.run(capsys, *PROVISION, "--json")
    assert rc == 0, err
    assert json.loads(out)["counters_migrated"] == ["rollback_nv"]
    assert unseal.rollback_version(host.cfg()) >= 5


# --- finding 5: the evidence indices (hybrid counter, decision record) -----------------

ORDERLY_NV, RECORD_NV = 0x01500011, 0x01500012


def _lock(host: Host) -> pol.WriteLock:
    cfg = host.cfg()
    return pol.WriteLock.of(cfg.tpm_pcrs, cfg.tpm_lock_pcr)


def test_provision_migrates_the_evidence_indices_to_their_write_policy(host: Host, capsys) -> None:
    """Indices of the older layout (AUTHWRITE: any root process wrote them) become
    policy-written, with the owner auth once it is set."""
    auth = host.root / "owner.auth"
    with Tpm.open(host.tcti) as t:  # the layout before this change
        t._nv_define(ORDERLY_NV, NV_BASE | pol.NV_TPM_NT_COUNTER | pol.NV_ORDERLY, 8)
        t.counter_increment(ORDERLY_NV)
        t.nv_blob_write(RECORD_NV, b'{"action":"normal"}')
        assert t.nv_attributes(RECORD_NV) & pol.NV_AUTHWRITE
    rc, out, err = host.run(capsys, *PROVISION, "--json")
    assert rc == 0, err
    assert sorted(json.loads(out)["counters_migrated"]) == ["orderly_nv", "record_nv"]
    rc, out, err = host.run(capsys, "status", "--json")
    doc = json.loads(out)
    assert doc["evidence_write_policy"] == {"orderly_nv": "protected", "record_nv": "protected"}
    assert doc["orderly_counter"] is None  # not initialised until a payload writes it
    lock = _lock(host)
    with Tpm.open(host.tcti) as t:
        assert t.nv_layout(ORDERLY_NV) == (
            pol.HYBRID_COUNTER_ATTRS,
            lock.digest(pol.CC_NV_INCREMENT),
        )
        assert t.nv_layout(RECORD_NV) == (pol.RECORD_BLOB_ATTRS, lock.digest(pol.CC_NV_WRITE))
        assert t.nv_blob_read(RECORD_NV) is None
    # idempotent; with the owner auth set, another run still finds them in place
    assert (
        host.run(capsys, "provision", "--allow-unbound", "--export-owner-auth", str(auth))[0] == 0
    )
    rc, out, _ = host.run(capsys, *PROVISION, "--json")
    assert rc == 0 and json.loads(out)["counters_migrated"] == []


def test_evidence_indices_are_written_only_before_the_lock(host: Host, capsys) -> None:
    """Neither the index's (empty) auth nor the (empty) owner auth writes them; their
    write policy does only while the lock PCR is at its reset value: the normal OS (lock
    PCR extended) can forge neither the crash signal nor the previous decision."""
    from tpm2_pytss import ESYS_TR, TSS2_Exception

    assert host.run(capsys, *PROVISION)[0] == 0
    lock = _lock(host)
    with Tpm.open(host.tcti) as t:
        t.nv_blob_write(RECORD_NV, b'{"action":"normal"}', lock=lock)  # the payload
        assert t.counter_increment(ORDERLY_NV, lock=lock) >= 1
        before = t.counter_read(ORDERLY_NV)
        for index in (ORDERLY_NV, RECORD_NV):
            nv = t.ectx.tr_from_tpmpublic(index)
            for auth_handle in (nv, ESYS_TR.OWNER):
                with pytest.raises(TSS2_Exception):
                    if index == ORDERLY_NV:
                        t.ectx.nv_increment(nv, auth_handle=auth_handle)
                    else:
                        t.ectx.nv_write(nv, b"\x00\x02{}", 0, auth_handle=auth_handle)
        # a policy session for the other command does not do either
        with pytest.raises(TSS2_Exception):
            session = t._write_policy_session(RECORD_NV, lock, pol.CC_NV_INCREMENT)
            nv = t.ectx.tr_from_tpmpublic(RECORD_NV)
            t.ectx.nv_write(nv, b"\x00\x02{}", 0, auth_handle=nv, session1=session)
        t.pcr_extend(lock.pcr, b"\x01" * 32)  # the payload's lock
        with pytest.raises(PolicyMismatch, match="only the boot payload"):
            t.counter_increment(ORDERLY_NV, lock=lock)
        with pytest.raises(PolicyMismatch, match="only the boot payload"):
            t.nv_blob_write(RECORD_NV, b'{"action":"forged"}', lock=lock)
        assert t.counter_read(ORDERLY_NV) == before
        assert t.nv_blob_read(RECORD_NV) == b'{"action":"normal"}'


# --- finding 10: credential store anti-rollback ----------------------------------------

CREDENTIALS_NV = 0x01500014


def _cred_add(host: Host, capsys, name: str, *extra: str) -> tuple[int, str, str]:
    value = host.root / f"{name}.value"
    value.write_bytes(name.encode())
    return host.run(capsys, "credential", "add", name, str(value), *extra)


def test_credential_writes_raise_the_floor_with_the_owner_auth(host: Host, capsys) -> None:
    """provision defines the floor without a value (no floor yet); `credential add`
    raises it to the generation it writes; once the owner auth is set only with
    --owner-auth (without it the store is written and the floor stays, a warning)."""
    from recover.core.credstore import require_generation
    from recover.errors import IntegrityError
    from recover.store import credentials

    auth = host.root / "owner.auth"
    host.conf.write_text(host.conf.read_text() + f"[store]\ncredentials = {host.root / 'c.hrc'}\n")
    assert host.run(capsys, *PROVISION)[0] == 0
    rc, out, _ = host.run(capsys, "status", "--json")
    assert json.loads(out)["credentials_floor"] is None
    assert _cred_add(host, capsys, "a")[0] == 0
    cfg = host.cfg()
    with Tpm.open(host.tcti) as t:
        first = credentials.tpm_floor(t, cfg)
        assert t.nv_attributes(CREDENTIALS_NV) == pol.CREDENTIALS_COUNTER_ATTRS | pol.NV_WRITTEN
    master = unseal.unseal_master(cfg)
    assert credentials.load(cfg.store_credentials, master).generation == first
    assert (
        host.run(capsys, "provision", "--allow-unbound", "--export-owner-auth", str(auth))[0] == 0
    )
    rc, _, err = _cred_add(host, capsys, "b")
    assert rc == 0 and "--owner-auth" in err
    rc, out, _ = host.run(capsys, "status", "--json")
    assert json.loads(out)["credentials_floor"] == first  # not raised without the auth
    rc, out, err = _cred_add(host, capsys, "c", "--owner-auth", str(auth))
    assert rc == 0, err
    store = credentials.load(cfg.store_credentials, master)
    assert store.generation == first + 2 and f"TPM floor {first + 2}" in out
    rc, out, _ = host.run(capsys, "status")
    assert f"credentials floor: {first + 2}" in out
    with pytest.raises(IntegrityError, match="rolled back"):
        require_generation(dataclasses.replace(store, generation=first + 1), first + 2, "s")
    # root in the normal OS cannot raise (or reset) the floor without the owner auth
    from tpm2_pytss import ESYS_TR, TSS2_Exception

    with Tpm.open(host.tcti) as t:
        nv = t.ectx.tr_from_tpmpublic(CREDENTIALS_NV)
        for auth_handle in (nv, ESYS_TR.OWNER):
            with pytest.raises(TSS2_Exception):
                t.ectx.nv_increment(nv, auth_handle=auth_handle)


# --- finding 5: owner auth by default -------------------------------------------------


def test_provision_on_an_empty_owner_auth_needs_an_explicit_choice(host: Host, capsys) -> None:
    """A TPM whose owner auth is empty: provision refuses (exit 2, nothing changed)
    unless told --export-owner-auth FILE (recommended) or --no-owner-auth."""
    auth = host.root / "owner.auth"
    rc, _, err = host.run(capsys, "provision", "--allow-unbound")
    assert rc == 2 and "--export-owner-auth" in err and "--no-owner-auth" in err
    with Tpm.open(host.tcti) as t:
        assert t.persistent_handles() == [] and t.nv_indices() == []
    rc, _, err = host.run(
        capsys, "provision", "--allow-unbound", "--no-owner-auth", "--export-owner-auth", str(auth)
    )
    assert rc == 2 and "exclude each other" in err and not auth.exists()
    rc, out, _ = host.run(capsys, "provision", "--allow-unbound", "--no-owner-auth", "--json")
    assert rc == 0 and json.loads(out)["owner_auth_set"] is False
    assert (
        host.run(capsys, "provision", "--allow-unbound", "--export-owner-auth", str(auth))[0] == 0
    )
    assert auth.stat().st_mode & 0o777 == 0o600
    rc, out, _ = host.run(capsys, "provision", "--allow-unbound", "--json")  # set: no choice
    assert rc == 0 and json.loads(out)["owner_auth_set"] is True
