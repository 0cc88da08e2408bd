"""The signed inventory (recover.core.endorse, docs/inventory.md): canonical form,
signature, wrong key, tampering, version floors, anti-rollback, several accepted states,
revocation. Pure: software ECDSA keys, real signatures, no TPM."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from testing.peersim import SoftwareAttestor, new_key, private_pem, pub_pem

from recover import config
from recover.core import endorse, evidence
from recover.core.protocol import (
    Outcome,
    Rejected,
    check_peer_quote,
    request_qualifying_data,
)
from recover.errors import ConfigError, IntegrityError, RollbackError
from recover.store import inventory as inventory_store

SEL = "sha256:0,7"
OLD = {"sha256": {"0": "01" * 32, "7": "07" * 32}}  # kernel N-1
NEW = {"sha256": {"0": "01" * 32, "7": "17" * 32}}  # kernel N (the update)
NEWER = {"sha256": {"0": "01" * 32, "7": "27" * 32}}  # not endorsed
PCR9 = {"sha256": {"0": "01" * 32, "7": "17" * 32, "9": "09" * 32}}  # another selection


FLEET = new_key()
FLEET_PRIV, FLEET_PUB = private_pem(FLEET), pub_pem(FLEET).encode()
AK = new_key()


def source(**changes: Any) -> dict[str, Any]:
    src: dict[str, Any] = {
        "version": 5,
        "hosts": [
            {
                "id": "web-01",
                "address": "10.0.0.1:7469",
                "failure_domain": "rack-1",
                "class": "web",
                "ak_pub": pub_pem(AK),
            },
            {
                "id": "db-01",
                "address": "[fd00::2]:7469",
                "failure_domain": "rack-1",
                "class": "db",
                "ak_pub": pub_pem(AK),
                "lock_pcr": 14,
            },
        ],
        "endorsements": [
            {"class": "web", "version": 1, "pcrs": OLD, "note": "kernel 6.1.0-27"},
            {"class": "web", "version": 2, "pcrs": NEW, "note": "kernel 6.1.0-28"},
            {"class": "db", "version": 1, "pcrs": PCR9},
        ],
        "floors": {},
        "comment": "test fleet",
    }
    src.update(changes)
    return src


def signed(src: dict[str, Any] | None = None, key: Any = None) -> bytes:
    doc = endorse.parse_document(src or source(), "src", fields=endorse.SOURCE_FIELDS)
    return endorse.sign(doc, private_pem(key) if key else FLEET_PRIV)


def edit(data: bytes, change: Any) -> bytes:
    doc = json.loads(data)
    change(doc)
    return json.dumps(doc).encode()


# --- canonical form -------------------------------------------------------------------


def test_canonical_form_is_exact() -> None:
    """Keys sorted by code point, no whitespace, UTF-8 as is, only JSON's escapes."""
    obj = {"b": [1, True, None], "a": {"é": 'x\ny"\\\u0001\u2028'}, "A": 0}
    assert endorse.canonical(obj) == (
        b'{"A":0,"a":{"\xc3\xa9":"x\\ny\\"\\\\\\u0001\xe2\x80\xa8"},"b":[1,true,null]}'
    )


def test_signature_survives_reformatting_but_not_a_change() -> None:
    data = signed()
    doc = json.loads(data)
    # another layout and key order of the same document: the same canonical bytes
    reordered = json.dumps(dict(reversed(list(doc.items()))), indent=7).encode()
    assert endorse.verify(reordered, FLEET_PUB).version == 5
    compact = json.dumps(doc, separators=(",", ":")).encode()
    assert endorse.verify(compact, FLEET_PUB).version == 5


