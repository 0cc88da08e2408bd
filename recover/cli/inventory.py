"""``host-recover inventory sign|verify|show``: the signed inventory (docs/inventory.md).

The fleet key's private half signs on an operator machine (create it with
``host-recover policy keygen``: the same ECC P-256 PEM format, a separate key); hosts
carry only its public half (inventory.key, baked into the measured initramfs) and a
version floor (inventory.min_version). The signed file lives outside the measured path
(inventory.file; at boot on the store partition), so a kernel update on some hosts needs
a new endorsement and a new signed inventory, not a new initramfs on every other host.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recover.errors import HostRecoverError, UsageError

if TYPE_CHECKING:
    from recover.config import Config
    from recover.core.endorse import Document

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    inv = sub.add_parser("inventory", help="The signed inventory: membership and endorsed PCRs.")
    isub = inv.add_subparsers(dest="inventory_verb", metavar="ACTION", required=True)
    p = isub.add_parser(
        "sign",
        help="Validate an unsigned inventory source and sign it with the fleet key (written "
        "atomically; the version must rise).",
    )
    p.set_defaults(handler=cmd_sign)
    p.add_argument(
        "source",
        metavar="SOURCE",
        help='unsigned JSON {"version": N, "hosts": [...], "endorsements": [...], '
        '"floors": {...}, "comment": "..."} (docs/inventory.md)',
    )
    p.add_argument("--key", required=True, metavar="FILE", help="fleet private key PEM (offline)")
    p.add_argument("--output", metavar="FILE", help="signed file (default inventory.file)")
    p.add_argument(
        "--inventory-version",
        type=int,
        metavar="N",
        help="the inventory's version (default: SOURCE's, else one more than the existing "
        "output's); must be above the existing output's",
    )
    for name, helptext in (
        ("verify", "Check a signed inventory: key, signature, content, version floor."),
        ("show", "Verify a signed inventory, then list its hosts and endorsed states."),
    ):
        p = isub.add_parser(name, help=helptext)
        p.set_defaults(handler=cmd_verify if name == "verify" else cmd_show)
        p.add_argument("file", nargs="?", metavar="FILE", help="default inventory.file")
        p.add_argument("--key", metavar="FILE", help="fleet public key PEM (default inventory.key)")
        p.add_argument(
            "--min-version",
            type=int,
            default=0,
            metavar="N",
            help="refuse versions below N (besides inventory.min_version)",
        )
        p.add_argument("--json", action="store_true", help="machine-readable output")


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror}") from None


def _refuse_baked_key(cfg: Config, key_path: str) -> None:
    """A private key never comes from the directory baked into the initramfs."""
    from recover.config import main_path

    files = [*cfg.sources, os.fspath(main_path(None))]
    baked = {os.path.realpath(os.path.dirname(p)) for p in files}
    real = os.path.realpath(key_path)
    for d in baked:
        if real == d or real.startswith(d.rstrip("/") + "/"):
            raise UsageError(
                f"{key_path} is in {d}, which is baked into the initramfs",
                hint="keep the fleet private key offline; only inventory-pub.pem goes there",
            )


def _existing_version(path: str) -> int:
    """The version of the signed inventory already at ``path`` (0: none or unreadable)."""
    from recover.core.endorse import loads_strict

    if not os.path.exists(path):
        return 0
    try:
        doc = loads_strict(Path(path).read_bytes(), path)
    except (OSError, HostRecoverError):
        return 0
    v = doc.get("version") if isinstance(doc, dict) else None
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def cmd_sign(args: argparse.Namespace, cfg: Config) -> int:
    from recover.core.endorse import SOURCE_FIELDS, loads_strict, parse_document, sign
    from recover.core.policy import write_atomic

    output = args.output or cfg.inventory_file
    _refuse_baked_key(cfg, args.key)
    private = _read(args.key, "the fleet signing key")
    try:
        source = loads_strict(_read(args.source, "the inventory source"), args.source)
    except HostRecoverError as e:
        raise UsageError(e.message, hint="the source is plain JSON (docs/inventory.md)") from None
    if not isinstance(source, dict):
        raise UsageError(f"{args.source}: must be a JSON object", hint="see docs/inventory.md")
    previous = _existing_version(output)
    version = args.inventory_version or source.get("version") or previous + 1
    doc = parse_document({**source, "version": version}, args.source, fields=SOURCE_FIELDS)
    if doc.version <= previous:
        raise UsageError(
            f"version {doc.version} is not above {output}'s version {previous}",
            hint="every signed inventory needs a new, higher version (anti-rollback); "
            "pass --inventory-version or raise SOURCE's version",
        )
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc = dataclasses.replace(doc, issued_at=now)
    try:
        data = sign(doc, private)
    except (ValueError, TypeError) as e:
        raise UsageError(
            f"cannot sign with {args.key}: {str(e).splitlines()[0]}",
            hint="--key takes a private key PEM written by `host-recover policy keygen`",
        ) from None
    for h in doc.hosts:
        if not doc.accepted(h.host_class):
            log.warning(
                "host %s: class %r has no endorsement in force: its quotes will not verify",
                h.id,
                h.host_class,
            )
    write_atomic(output, data, mode=0o644)
    log.info(
        "signed inventory v%d: %d hosts, %d endorsements → %s",
        doc.version,
        len(doc.hosts),
        len(doc.endorsements),
        output,
    )
    return 0


def _verified(args: argparse.Namespace, cfg: Config) -> tuple[str, Document]:
    from recover.core.endorse import verify
    from recover.store.inventory import read_signed

    key_path = args.key or cfg.inventory_key
    if not key_path:
        raise UsageError(
            "no fleet public key", hint="pass --key FILE or set inventory.key (docs/inventory.md)"
        )
    if args.min_version < 0:
        raise UsageError("--min-version must be >= 0")
    path = args.file or cfg.inventory_file
    floor = max(cfg.inventory_min_version, args.min_version)
    key = _read(key_path, "the fleet public key")
    return path, verify(read_signed(path), key, floor=floor, origin=path)


def summary(doc: Document) -> dict[str, Any]:
    """The verified document as `show --json` prints it."""
    return {
        "version": doc.version,
        "issued_at": doc.issued_at,
        "key_id": doc.key_id,
        "comment": doc.comment,
        "floors": dict(doc.floors),
        "hosts": [
            {
                **{k: v for k, v in h.member_json().items() if k != "ak_pub"},
                "accepted_versions": [e.version for e in doc.accepted(h.host_class)],
            }
            for h in doc.hosts
        ],
        "endorsements": [
            {
                "class": e.host_class,
                "version": e.version,
                "selection": e.selection,
                "in_force": doc.in_force(e),
                "note": e.note,
            }
            for e in doc.endorsements
        ],
    }


def cmd_verify(args: argparse.Namespace, cfg: Config) -> int:
    path, doc = _verified(args, cfg)
    in_force = sum(1 for e in doc.endorsements if doc.in_force(e))
    if args.json:
        print(json.dumps({"ok": True, "file": path, **summary(doc)}, indent=2))
    else:
        print(
            f"ok: {path}: inventory v{doc.version} ({doc.issued_at or 'no date'}), "
            f"{len(doc.hosts)} hosts, {len(doc.endorsements)} endorsements ({in_force} in "
            f"force), fleet key {doc.key_id[:16]}"
        )
    return 0


def cmd_show(args: argparse.Namespace, cfg: Config) -> int:
    path, doc = _verified(args, cfg)
    s = summary(doc)
    if args.json:
        print(json.dumps({"file": path, **s}, indent=2))
        return 0
    print(f"inventory v{doc.version} issued {doc.issued_at or '-'} key {doc.key_id[:16]}")
    if doc.comment:
        print(f"comment: {doc.comment}")
    print("hosts:")
    for h in s["hosts"]:
        states = ",".join(f"v{v}" for v in h["accepted_versions"]) or "NONE (cannot verify)"
        print(
            f"  {h['id']:<20} {h['address']:<22} {h['failure_domain']:<12} "
            f"class {h['class']:<12} accepted {states}"
        )
    print("endorsements:")
    for e in s["endorsements"]:
        state = "in force" if e["in_force"] else f"revoked (floor {doc.floors[e['class']]})"
        print(f"  {e['class']:<12} v{e['version']:<5} {e['selection']:<24} {state}  {e['note']}")
    return 0
