"""The signed inventory v1 (docs/inventory.md): fleet membership and endorsed reference
values, signed by the fleet key. Pure (cryptography inside the functions).

    {"format": "host-recover-inventory", "format_version": 1,
     "version": 7, "issued_at": "2026-12-02T07:00:00Z", "comment": "...",
     "hosts": [{"id": "web-01", "address": "10.0.0.1:7469", "failure_domain": "rack-1",
                "class": "web", "ak_pub": "-----BEGIN PUBLIC KEY-----...", "lock_pcr": 15}],
     "endorsements": [{"class": "web", "version": 4, "note": "kernel 6.1.0-28",
                       "pcrs": {"sha256": {"0": "<hex>", "2": "<hex>", ...}}}],
     "floors": {"web": 3},
     "key_id": "<hex SHA-256 of the fleet key's DER SubjectPublicKeyInfo>",
     "signature": "<hex DER ECDSA P-256 / SHA-256>"}

``signature`` = ECDSA-P256-SHA256(fleet key, CONTEXT ‖ canonical(the document without
"signature")). The canonical form is what :func:`canonical` returns: RFC 8785 (JCS) for
the values this format allows (objects, arrays, strings, integers, booleans, null; no
floats; object keys ASCII): keys sorted, no whitespace, UTF-8, only the escapes JSON
requires. The verifier recomputes it from the document it parsed, so what it checked
is exactly what it uses; duplicate keys, floats and oversized numbers are refused before.

A host's accepted states are the endorsements of its ``class`` whose version is at
least ``floors[class]`` (revocation by a version floor); a quote verifies when it matches
any of them (:attr:`recover.core.inventory.Peer.accepted`). The document's own
``version`` must be at least the verifier's floor (``inventory.min_version`` and the last
version this host saw: anti-rollback, recover.store.inventory).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from recover.core.inventory import (
    Endorsement,
    Inventory,
    Peer,
    parse_entries,
    parse_pcrs,
)
from recover.errors import ConfigError, IntegrityError, RollbackError

FORMAT = "host-recover-inventory"
FORMAT_VERSION = 1
CONTEXT = b"host-recover/v1/inventory\x00"  # domain separation from every other signature
MAX_BYTES = 16 << 20  # 10,000 hosts take about 4 MB
MAX_INT = (1 << 53) - 1  # integers stay exact in every JSON implementation
MAX_NOTE = 200
CLASS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
SOURCE_FIELDS = ("version", "hosts", "endorsements", "floors", "comment")
SIGNED_FIELDS = ("format", "format_version", "issued_at", "key_id", *SOURCE_FIELDS)
_HINT = "docs/inventory.md describes the format; `host-recover inventory sign` writes it"
_SIGN_HINT = "sign it again with `host-recover inventory sign`"


# --- canonical JSON -------------------------------------------------------------------


def canonical(obj: Any) -> bytes:
    """The canonical bytes of a JSON value (module docstring; docs/inventory.md)."""
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except (ValueError, UnicodeEncodeError) as e:  # NaN, lone surrogates
        raise IntegrityError(f"inventory: no canonical form: {e}", _HINT) from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        if not k.isascii():
            raise ValueError(f"non-ASCII key {k[:20]!r}")
        out[k] = v
    return out


def _int(text: str) -> int:
    if len(text) > 16:
        raise ValueError(f"a {len(text)}-digit number")
    return int(text)


def _reject(text: str) -> Any:
    raise ValueError(f"{text[:20]} is not allowed (integers only)")


def loads_strict(data: bytes, origin: str) -> Any:
    """JSON as this format allows it; anything else is an IntegrityError (the bytes may
    come from a store partition anyone with the disks can write)."""
    if len(data) > MAX_BYTES:
        raise IntegrityError(f"{origin}: larger than {MAX_BYTES} bytes", _HINT)
    try:
        return json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_int=_int,
            parse_float=_reject,
            parse_constant=_reject,
        )
    except UnicodeDecodeError:
        raise IntegrityError(f"{origin}: not UTF-8 text", _HINT) from None
    except RecursionError:
        raise IntegrityError(f"{origin}: nested too deeply", _HINT) from None
    except ValueError as e:
        raise IntegrityError(f"{origin}: not acceptable JSON: {e}", _HINT) from None


# --- keys -----------------------------------------------------------------------------


def key_id(pubkey_pem: bytes) -> str:
    """The fleet key's id: SHA-256 of its DER SubjectPublicKeyInfo, hex."""
    return hashlib.sha256(_spki_der(_public_key(pubkey_pem))).hexdigest()


