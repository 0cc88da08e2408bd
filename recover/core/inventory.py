"""The peer inventory (cfg.peers_inventory): who may be asked and whose answers count.

    {"version": 1, "peers": [
      {"id": "host-a", "address": "10.0.0.1:7469", "failure_domain": "rack-1",
       "ak_pub": "-----BEGIN PUBLIC KEY-----\\n...", "pcrs": {"sha256": {"0": "hex", ...}},
       "lock_pcr": 15}
    ]}

``lock_pcr`` (optional, default 15) is the peer's tpm.lock_pcr: its replies may claim
``role: boot`` only with that PCR quoted at its reset value (recover.core.protocol).

This is the baked form: measured with the initramfs, so trusted as it is, each entry
pinning one PCR state. The signed form (recover.core.endorse, docs/inventory.md) builds
the same :class:`Peer` records, whose accepted states are the endorsements of the peer's
host class instead of one pinned set: :attr:`Peer.accepted` is what a quote must match.

A bare list of entries is accepted too. Each entry is exactly what ``host-recover attest``
prints. Validation is strict: every problem is a ConfigError naming the entry and field.
Pure (no sockets; the PEM is checked for shape here and parsed by the verifier).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from recover.core.pcrsel import HASH_SIZES, format_selection
from recover.errors import ConfigError

if TYPE_CHECKING:
    from recover.config import Config

FIELDS = ("id", "address", "failure_domain", "ak_pub", "pcrs")
MEMBER_FIELDS = ("id", "address", "failure_domain", "class", "ak_pub")  # signed: no PCRs
OPTIONAL = ("lock_pcr", "ek_pub", "ek_cert")  # ek_*: recorded by `host-recover enrol verify`
DEFAULT_LOCK_PCR = 15  # tpm.lock_pcr's default
_HINT = "fix the inventory (docs/peer-protocol.md); `host-recover attest` prints valid entries"


PcrValues = Mapping[str, Mapping[int, bytes]]


@dataclasses.dataclass(frozen=True)
class Endorsement:
    """A signed statement: ``pcrs`` (selection + values) is an accepted boot state for
    hosts of ``host_class``; ``version`` orders it (revocation by a per-class floor)."""

    host_class: str
    version: int
    pcrs: PcrValues
    note: str = ""

    @property
    def selection(self) -> str:
        return selection_of(self.pcrs)

    def to_json(self) -> dict[str, Any]:
        return {
            "class": self.host_class,
            "version": self.version,
            "pcrs": pcrs_to_json(self.pcrs),
            **({"note": self.note} if self.note else {}),
        }


@dataclasses.dataclass(frozen=True)
class Peer:
    """A host of the failure domain: where to ask it, its attestation key and the PCR
    values its quotes must show."""

    id: str
    host: str
    port: int
    failure_domain: str
    ak_pub: bytes  # PEM
    pcrs: Mapping[str, Mapping[int, bytes]]  # expected PCR values {"sha256": {0: b"..."}}
    lock_pcr: int = DEFAULT_LOCK_PCR  # the peer's tpm.lock_pcr: "boot" needs it at reset
    ek_pub: str | None = None  # the EK the AK was enrolled under (PEM), if enrolled
    ek_cert: str | None = None  # its certificate (PEM), if the TPM had one
    host_class: str = ""  # signed inventory: the class whose endorsements apply
    # signed inventory: the accepted endorsements of its class (None: baked, ``pcrs``)
    states: tuple[Endorsement, ...] | None = None

    @property
    def accepted(self) -> tuple[PcrValues, ...]:
        """Every PCR state a quote of this peer may show (selection + values): the pinned
        ``pcrs`` of a baked entry, or its class's accepted endorsements, newest first.
        A quote verifies when it matches ANY of them (recover.core.protocol)."""
        if self.states is None:
            return (self.pcrs,)
        return tuple(e.pcrs for e in self.states)

    def describe_states(self) -> str:
        """For rejection reasons: what the quote was compared with."""
        if self.states is None:
            return "the inventory's PCR values"
        if not self.states:
            return f"no accepted state: class {self.host_class!r} has no endorsement in force"
        versions = ", ".join(str(e.version) for e in self.states)
        return (
            f"the {len(self.states)} accepted state(s) of class {self.host_class!r} (v{versions})"
        )

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def selection(self) -> str:
        """The PCR selection the peer's quotes must cover (tpm2-tools syntax)."""
        return selection_of(self.pcrs)

    def to_json(self) -> dict[str, Any]:
        """The entry as the baked inventory lists it (pinned ``pcrs``, no class)."""
        entry = self.member_json()
        del entry["class"]
        return {**entry, "pcrs": pcrs_to_json(self.pcrs)}

    def member_json(self) -> dict[str, Any]:
        """The entry as a signed inventory lists it: membership, no PCR values."""
        return {
            "id": self.id,
            "address": self.address,
            "failure_domain": self.failure_domain,
            "class": self.host_class,
            "ak_pub": self.ak_pub.decode(),
            "lock_pcr": self.lock_pcr,
            **({"ek_pub": self.ek_pub} if self.ek_pub else {}),
            **({"ek_cert": self.ek_cert} if self.ek_cert else {}),
        }