@pytest.mark.parametrize(
    "bad,message",
    [
        (b'{"format": "host-recover-inventory", "format": "x"}', "duplicate key"),
        (b'{"format": "host-recover-inventory", "version": 1.0}', "integers only"),
        (b'{"format": "host-recover-inventory", "version": NaN}', "integers only"),
        (b'{"version": 12345678901234567890}', "digit number"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[" * 100_000, "nested too deeply"),
        (b'{"format": "other"}', "not a host-recover-inventory"),
        (b'{"format": "host-recover-inventory", "format_version": 2}', "format version 2"),
        (b'{"format": "host-recover-inventory", "format_version": 1}', "no signature"),
    ],
)
def test_unacceptable_bytes_are_integrity_errors(bad: bytes, message: str) -> None:
    with pytest.raises(IntegrityError, match=message):
        endorse.verify(bad, FLEET_PUB)


def test_oversized_file_refused_before_parsing() -> None:
    with pytest.raises(IntegrityError, match="larger than"):
        endorse.verify(b" " * (endorse.MAX_BYTES + 1), FLEET_PUB)


# --- signature and key ----------------------------------------------------------------


def test_round_trip() -> None:
    doc = endorse.verify(signed(), FLEET_PUB)
    assert doc.version == 5 and doc.comment == "test fleet"
    assert doc.key_id == endorse.key_id(FLEET_PUB)
    assert [h.id for h in doc.hosts] == ["web-01", "db-01"]
    inv = doc.inventory()
    assert inv.version == 5 and inv.get("db-01").lock_pcr == 14  # type: ignore[union-attr]
    assert inv.get("db-01").host == "fd00::2"  # type: ignore[union-attr]
    # the same Inventory interface as the baked one
    assert [p.id for p in inv.domain_peers("web-01")] == ["db-01"]


def test_wrong_key_is_refused_by_key_id() -> None:
    other = pub_pem(new_key()).encode()
    with pytest.raises(IntegrityError, match="signed by another key"):
        endorse.verify(signed(), other)


def test_signed_by_another_key_claiming_the_fleet_key_id() -> None:
    """An attacker's key, with the fleet key's id written in: the signature fails."""
    forged = edit(signed(key=new_key()), lambda d: d.update(key_id=endorse.key_id(FLEET_PUB)))
    with pytest.raises(IntegrityError, match="bad signature"):
        endorse.verify(forged, FLEET_PUB)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["hosts"][0].update(address="10.6.6.6:7469"),  # redirect a peer
        lambda d: d["hosts"][0].update(ak_pub=pub_pem(new_key())),  # swap its AK
        lambda d: d["hosts"][1].update(**{"class": "web"}),  # move a host to a class
        lambda d: d["hosts"].append(dict(d["hosts"][0], id="intruder")),  # add a host
        lambda d: d["endorsements"][0]["pcrs"]["sha256"].update({"7": "66" * 32}),
        lambda d: d["endorsements"].append(
            {"class": "web", "version": 9, "pcrs": {"sha256": {"0": "66" * 32}}}
        ),
        lambda d: d.update(floors={}),  # un-revoke
        lambda d: d.update(version=99),  # jump over a floor
        lambda d: d.update(
            signature=d["signature"][:-2] + f"{int(d['signature'][-2:], 16) ^ 1:02x}"
        ),
        lambda d: d.update(comment=d["comment"] + " "),
    ],
)
def test_any_tampering_breaks_the_signature(change: Any) -> None:
    data = signed(source(floors={"web": 2}))
    tampered = edit(data, change)
    assert json.loads(tampered) != json.loads(data), "the change changed nothing"
    with pytest.raises(IntegrityError, match="bad signature|no signature"):
        endorse.verify(tampered, FLEET_PUB)