def _public_key(pubkey_pem: bytes) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    from recover.core import p256

    try:
        key = p256.public_key(pubkey_pem)
    except ValueError:
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ConfigError(
            "the fleet key (inventory.key) is not an ECC P-256 public key PEM",
            hint="`host-recover policy keygen` writes one; bake its public half as "
            "/etc/host-recover/inventory-pub.pem",
        )
    return key


def _spki_der(key: Any) -> bytes:
    """DER SubjectPublicKeyInfo of a P-256 key (the only kind :func:`_public_key` and
    ``load_signing_key`` let through)."""
    from recover.core import p256

    return p256.spki_der(key)


# --- the document ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Document:
    """A signed inventory's content (validated; the signature checked by :func:`verify`)."""

    version: int
    hosts: tuple[Peer, ...]  # member entries (host_class set, states not yet filled)
    endorsements: tuple[Endorsement, ...]
    floors: Mapping[str, int]
    issued_at: str = ""
    comment: str = ""
    key_id: str = ""

    def in_force(self, e: Endorsement) -> bool:
        return e.version >= self.floors.get(e.host_class, 0)

    def accepted(self, host_class: str) -> tuple[Endorsement, ...]:
        """The endorsements in force for ``host_class``, newest first."""
        mine = (e for e in self.endorsements if e.host_class == host_class and self.in_force(e))
        return tuple(sorted(mine, key=lambda e: e.version, reverse=True))

    def inventory(self) -> Inventory:
        """The peers, each with the accepted states of its class."""
        peers = []
        for h in self.hosts:
            states = self.accepted(h.host_class)
            pcrs = states[0].pcrs if states else {}
            peers.append(dataclasses.replace(h, states=states, pcrs=pcrs))
        return Inventory(tuple(peers), version=self.version)

    def body(self) -> dict[str, Any]:
        """The signed fields (everything but ``signature``), normalised."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "issued_at": self.issued_at,
            "key_id": self.key_id,
            "comment": self.comment,
            "hosts": [h.member_json() for h in self.hosts],
            "endorsements": [e.to_json() for e in self.endorsements],
            "floors": dict(sorted(self.floors.items())),
        }


def _version(v: Any, where: str, low: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= MAX_INT:
        raise ConfigError(f"{where}: must be an integer {low}..{MAX_INT}", _HINT)
    return v


def _class(v: Any, where: str) -> str:
    if not isinstance(v, str) or not CLASS_RE.match(v):
        raise ConfigError(f"{where}: a class is 1-64 of A-Z a-z 0-9 . _ - (got {v!r})", _HINT)
    return v


def _text(doc: Mapping[str, Any], key: str, where: str, limit: int = MAX_NOTE) -> str:
    v = doc.get(key, "")
    if not isinstance(v, str) or len(v) > limit:
        raise ConfigError(f"{where}.{key}: must be a string of at most {limit} characters")
    return v


def parse_endorsement(obj: Any, where: str) -> Endorsement:
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: must be an object", _HINT)
    missing = [f for f in ("class", "version", "pcrs") if f not in obj]
    extra = sorted(set(obj) - {"class", "version", "pcrs", "note"})
    if missing or extra:
        what = f"missing {', '.join(missing)}" if missing else f"unknown field(s) {extra}"
        raise ConfigError(f"{where}: {what}", _HINT)
    return Endorsement(
        host_class=_class(obj["class"], f"{where}.class"),
        version=_version(obj["version"], f"{where}.version"),
        pcrs=parse_pcrs(obj["pcrs"], f"{where}.pcrs"),
        note=_text(obj, "note", where),
    )


def parse_document(doc: Any, origin: str, *, fields: tuple[str, ...] = SIGNED_FIELDS) -> Document:
    """Validate a signed document's fields (or, with ``fields=SOURCE_FIELDS``, the
    unsigned source `inventory sign` takes). ConfigError names the entry and field."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{origin}: must be a JSON object", _HINT)
    extra = sorted(set(doc) - set(fields))
    if extra:
        raise ConfigError(f"{origin}: unknown field(s) {', '.join(extra)}", _HINT)
    for need in ("hosts", "endorsements"):
        if not isinstance(doc.get(need), list):
            raise ConfigError(f"{origin}: {need} must be a list", _HINT)
    hosts = parse_entries(doc["hosts"], f"{origin}: hosts", member=True)
    for i, h in enumerate(hosts):
        _class(h.host_class, f"{origin}: hosts[{i}].class")
    ends = tuple(
        parse_endorsement(e, f"{origin}: endorsements[{i}]")
        for i, e in enumerate(doc["endorsements"])
    )
    seen: set[tuple[str, int]] = set()
    for i, e in enumerate(ends):
        if (e.host_class, e.version) in seen:
            raise ConfigError(
                f"{origin}: endorsements[{i}]: class {e.host_class!r} version {e.version} "
                "is endorsed twice",
                hint="give each accepted state of a class its own version",
            )
        seen.add((e.host_class, e.version))
    floors = doc.get("floors", {})
    if not isinstance(floors, dict):
        raise ConfigError(f'{origin}: floors must be an object {{"class": version}}', _HINT)
    for c, v in floors.items():
        _class(c, f"{origin}: floors key")
        _version(v, f"{origin}: floors.{c}")
    return Document(
        version=_version(doc.get("version"), f"{origin}: version", 1),
        hosts=hosts,
        endorsements=ends,
        floors=dict(floors),
        issued_at=_text(doc, "issued_at", origin, 64),
        comment=_text(doc, "comment", origin),
        key_id=_text(doc, "key_id", origin, 64),
    )