@dataclasses.dataclass(frozen=True)
class Inventory:
    """The peers this host asks, and the signed inventory's version if it came from one."""

    peers: tuple[Peer, ...]
    version: int | None = None  # the signed inventory's version; None: baked peers.json

    def __iter__(self) -> Iterator[Peer]:
        return iter(self.peers)

    def __len__(self) -> int:
        return len(self.peers)

    def get(self, peer_id: str) -> Peer | None:
        return next((p for p in self.peers if p.id == peer_id), None)

    def domain_peers(self, self_id: str) -> tuple[Peer, ...]:
        """The other peers of this host's failure domain (all others if it is not listed)."""
        me = self.get(self_id)
        return tuple(
            p
            for p in self.peers
            if p.id != self_id and (me is None or p.failure_domain == me.failure_domain)
        )

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "peers": [p.to_json() for p in self.peers]}


def self_id(cfg: Config) -> str:
    """This host's id in the inventory: peers.host_id, else the host name."""
    return str(cfg.peers_host_id or os.uname().nodename)


def selection_of(pcrs: PcrValues) -> str:
    """The selection a set of PCR values covers (tpm2-tools syntax)."""
    return format_selection(tuple((alg, tuple(sorted(v))) for alg, v in pcrs.items()))


def pcrs_to_json(pcrs: Mapping[str, Mapping[int, bytes]]) -> dict[str, dict[str, str]]:
    return {alg: {str(i): v.hex() for i, v in sorted(vals.items())} for alg, vals in pcrs.items()}


def parse_pcrs(obj: Any, where: str) -> dict[str, dict[int, bytes]]:
    """``{"sha256": {"0": "hex", ...}}`` → ``{"sha256": {0: bytes}}``, strictly."""
    if not isinstance(obj, dict) or not obj:
        raise ConfigError(f'{where}: must be an object like {{"sha256": {{"0": "hex"}}}}', _HINT)
    out: dict[str, dict[int, bytes]] = {}
    for alg, vals in obj.items():
        if alg not in HASH_SIZES:
            raise ConfigError(f"{where}: unknown PCR bank {alg!r}", _HINT)
        if not isinstance(vals, dict) or not vals:
            raise ConfigError(f"{where}.{alg}: must be a non-empty object of PCR → hex", _HINT)
        bank: dict[int, bytes] = {}
        for idx, hexval in vals.items():
            if not (isinstance(idx, str) and idx.isdigit() and 0 <= int(idx) <= 23):
                raise ConfigError(f"{where}.{alg}: PCR index {idx!r} is not 0..23", _HINT)
            try:
                value = bytes.fromhex(hexval) if isinstance(hexval, str) else None
            except ValueError:
                value = None
            if value is None or len(value) != HASH_SIZES[alg]:
                raise ConfigError(
                    f"{where}.{alg}.{idx}: expected {HASH_SIZES[alg]} bytes of hex", _HINT
                )
            bank[int(idx)] = value
        out[alg] = bank
    return out


