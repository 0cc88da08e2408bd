"""The secure-store CLI end to end against a real swtpm: provision (idempotent, --force,
exports), status --json, unseal --check exit codes, attest, policy keygen/sign.

Seals to PCRs 0,2,4,7,16 with lock PCR 14; an orderly TPM restart resets them between tests.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recover import config
from recover.cli import main
from recover.core import keys
from recover.store import unseal
from recover.store.keyfile import read_key_file
from recover.tpm import Tpm

# provision on a test TPM: no event log, and the owner auth left empty on purpose
PROVISION = ("provision", "--no-owner-auth", "--allow-unbound")

pytestmark = pytest.mark.tpm


def _reset(swtpm) -> None:
    """Fresh PCRs for the next test: an orderly TPM restart (the lock PCR, 14, cannot be
    reset otherwise — that is the point of it)."""
    swtpm.reboot_orderly()


def _extend(tcti: str, pcr: int) -> None:
    with Tpm.open(tcti) as t:
        t.pcr_extend(pcr, b"changed")


class Host:
    def __init__(self, tcti: str, root: Path) -> None:
        self.tcti = tcti
        self.swtpm: Any = None  # the SwTpm behind tcti, for restarts
        self.root = root
        self.conf = root / "host-recover.conf"
        self.write_conf("pcr")

    def write_conf(self, policy: str) -> None:
        self.conf.write_text(
            "[tpm]\n"
            f"tcti = {self.tcti}\n"
            "pcrs = sha256:0,2,4,7,16\n"
            "lock_pcr = 14\n"
            f"policy = {policy}\n"
            f"policy_pubkey = {self.root / 'policy-pub.pem'}\n"
            f"policy_file = {self.root / 'policy.json'}\n"
            "[peers]\n"
            "host_id = host-a\n"
        )

    def run(self, capsys, *argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = main.main(["--config", str(self.conf), *argv])
        out, err = capsys.readouterr()
        return rc, out, err

    def restart_tpm(self) -> None:
        """An orderly TPM restart: fresh PCRs (swtpm comes back on a new port)."""
        old = self.tcti
        self.swtpm.reboot_orderly()
        self.tcti = self.swtpm.tcti
        self.conf.write_text(self.conf.read_text().replace(old, self.tcti))

    def cfg(self) -> config.Config:
        return config.load(self.conf)


@pytest.fixture
def host(swtpm_module, tmp_path: Path) -> Iterator[Host]:
    _reset(swtpm_module)
    h = Host(swtpm_module.tcti, tmp_path)
    h.swtpm = swtpm_module
    yield h


def test_provision_status_unseal(host: Host, capsys) -> None:
    image_key, master = host.root / "image.key", host.root / "master.key"
    rc, out, _ = host.run(
        capsys, *PROVISION, "--force", "--json",
        "--export-image-key", str(image_key), "--export-master", str(master),
    )  # fmt: skip
    assert rc == 0
    doc = json.loads(out)
    assert doc["secret"] in ("sealed", "replaced")
    for f in (image_key, master):
        assert f.stat().st_mode & 0o777 == 0o600
    secret = read_key_file(master, "master secret")  # exported with its kind
    assert read_key_file(image_key, "image key") == keys.image_root_key(secret)
    assert unseal.unseal_master(host.cfg()) == secret

    # Idempotent: a second run keeps the secret and creates nothing.
    rc, out, _ = host.run(capsys, *PROVISION, "--json")
    assert rc == 0
    doc = json.loads(out)
    assert doc.pop("pinned") == str(host.root / "host-recover.conf.d" / "50-provisioned.conf")
    assert set(doc.pop("pins")) == {"srk_name", "image_key_id"}
    assert doc | {"selection": None} == {
        "srk_created": False, "secret": "kept", "counters_created": [],
        "counters_migrated": [], "owner_auth_set": False,
        "policy": "pcr", "selection": None, "lock_pcr": 14,
    }  # fmt: skip
    # Exports only when a secret is created now: refuse, write nothing.
    rc, _, err = host.run(
        capsys,
        *PROVISION,
        "--export-image-key",
        str(host.root / "k2"),
    )
    assert rc == 2 and "already sealed" in err
    assert not (host.root / "k2").exists()

    rc, out, _ = host.run(capsys, "status", "--json")
    assert rc == 0
    st = json.loads(out)
    assert st["tpm"]["reachable"] is True
    assert isinstance(st["orderly"], bool)
    assert st["lockout"]["counter"] == 0
    assert {"0x81000001", "0x81000002", "0x81010002"} <= set(st["handles"]["persistent"])
    assert st["sealed"]["satisfied"] is True and st["sealed"]["policy"] == "pcr"
    assert isinstance(st["rollback_counter"], int) and st["rollback_counter"] >= 1
    assert unseal.rollback_version(host.cfg()) == st["rollback_counter"]

    rc, out, err = host.run(capsys, "unseal", "--check")
    assert rc == 0
    assert read_key_file(master, "master secret").hex() not in out + err

    _extend(host.tcti, 16)
    rc, out, _ = host.run(capsys, "status", "--json")
    assert json.loads(out)["sealed"]["satisfied"] is False
    assert rc == 4  # status's exit code: the secret cannot be unsealed (PCR mismatch)
    rc, out, err = host.run(capsys, "status")
    assert rc == 4 and "cannot be unsealed" in err and "None" not in out
    rc, out, err = host.run(capsys, "unseal", "--check")
    assert rc == 4 and "do not satisfy" in err and out == ""

    host.restart_tpm()
    _extend(host.tcti, 14)  # the lock PCR: already unsealed this boot
    rc, out, _ = host.run(capsys, "status", "--json")
    assert "lock PCR 14" in json.loads(out)["sealed"]["reason"]
    # the policy's PCRs match: a boot like this one unseals (its lock PCR starts at 0)
    assert rc == 0 and json.loads(out)["sealed"]["pcrs_match"] is True
    rc, out, _ = host.run(capsys, "status")
    assert rc == 0 and "unsealable: at boot, not now (lock PCR 14" in out
    assert host.run(capsys, "unseal", "--check")[0] == 4


def test_force_and_master_from(host: Host, capsys) -> None:
    given = host.root / "given.key"
    given.write_bytes(bytes(range(100, 132)))
    rc, _, _ = host.run(
        capsys,
        *PROVISION,
        "--force",
        "--master-from",
        str(given),
    )
    assert rc == 0
    assert unseal.unseal_master(host.cfg()) == given.read_bytes()
    rc, _, err = host.run(capsys, *PROVISION, "--master-from", str(given))
    assert rc == 2 and "--force" in err
    short = host.root / "short.key"
    short.write_bytes(b"x" * 31)
    assert (
        host.run(
            capsys,
            *PROVISION,
            "--force",
            "--master-from",
            str(short),
        )[0]
        == 2
    )
    assert unseal.unseal_master(host.cfg()) == given.read_bytes()


def test_signed_policy_cli(host: Host, capsys) -> None:
    priv = host.root / "policy.key"
    assert host.run(capsys, "policy", "keygen", "--private", str(priv),
                    "--public", str(host.root / "policy-pub.pem"))[0] == 0  # fmt: skip
    assert priv.stat().st_mode & 0o777 == 0o600
    host.write_conf("signed")
    assert host.run(capsys, *PROVISION, "--force")[0] == 0
    assert host.run(capsys, "unseal", "--check")[0] == 4  # no policy signed yet

    assert host.run(capsys, "policy", "sign", "--allow-unbound", "--key", str(priv))[0] == 0
    first = json.loads((host.root / "policy.json").read_text())
    assert host.run(capsys, "unseal", "--check")[0] == 0
    rc, out, _ = host.run(capsys, "status", "--json")
    assert json.loads(out)["sealed"]["policy"] == "signed"
    assert json.loads(out)["sealed"]["satisfied"] is True

    # A planned change: sign the new values (here read from a file), no re-sealing.
    shutil.copy(host.root / "policy.json", host.root / "old-policy.json")
    _extend(host.tcti, 16)
    assert host.run(capsys, "unseal", "--check")[0] == 4
    with Tpm.open(host.tcti) as t:
        values = t.pcr_read("sha256:0,2,4,7,16")
    vfile = host.root / "values.json"
    vfile.write_text(json.dumps({"sha256": {str(k): v.hex() for k, v in values["sha256"].items()}}))
    sign = ("policy", "sign", "--allow-unbound", "--key", str(priv), "--values", str(vfile))
    assert host.run(capsys, *sign)[0] == 0
    second = json.loads((host.root / "policy.json").read_text())
    assert second["policy_version"] == first["policy_version"] + 1
    assert host.run(capsys, "unseal", "--check")[0] == 0
    # Installing it raises the policy counter (unsealing does not).
    assert host.run(capsys, "policy", "install", str(host.root / "policy.json"))[0] == 0

    # Back to the old PCR values with the old policy: stale, the counter moved on.
    host.restart_tpm()
    shutil.copy(host.root / "old-policy.json", host.root / "policy.json")
    rc, _, err = host.run(capsys, "unseal", "--check")
    assert rc == 4 and "stale" in err

    # A tampered file: exit 4 as well (the version is part of the approved digest).
    doc = json.loads((host.root / "old-policy.json").read_text())
    doc["policy_version"] = 99
    (host.root / "policy.json").write_text(json.dumps(doc))
    rc, _, err = host.run(capsys, "unseal", "--check")
    assert rc == 4 and "approved digest does not match" in err
    doc = json.loads((host.root / "old-policy.json").read_text())
    doc["signature"] = doc["payload_signature"]
    (host.root / "policy.json").write_text(json.dumps(doc))
    rc, _, err = host.run(capsys, "unseal", "--check")
    assert rc == 4 and "bad signature" in err


def test_attest_prints_an_inventory_entry(host: Host, capsys) -> None:
    from recover.core.inventory import parse_pcrs

    assert host.run(capsys, *PROVISION)[0] == 0
    rc, out, _ = host.run(
        capsys, "attest", "--address", "127.0.0.1:7469", "--failure-domain", "rack-1"
    )
    assert rc == 0
    entry = json.loads(out)
    assert entry["id"] == "host-a" and entry["failure_domain"] == "rack-1"
    assert entry["ak_pub"].startswith("-----BEGIN PUBLIC KEY-----")
    with Tpm.open(host.tcti) as t:
        assert parse_pcrs(entry["pcrs"], "attest") == t.pcr_read("sha256:0,2,4,7,16")


def test_unreachable_tpm_exit_3(tmp_path: Path, capsys) -> None:
    from testing.ports import free_port_pair

    h = Host(f"swtpm:host=127.0.0.1,port={free_port_pair()}", tmp_path)
    h.conf.write_text(h.conf.read_text().replace("[peers]", "timeout = 0.2\n[peers]"))
    rc, out, _ = h.run(capsys, "status", "--json")
    assert rc == 3 and json.loads(out)["tpm"]["reachable"] is False
    rc, _, err = h.run(capsys, "unseal", "--check")
    assert rc == 3 and "cannot connect" in err


DATA = Path(__file__).parents[1] / "unit" / "data" / "eventlog"


def test_provision_and_sign_refuse_an_unbound_selection(host: Host, capsys) -> None:
    """No event log (a test TPM, an unmeasured boot) or a log whose command line lies
    outside tpm.pcrs: exit 2, one error line, a hint; nothing sealed or signed."""
    nolog = ("--set", f"tpm.event_log={host.root / 'none'}")
    grub = ("--set", f"tpm.event_log={DATA / 'grub.bin'}", "--set", "tpm.pcrs=sha256:0,2,4,7,9")
    rc, _, err = host.run(capsys, *nolog, "provision", "--no-owner-auth", "--force")
    assert rc == 2 and "error: refusing to seal to tpm.pcrs: no event log at" in err
    assert "--allow-unbound" in err and "Traceback" not in err
    assert len([x for x in err.splitlines() if "error:" in x]) == 1
    master = str(host.root / "m")
    rc, _, err = host.run(
        capsys, *grub, "provision", "--no-owner-auth", "--force", "--export-master", master
    )
    assert rc == 2 and "command line is measured into PCR 8 (grub)" in err and "add 8" in err
    assert not (host.root / "m").exists()  # refused before anything is written or sealed
    rc, out, _ = host.run(capsys, *grub, "status", "--json")
    doc = json.loads(out)["binding"]
    assert doc["boot_path"] == "grub" and doc["bound"] is False
    assert doc["cmdline"] == [8] and doc["selected"]["cmdline"] == []
    assert [p["add"] for p in doc["problems"] if p["component"] == "cmdline"] == [8]
    rc, out, _ = host.run(capsys, *grub, "status")
    assert "binding:    grub: kernel 9, initramfs 9, command line - (NOT BOUND: " in out
    assert out.rstrip().endswith("add 8)")

    rc, out, err = host.run(
        capsys, *nolog, "provision", "--no-owner-auth", "--force", "--allow-unbound", "--json"
    )
    assert rc == 0 and json.loads(out)["binding"]["bound"] is False
    assert "anyway (--allow-unbound)" in err

    priv = host.root / "policy.key"
    host.run(capsys, "policy", "keygen", "--private", str(priv),
             "--public", str(host.root / "policy-pub.pem"))  # fmt: skip
    rc, _, err = host.run(capsys, *grub, "policy", "sign", "--key", str(priv))
    assert rc == 2 and "refusing to sign a policy for tpm.pcrs" in err and "add 8" in err
    assert not (host.root / "policy.json").exists()
