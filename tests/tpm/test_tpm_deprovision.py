"""``host-recover deprovision`` against a real swtpm: without the confirmation flag it
lists and changes nothing; with a set owner auth it needs the right file before it
changes anything; then the sealed object, keys, NV indices, owner auth and pins are
gone, a provision afterwards starts from scratch, and a second run removes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.swtpm import SwTpm

from recover import config
from recover.cli import main
from recover.errors import TpmUnavailable
from recover.store import deprovision as dp
from recover.store import unseal
from recover.store.keyfile import KeyKind, read_key_file
from recover.tpm import Tpm

pytestmark = pytest.mark.tpm

CONFIRM = "--yes-destroy-tpm-objects"


class Host:
    def __init__(self, tpm: SwTpm, root: Path) -> None:
        self.tpm, self.root = tpm, root
        self.conf = root / "host-recover.conf"
        self.conf.write_text(
            f"[tpm]\ntcti = {tpm.tcti}\npcrs = sha256:0,2,4,7,16\nlock_pcr = 14\n"
            "[peers]\nhost_id = host-a\n"
        )

    def run(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = main.main(["--config", str(self.conf), *argv])
        out, err = capsys.readouterr()
        return rc, out, err

    def cfg(self) -> config.Config:
        return config.load(self.conf)

    def tpm_state(self) -> tuple[set[int], set[int], bool]:
        with Tpm.open(self.tpm.tcti) as t:
            return set(t.persistent_handles()), set(t.nv_indices()), t.owner_auth_set()


@pytest.fixture
def host(swtpm: SwTpm, tmp_path: Path) -> Iterator[Host]:
    yield Host(swtpm, tmp_path)


def _provisioned(host: Host, capsys: pytest.CaptureFixture[str], n: int = 1) -> Path:
    auth = host.root / f"owner{n}.auth"
    master = host.root / f"master{n}.key"
    rc, _, err = host.run(
        capsys, "provision", "--allow-unbound", "--export-owner-auth", str(auth),
        "--export-master", str(master),
    )  # fmt: skip
    assert rc == 0, err
    return auth


def test_deprovision_removes_everything_provision_created(host: Host, capsys) -> None:
    before_handles, before_nv, _ = host.tpm_state()
    auth = _provisioned(host, capsys)
    cfg = host.cfg()
    persistent, nv = dp.targets(cfg)
    handles, indices, auth_set = host.tpm_state()
    assert {h for _, h in persistent} <= handles and {i for _, i in nv} <= indices
    assert auth_set
    pins = host.root / "host-recover.conf.d" / "50-provisioned.conf"
    assert pins.exists()

    # Without the confirmation: the list, exit 2, nothing changed.
    rc, out, err = host.run(capsys, "deprovision")
    assert rc == 2 and out == ""
    assert "sealed object 0x81000002" in err and CONFIRM in err
    assert host.tpm_state() == (handles, indices, True)

    # A set owner auth must be given, and the right one, before anything changes.
    rc, _, err = host.run(capsys, "deprovision", CONFIRM)
    assert rc == 2 and "--owner-auth" in err
    wrong = host.root / "wrong.auth"
    wrong.write_bytes(bytes(32))
    rc, _, err = host.run(capsys, "deprovision", CONFIRM, "--owner-auth", str(wrong))
    assert rc != 0 and "owner" in err.lower()
    assert host.tpm_state() == (handles, indices, True)
    assert unseal.unseal_master(host.cfg()) == read_key_file(
        host.root / "master1.key", KeyKind.MASTER_SECRET
    )

    rc, out, err = host.run(capsys, "deprovision", CONFIRM, "--owner-auth", str(auth), "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["persistent"][0].startswith("sealed object")  # the secret goes first
    assert len(doc["persistent"]) == 3 and len(doc["nv"]) == 5
    assert doc["owner_auth_cleared"] is True and doc["pins_removed"] == str(pins)
    assert host.tpm_state() == (before_handles, before_nv, False)
    assert not pins.exists()
    with pytest.raises(TpmUnavailable):
        unseal.unseal_master(host.cfg())

    # Idempotent: nothing left to remove.
    rc, out, _ = host.run(capsys, "deprovision", CONFIRM, "--json")
    assert rc == 0 and json.loads(out)["persistent"] == [] and json.loads(out)["nv"] == []
    # And the TPM provisions again from scratch (an empty owner auth again).
    _provisioned(host, capsys, 2)


def test_deprovision_on_a_tpm_without_owner_auth_and_keep_flag(host: Host, capsys) -> None:
    rc, _, err = host.run(capsys, "provision", "--allow-unbound", "--no-owner-auth")
    assert rc == 0, err
    rc, out, err = host.run(capsys, "deprovision", CONFIRM, "--keep-owner-auth")
    assert rc == 0, err
    assert "deprovisioned: removed sealed object 0x81000002" in err
    handles, indices, auth_set = host.tpm_state()
    persistent, nv = dp.targets(host.cfg())
    assert not ({h for _, h in persistent} & handles) and not ({i for _, i in nv} & indices)
    assert auth_set is False