def parse_address(text: Any, where: str) -> tuple[str, int]:
    if not isinstance(text, str) or not text:
        raise ConfigError(f"{where}: must be host:port", _HINT)
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: {text!r} is not host:port (IPv6: [addr]:port)", _HINT)
    return host, int(port)


def parse_peer(obj: Any, where: str, *, member: bool = False) -> Peer:
    """A baked entry (pinned ``pcrs``), or with ``member`` a signed inventory's member
    entry (a ``class`` instead: its states are filled in from the endorsements)."""
    fields = MEMBER_FIELDS if member else FIELDS
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: must be an object", _HINT)
    missing = [f for f in fields if f not in obj]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}", _HINT)
    extra = sorted(set(obj) - set(fields) - set(OPTIONAL))
    if extra:
        hint = "a signed inventory's PCR values are endorsements of a class" if member else _HINT
        raise ConfigError(f"{where}: unknown field(s) {', '.join(extra)}", hint)
    lock = obj.get("lock_pcr", DEFAULT_LOCK_PCR)
    if isinstance(lock, bool) or not isinstance(lock, int) or not 0 <= lock <= 15:
        # 16-23 can be reset after boot: a normal OS could show them at zero
        raise ConfigError(f"{where}.lock_pcr: must be a non-resettable PCR 0..15", _HINT)
    for f in ("id", "failure_domain", "ak_pub", *(("class",) if member else ())):
        if not isinstance(obj[f], str) or not obj[f].strip():
            raise ConfigError(f"{where}.{f}: must be a non-empty string", _HINT)
    pem = obj["ak_pub"].strip()
    if not (pem.startswith("-----BEGIN PUBLIC KEY-----") and pem.endswith("-----")):
        raise ConfigError(f"{where}.ak_pub: not a PEM public key", _HINT)
    for f, begin in (("ek_pub", "PUBLIC KEY"), ("ek_cert", "CERTIFICATE")):
        v = obj.get(f)
        if v is not None and not (isinstance(v, str) and v.startswith(f"-----BEGIN {begin}")):
            raise ConfigError(f"{where}.{f}: not a PEM {begin.lower()}", _HINT)
    host, port = parse_address(obj["address"], f"{where}.address")
    return Peer(
        id=obj["id"],
        host=host,
        port=port,
        failure_domain=obj["failure_domain"],
        ak_pub=(pem + "\n").encode(),
        pcrs={} if member else parse_pcrs(obj["pcrs"], f"{where}.pcrs"),
        lock_pcr=lock,
        ek_pub=obj.get("ek_pub"),
        ek_cert=obj.get("ek_cert"),
        host_class=obj["class"] if member else "",
        states=() if member else None,
    )


def parse(data: Any, origin: str = "inventory") -> Inventory:
    if isinstance(data, dict):
        if data.get("version", 1) != 1:
            raise ConfigError(f"{origin}: unsupported version {data.get('version')!r}", _HINT)
        extra = sorted(set(data) - {"version", "peers"})
        if extra:
            raise ConfigError(f"{origin}: unknown field(s) {', '.join(extra)}", _HINT)
        data = data.get("peers")
    if not isinstance(data, list):
        raise ConfigError(f'{origin}: expected {{"version": 1, "peers": [...]}}', _HINT)
    return Inventory(parse_entries(data, f"{origin}: peers"))


def parse_entries(data: list[Any], where: str, *, member: bool = False) -> tuple[Peer, ...]:
    """Every entry (:func:`parse_peer`), ids unique."""
    peers: list[Peer] = []
    seen: set[str] = set()
    for i, entry in enumerate(data):
        peer = parse_peer(entry, f"{where}[{i}]", member=member)
        if peer.id in seen:
            raise ConfigError(f"{where}[{i}]: duplicate id {peer.id!r}", _HINT)
        seen.add(peer.id)
        peers.append(peer)
    return tuple(peers)


def load(path: str | os.PathLike[str]) -> Inventory:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read inventory {os.fspath(path)}: {e.strerror}", _HINT) from None
    except ValueError as e:
        raise ConfigError(f"inventory {os.fspath(path)}: invalid JSON: {e}", _HINT) from None
    return parse(data, os.fspath(path))
