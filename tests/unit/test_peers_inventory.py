"""Inventory validation: strict, one clear ConfigError line per problem. Pure."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from recover.core import inventory
from recover.errors import ConfigError

PEM = "-----BEGIN PUBLIC KEY-----\nMFkwEw\n-----END PUBLIC KEY-----\n"
GOOD = {
    "id": "a",
    "address": "10.0.0.1:7469",
    "failure_domain": "rack-1",
    "ak_pub": PEM,
    "pcrs": {"sha256": {"0": "00" * 32, "7": "ab" * 32}},
}


def with_(**changes: Any) -> dict:
    e = copy.deepcopy(GOOD)
    for k, v in changes.items():
        if v is None:
            del e[k]
        else:
            e[k] = v
    return e


def test_round_trip_and_lookup(tmp_path: Path) -> None:
    b = with_(id="b", address="[::1]:80", failure_domain="rack-2")
    c = with_(id="c")
    path = tmp_path / "peers.json"
    path.write_text(json.dumps({"version": 1, "peers": [GOOD, b, c]}))
    inv = inventory.load(path)
    assert len(inv) == 3 and inv.get("b") is not None
    assert inv.get("b").host == "::1" and inv.get("b").address == "[::1]:80"  # type: ignore[union-attr]
    assert inv.get("a").pcrs["sha256"][7] == bytes.fromhex("ab" * 32)  # type: ignore[union-attr]
    assert inv.get("a").selection == "sha256:0,7"  # type: ignore[union-attr]
    assert [p.id for p in inv.domain_peers("a")] == ["c"]
    assert [p.id for p in inv.domain_peers("not-listed")] == ["a", "b", "c"]
    assert inventory.parse(inv.to_json()) == inv
    assert inventory.parse([GOOD]).peers[0].id == "a"  # a bare list is fine too


def test_lock_pcr_is_optional_and_kept() -> None:
    """The peer's lock PCR (issue 9: "boot" answers need it at reset): default 15."""
    assert inventory.parse([GOOD]).peers[0].lock_pcr == 15
    peer = inventory.parse([with_(lock_pcr=14)]).peers[0]
    assert peer.lock_pcr == 14 and peer.to_json()["lock_pcr"] == 14


@pytest.mark.parametrize(
    "entry,message",
    [
        (with_(address=None), "missing address"),
        (with_(extra=1), "unknown field(s) extra"),
        (with_(id=""), ".id: must be a non-empty string"),
        (with_(address="10.0.0.1"), "is not host:port"),
        (with_(address="h:99999"), "is not host:port"),
        (with_(ak_pub="AAAA"), "not a PEM public key"),
        (with_(pcrs={}), "pcrs: must be an object"),
        (with_(pcrs={"md5": {"0": "00"}}), "unknown PCR bank 'md5'"),
        (with_(pcrs={"sha256": {"24": "00" * 32}}), "PCR index '24' is not 0..23"),
        (with_(pcrs={"sha256": {"0": "00" * 31}}), "sha256.0: expected 32 bytes of hex"),
        (with_(pcrs={"sha256": {"0": "zz" * 32}}), "expected 32 bytes of hex"),
        ("not an object", "must be an object"),
        (with_(lock_pcr=16), "lock_pcr: must be a non-resettable PCR 0..15"),
        (with_(lock_pcr="15"), "lock_pcr: must be a non-resettable PCR"),
        (with_(lock_pcr=True), "lock_pcr: must be a non-resettable PCR"),
        (with_(ek_pub="AAAA"), "ek_pub: not a PEM public key"),
        (with_(ek_cert=PEM), "ek_cert: not a PEM certificate"),
    ],
)
def test_bad_entries(entry: Any, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        inventory.parse([entry], "peers.json")
    assert message in e.value.message and "peers[0]" in e.value.message
    assert e.value.hint


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="duplicate id 'a'"):
        inventory.parse([GOOD, GOOD])
    with pytest.raises(ConfigError, match="unsupported version 2"):
        inventory.parse({"version": 2, "peers": []})
    with pytest.raises(ConfigError, match="unknown field"):
        inventory.parse({"hosts": []})
    with pytest.raises(ConfigError, match="expected"):
        inventory.parse({"version": 1})
    with pytest.raises(ConfigError, match="cannot read inventory"):
        inventory.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="invalid JSON"):
        inventory.load(tmp_path / "bad.json")
