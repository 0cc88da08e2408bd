"""`host-recover inventory sign|verify|show` through `python -m recover`: exit codes,
one error line and a hint, atomic output, the version rule, the baked-dir refusal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_image_cli import run as image_cli_run


def run(*argv: str | Path, conf: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m recover` (test_image_cli.run), optionally with a configuration file."""
    if conf is None:
        return image_cli_run(*argv)
    env = dict(os.environ, HOST_RECOVER_CONFIG=conf)
    cmd = [sys.executable, "-m", "recover", *map(str, argv)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.fixture
def fleet(tmp_path: Path) -> dict[str, Path]:
    d = {n: tmp_path / n for n in ("fleet_key", "fleet_pem", "ak_key", "ak_pem")}
    for kind in ("fleet", "ak"):
        r = run("policy", "keygen", "--private", d[f"{kind}_key"], "--public", d[f"{kind}_pem"])
        assert r.returncode == 0, r.stderr
    src = {
        "version": 1,
        "hosts": [
            {
                "id": "web-01",
                "address": "10.0.0.1:7469",
                "failure_domain": "rack-1",
                "class": "web",
                "ak_pub": d["ak_pem"].read_text(),
            }
        ],
        "endorsements": [
            {"class": "web", "version": 1, "pcrs": {"sha256": {"7": "07" * 32}}, "note": "old"},
            {"class": "web", "version": 2, "pcrs": {"sha256": {"7": "17" * 32}}, "note": "new"},
        ],
        "floors": {"web": 2},
    }
    d["src"] = tmp_path / "src.json"
    d["src"].write_text(json.dumps(src))
    d["out"] = tmp_path / "out" / "inventory.json"
    d["out"].parent.mkdir()
    return d


def test_sign_verify_show(fleet: dict[str, Path]) -> None:
    f = fleet
    r = run("inventory", "sign", f["src"], "--key", f["fleet_key"], "--output", f["out"])
    assert r.returncode == 0, r.stderr
    assert oct(f["out"].stat().st_mode & 0o777) == "0o644"
    assert list(f["out"].parent.iterdir()) == [f["out"]]  # no temporary file left
    r = run("inventory", "verify", f["out"], "--key", f["fleet_pem"])
    assert r.returncode == 0 and r.stdout.startswith(f"ok: {f['out']}: inventory v1"), r.stderr
    assert "1 hosts, 2 endorsements (1 in force)" in r.stdout
    r = run("inventory", "show", f["out"], "--key", f["fleet_pem"], "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["hosts"][0]["accepted_versions"] == [2]
    assert [e["in_force"] for e in data["endorsements"]] == [False, True]
    r = run("inventory", "show", f["out"], "--key", f["fleet_pem"])
    assert "revoked (floor 2)" in r.stdout and "accepted v2" in r.stdout


def test_version_must_rise_and_nothing_partial_is_written(fleet: dict[str, Path]) -> None:
    f = fleet
    assert (
        run("inventory", "sign", f["src"], "--key", f["fleet_key"], "--output", f["out"]).returncode
        == 0
    )
    before = f["out"].read_bytes()
    r = run("inventory", "sign", f["src"], "--key", f["fleet_key"], "--output", f["out"])
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"host-recover: error: version 1 is not above {f['out']}'s version 1",
        "host-recover: hint: every signed inventory needs a new, higher version "
        "(anti-rollback); pass --inventory-version or raise SOURCE's version",
    ]
    assert f["out"].read_bytes() == before
    r = run("inventory", "sign", f["src"], "--key", f["fleet_key"], "--output", f["out"],
            "--inventory-version", "2")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(f["out"].read_bytes())["version"] == 2


@pytest.mark.parametrize(
    "argv,code,message",
    [
        (("verify", "{out}", "--key", "{ak_pem}"), 5, "signed by another key"),
        (("verify", "{out}", "--key", "{fleet_pem}", "--min-version", "3"), 5,
         "older than the accepted floor 3"),
        (("verify", "{out}"), 2, "no fleet public key"),
        (("verify", "{src}", "--key", "{fleet_pem}"), 5, "not a host-recover-inventory"),
        (("verify", "{out}.missing", "--key", "{fleet_pem}"), 2, "cannot read the signed"),
        (("verify", "{out}", "--key", "{ak_key}"), 2, "not an ECC P-256 public key"),
        (("sign", "{src}", "--key", "{fleet_pem}", "--output", "{out}.2"), 2, "cannot sign"),
        (("sign", "{out}", "--key", "{fleet_key}", "--output", "{out}.2"), 2, "unknown field"),
    ],
)  # fmt: skip
def test_errors(fleet: dict[str, Path], argv: tuple[str, ...], code: int, message: str) -> None:
    f = fleet
    assert (
        run("inventory", "sign", f["src"], "--key", f["fleet_key"], "--output", f["out"]).returncode
        == 0
    )
    names = {k: str(v) for k, v in f.items()}
    r = run("inventory", *(a.format(**names) if "{" in a else a for a in argv))
    assert r.returncode == code, r.stderr
    lines = r.stderr.splitlines()
    assert message in lines[0] and lines[0].startswith("host-recover: error: "), lines
    assert len(lines) == 2 and lines[1].startswith("host-recover: hint: "), lines
    assert not Path(f"{f['out']}.2").exists()


def test_tampered_file_exit_5(fleet: dict[str, Path]) -> None:
    f = fleet
    assert (
        run("inventory", "sign", f["src"], "--key", f["fleet_key"], "--output", f["out"]).returncode
        == 0
    )
    doc = json.loads(f["out"].read_text())
    doc["hosts"][0]["address"] = "10.6.6.6:7469"
    f["out"].write_text(json.dumps(doc))
    r = run("inventory", "verify", f["out"], "--key", f["fleet_pem"])
    assert r.returncode == 5 and "bad signature" in r.stderr


def test_private_key_never_read_from_the_baked_config_dir(
    fleet: dict[str, Path], tmp_path: Path
) -> None:
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "host-recover.conf").write_text("[peers]\nhost_id = a\n")
    key = conf / "fleet_key"
    key.write_bytes(fleet["fleet_key"].read_bytes())
    r = run("inventory", "sign", fleet["src"], "--key", key, "--output", fleet["out"],
            conf=str(conf / "host-recover.conf"))  # fmt: skip
    assert r.returncode == 2 and "baked into the initramfs" in r.stderr
    assert not fleet["out"].exists()