def test_a_correctly_signed_but_invalid_document_is_a_config_error() -> None:
    """What the signature covers is validated after it: a signer's mistake, named."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    body = json.loads(signed())
    del body["signature"]
    body["hosts"][0]["pcrs"] = OLD  # a baked-style entry in a signed inventory
    sig = FLEET.sign(endorse.CONTEXT + endorse.canonical(body), ec.ECDSA(hashes.SHA256()))
    data = json.dumps({**body, "signature": sig.hex()}).encode()
    with pytest.raises(ConfigError, match=r"hosts\[0\]: unknown field\(s\) pcrs"):
        endorse.verify(data, FLEET_PUB)


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"version": 0}, "version: must be an integer 1"),
        ({"version": True}, "version: must be an integer"),
        ({"floors": {"web": -1}}, "floors.web"),
        ({"floors": {"bad class": 1}}, "a class is"),
        ({"hosts": "x"}, "hosts must be a list"),
        ({"extra": 1}, "unknown field"),
    ],
)
def test_source_validation(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        endorse.parse_document(source(**changes), "src", fields=endorse.SOURCE_FIELDS)


def test_duplicate_endorsement_and_host_refused() -> None:
    src = source()
    src["endorsements"].append({"class": "web", "version": 2, "pcrs": NEWER})
    with pytest.raises(ConfigError, match="endorsed twice"):
        endorse.parse_document(src, "src", fields=endorse.SOURCE_FIELDS)
    src = source()
    src["hosts"].append(copy.deepcopy(src["hosts"][0]))
    with pytest.raises(ConfigError, match="duplicate id 'web-01'"):
        endorse.parse_document(src, "src", fields=endorse.SOURCE_FIELDS)


# --- floors and rollback --------------------------------------------------------------


def test_version_floor() -> None:
    data = signed()
    assert endorse.verify(data, FLEET_PUB, floor=5).version == 5
    with pytest.raises(RollbackError, match="version 5 is older than the accepted floor 6"):
        endorse.verify(data, FLEET_PUB, floor=6)


def _cfg(tmp_path: Path, **changes: Any) -> config.Config:
    key = tmp_path / "inventory-pub.pem"
    key.write_bytes(FLEET_PUB)
    cfg = config.load(None, env={}).replace(
        inventory_key=str(key), inventory_file=str(tmp_path / "inventory.json")
    )
    return cfg.replace(**changes)


def test_rollback_refused_below_min_version_and_last_seen(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, inventory_min_version=3)
    Path(cfg.inventory_file).write_bytes(signed(source(version=4)))
    assert inventory_store.load(cfg).version == 4
    with pytest.raises(RollbackError):  # the measured floor
        inventory_store.load(cfg.replace(inventory_min_version=5))
    with pytest.raises(RollbackError, match="floor 7"):  # the last version seen
        inventory_store.load(cfg, last_seen=7)


def test_last_seen_is_carried_in_the_tpm_record() -> None:
    """The record's ``inv``: the newest version accepted, carried across boots that read
    no inventory (clean boots), never lowered."""

    def ev(prev: dict | None) -> dict:
        return {"signals": [{"name": "previous_decision", "value": prev}]}

    assert evidence.record_fields(ev(None)) == {}
    assert evidence.record_fields(ev(None), 4) == {"inv": 4}
    assert evidence.record_fields(ev({"inv": 6}), None) == {"inv": 6}  # clean boot: carried
    assert evidence.record_fields(ev({"inv": 6}), 4) == {"inv": 6}  # never lowered
    assert evidence.record_fields(ev({"inv": 6}), 8) == {"inv": 8}
    assert evidence.inventory_seen(ev({"inv": 6})) == 6
    for junk in ({"inv": "9"}, {"inv": True}, {"inv": -1}, {}, "text"):
        assert evidence.inventory_seen(ev(junk)) == 0  # type: ignore[arg-type]


def test_record_summary_carries_the_floor() -> None:
    from recover.boot.record import Outcome as Record
    from recover.boot.record import record_summary

    prev = {"signals": [{"name": "previous_decision", "value": {"inv": 3}}]}
    assert json.loads(record_summary(Record(evidence=prev)))["inv"] == 3
    assert json.loads(record_summary(Record(evidence=prev, inventory_version=5)))["inv"] == 5


def test_signed_file_read_safely(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    with pytest.raises(ConfigError, match="cannot read the signed inventory"):
        inventory_store.load(cfg)  # missing: an error, never "alone"
    assert inventory_store.configured(cfg)
    Path(cfg.inventory_file).symlink_to(tmp_path / "inventory-pub.pem")
    with pytest.raises(ConfigError, match="symbolic link"):
        inventory_store.load(cfg)


def test_baked_inventory_unchanged_when_no_key(tmp_path: Path) -> None:
    baked = tmp_path / "peers.json"
    entry = {k: v for k, v in source()["hosts"][0].items() if k != "class"}
    baked.write_text(json.dumps({"version": 1, "peers": [{**entry, "pcrs": OLD}]}))
    cfg = config.load(None, env={}).replace(peers_inventory=str(baked))
    inv = inventory_store.load(cfg)
    assert inv.version is None and inv.peers[0].states is None
    assert len(inv.peers[0].accepted) == 1


# --- accepted states: a quote matches any ---------------------------------------------


def _quote_check(peer: Any, pcrs: dict, selection: str = SEL) -> Any:
    from recover.core.inventory import parse_pcrs

    att = SoftwareAttestor(key=AK, pcrs=parse_pcrs(pcrs, "t"), selection=selection)
    qd = request_qualifying_data(b"n" * 32, "me")
    return check_peer_quote(peer, att.quote(qd), qd)


def test_several_accepted_states_newest_first() -> None:
    web = endorse.parse_signed(signed(), FLEET_PUB).get("web-01")
    assert web is not None and [e.version for e in web.states or ()] == [2, 1]
    assert web.pcrs == web.accepted[0]  # the newest is the entry's "pcrs"
    _quote_check(web, OLD)  # not yet updated: verifies
    _quote_check(web, NEW)  # updated yesterday: verifies too
    with pytest.raises(Rejected) as e:
        _quote_check(web, NEWER)
    assert e.value.outcome is Outcome.UNEXPECTED_PCRS
    assert "none of the 2 accepted state(s) of class 'web' (v2, 1)" in e.value.reason


def test_state_of_another_class_does_not_count() -> None:
    """db's endorsed state (selection 0,7,9) is no state for a web host."""
    web = endorse.parse_signed(signed(), FLEET_PUB).get("web-01")
    db = endorse.parse_signed(signed(), FLEET_PUB).get("db-01")
    _quote_check(db, PCR9, "sha256:0,7,9")
    with pytest.raises(Rejected, match="accepted state"):
        _quote_check(web, PCR9, "sha256:0,7,9")