# --- sign and verify ------------------------------------------------------------------


def sign(doc: Document, private_pem: bytes) -> bytes:
    """The signed inventory file for ``doc`` (its key_id set from the key)."""
    from recover.core import p256
    from recover.core.policy import load_signing_key

    key = load_signing_key(private_pem, "inventory")
    signed = dataclasses.replace(
        doc, key_id=hashlib.sha256(_spki_der(key.public_key())).hexdigest()
    )
    body = signed.body()
    sig = key.sign(CONTEXT + canonical(body), p256.ecdsa_sha256())
    return (json.dumps({**body, "signature": sig.hex()}, indent=2, sort_keys=True) + "\n").encode()


def verify(
    data: bytes, pubkey_pem: bytes, *, floor: int = 0, origin: str = "inventory"
) -> Document:
    """Check a signed inventory: format, key, signature, then content, then
    ``version >= floor``. IntegrityError (RollbackError for an old version); ConfigError
    when correctly signed content is invalid."""
    from cryptography.exceptions import InvalidSignature

    from recover.core import p256

    key = _public_key(pubkey_pem)
    doc = loads_strict(data, origin)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise IntegrityError(f"{origin}: not a {FORMAT} document", _HINT)
    if doc.get("format_version") != FORMAT_VERSION:
        raise IntegrityError(
            f"{origin}: format version {doc.get('format_version')!r} is not {FORMAT_VERSION}",
            hint="this host-recover reads format 1 only",
        )
    sig = doc.pop("signature", None)
    try:
        signature = bytes.fromhex(sig) if isinstance(sig, str) else b""
    except ValueError:
        signature = b""
    if not signature:
        raise IntegrityError(f"{origin}: no signature", _SIGN_HINT)
    want = hashlib.sha256(_spki_der(key)).hexdigest()
    if doc.get("key_id") != want:
        raise IntegrityError(
            f"{origin}: signed by another key (key id {str(doc.get('key_id'))[:16]}…, "
            f"inventory.key is {want[:16]}…)",
            hint="check inventory.key and the key `inventory sign` used",
        )
    try:
        key.verify(signature, CONTEXT + canonical(doc), p256.ecdsa_sha256())
    except (InvalidSignature, ValueError):
        raise IntegrityError(f"{origin}: bad signature (forged or altered)", _SIGN_HINT) from None
    parsed = parse_document(doc, origin)
    if parsed.version < floor:
        raise RollbackError(
            f"{origin}: inventory version {parsed.version} is older than the accepted floor "
            f"{floor} (rolled back?)",
            hint="install the newest signed inventory (docs/inventory.md, anti-rollback)",
        )
    return parsed


def parse_signed(
    data: bytes, pubkey_pem: bytes, *, floor: int = 0, origin: str = "inventory"
) -> Inventory:
    """The inventory a signed document gives (:func:`verify`, then the accepted states of
    each host's class): the entry point for any transport (store file, witness)."""
    return verify(data, pubkey_pem, floor=floor, origin=origin).inventory()
