"""``host-recover credential add|list|remove`` (docs/credentials.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from recover.errors import UsageError

if TYPE_CHECKING:
    from recover.config import Config


def register(sub: Any) -> None:
    cred = sub.add_parser("credential", help="Service credentials in the encrypted store.")
    credsub = cred.add_subparsers(dest="credential_verb", metavar="ACTION", required=True)
    p = credsub.add_parser("add", help="Add or replace a credential.")
    p.set_defaults(handler=cmd_add)
    p.add_argument("name")
    p.add_argument("file", help="file with the credential ('-' for stdin)")
    p.add_argument("--key-file", metavar="FILE", help="master secret file (default: the TPM)")
    _owner_auth_arg(p)
    p = credsub.add_parser("list", help="List credential names.")
    p.set_defaults(handler=cmd_list)
    p.add_argument("--key-file", metavar="FILE")
    p.add_argument("--json", action="store_true")
    p = credsub.add_parser("remove", help="Remove a credential.")
    p.set_defaults(handler=cmd_remove)
    p.add_argument("name")
    p.add_argument("--key-file", metavar="FILE")
    _owner_auth_arg(p)


def _owner_auth_arg(p: Any) -> None:
    p.add_argument(
        "--owner-auth",
        metavar="FILE",
        help="owner auth file (`provision --export-owner-auth`): raise the TPM floor "
        "(tpm.credentials_nv) to the written generation, so older stores are refused at "
        "boot; needed once an owner auth is set",
    )


def _save(args: argparse.Namespace, cfg: Config, store: Any, master: bytes) -> Any:
    from recover.store.credentials import save_with_floor
    from recover.store.keyfile import read_key_file

    auth = read_key_file(args.owner_auth, "owner auth") if args.owner_auth else None
    saved, floor = save_with_floor(cfg, cfg.store_credentials, store, master, auth)
    print(f"generation {saved.generation} written; TPM floor {floor}")
    return saved


def _master(args: argparse.Namespace, cfg: Config) -> bytes:
    from recover.store.keyfile import read_key_file
    from recover.store.unseal import tpm_master

    return read_key_file(args.key_file, "master secret") if args.key_file else tpm_master(cfg)


def cmd_add(args: argparse.Namespace, cfg: Config) -> int:
    from recover.core.credstore import MAX_VALUE, Store, add, validate_name
    from recover.store.credentials import load

    validate_name(args.name)
    master = _master(args, cfg)
    path = cfg.store_credentials
    if os.path.islink(path) and not os.path.exists(path):
        raise UsageError(
            f"{path} is a symbolic link to a missing file", hint="fix or remove the link"
        )
    store = load(path, master) if os.path.lexists(path) else Store()
    if args.file == "-":
        value = sys.stdin.buffer.read(MAX_VALUE + 1)
    else:
        try:
            with open(args.file, "rb") as f:
                value = f.read(MAX_VALUE + 1)
        except OSError as e:
            raise UsageError(f"cannot read {args.file}: {e.strerror}") from None
    saved = _save(args, cfg, add(store, args.name, value), master)
    print(f"{args.name}: {len(value)} bytes stored ({len(saved.entries)} credentials)")
    return 0


def cmd_list(args: argparse.Namespace, cfg: Config) -> int:
    from recover.core.credstore import list_names
    from recover.store.credentials import load

    store = load(cfg.store_credentials, _master(args, cfg))
    if args.json:
        items = [{"name": n, "size": len(store.entries[n])} for n in list_names(store)]
        print(json.dumps({"generation": store.generation, "credentials": items}, indent=2))
    else:
        for name in list_names(store):
            print(name)
    return 0


def cmd_remove(args: argparse.Namespace, cfg: Config) -> int:
    from recover.core.credstore import remove
    from recover.store.credentials import load

    master = _master(args, cfg)
    _save(args, cfg, remove(load(cfg.store_credentials, master), args.name), master)
    print(f"{args.name}: removed")
    return 0