def test_revoked_state_is_refused() -> None:
    web = endorse.parse_signed(signed(source(floors={"web": 2})), FLEET_PUB).get("web-01")
    assert web is not None and [e.version for e in web.states or ()] == [2]
    _quote_check(web, NEW)
    with pytest.raises(Rejected, match=r"none of the 1 accepted state\(s\) of class 'web' \(v2\)"):
        _quote_check(web, OLD)


def test_class_without_state_in_force_verifies_nothing() -> None:
    inv = endorse.parse_signed(signed(source(floors={"db": 2})), FLEET_PUB)
    db = inv.get("db-01")
    assert db is not None and db.accepted == ()
    with pytest.raises(Rejected, match="no accepted state: class 'db'"):
        _quote_check(db, PCR9, "sha256:0,7,9")


def test_forged_quote_is_still_forged_not_a_state_mismatch() -> None:
    web = endorse.parse_signed(signed(), FLEET_PUB).get("web-01")
    from recover.core.inventory import parse_pcrs

    att = SoftwareAttestor(key=new_key(), pcrs=parse_pcrs(NEW, "t"), selection=SEL)
    qd = request_qualifying_data(b"n" * 32, "me")
    with pytest.raises(Rejected) as e:
        check_peer_quote(web, att.quote(qd), qd)  # type: ignore[arg-type]
    assert e.value.outcome is Outcome.FORGED


# --- the dracut module bakes the public key, never a private one ----------------------


def test_dracut_bakes_the_fleet_public_key_only(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "host-recover.conf").write_text("[inventory]\nkey = x\n")
    (conf / "inventory-pub.pem").write_bytes(FLEET_PUB)
    (conf / "inventory.json").write_bytes(signed())  # the signed file: not baked
    module = Path(__file__).resolve().parents[2] / "dracut-module" / "module-setup.sh"
    script = (
        f'source {module}; inst_simple() {{ echo "INST $2"; }}; '
        'derror() { echo "ERR $*"; }; dwarn() { echo "WARN $*"; }; '
        f"_hr_install_config {conf}"
    )
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert "INST /etc/host-recover/inventory-pub.pem" in out.stdout
    assert "INST /etc/host-recover/inventory.json" not in out.stdout
    assert f"WARN host-recover: not baking {conf}/inventory.json" in out.stdout
    (conf / "inventory-pub.pem").write_bytes(FLEET_PRIV)
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)
    assert out.returncode == 1 and "holds a private key" in out.stdout


def test_a_matching_quote_costs_one_signature_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The state the reported values agree with is tried first; a quote matching none
    is checked against every state (and still rejected)."""
    from recover.core import attest

    calls: list[int] = []
    real = attest.verify_quote

    def counting(*a: Any, **k: Any) -> Any:
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(attest, "verify_quote", counting)
    web = endorse.parse_signed(signed(), FLEET_PUB).get("web-01")
    _quote_check(web, OLD)  # the oldest of the 2 states: tried first all the same
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(Rejected):
        _quote_check(web, NEWER)
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("files", "network"),
    [
        ({"host-recover.conf": "[tpm]\n"}, False),  # a host alone: no network in the initramfs
        ({"host-recover.conf": "[tpm]\n", "peers.json": "{}"}, True),
        # the signed inventory: only the fleet key is baked, the peers come from the store
        ({"host-recover.conf": "[inventory]\nkey = k\n", "inventory-pub.pem": "pub"}, True),
        ({"host-recover.conf": "[witness]\nendpoints = 10.0.2.120:2379\n"}, True),
        ({"host-recover.conf": "[witness]\nendpoints =\n"}, False),
    ],
)
def test_module_bakes_networking_when_the_boot_reaches_the_network(
    tmp_path: Path, files: dict[str, str], network: bool
) -> None:
    """CI found a host with the signed inventory booting with no network at all: the
    module looked for a baked peers.json only."""
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    module = Path(__file__).resolve().parents[2] / "dracut-module" / "module-setup.sh"
    script = f"source {module}; HOST_RECOVER_CONFDIR={tmp_path} _hr_has_peers"
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)
    assert (out.returncode == 0) is network, out.stderr
