"""``host-recover VERB``: the command-line interface (docs/cli.md).

Each verb's handler is named by dotted path and imported only when the verb runs, so
``--help`` and parsing stay fast and the initramfs imports only what the payload needs.
Handlers take ``(args, cfg)`` and return an exit code; expected failures raise
``HostRecoverError`` and are turned into one line plus a hint here, and nowhere else.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from recover import __version__
from recover.errors import ExitCode, HostRecoverError

log = logging.getLogger("recover")

Handler = Callable[[argparse.Namespace, Any], int]


def _handler(spec: str) -> Handler:
    module, _, func = spec.partition(":")
    return getattr(importlib.import_module(module), func)  # type: ignore[no-any-return]


def _verb(sub: Any, name: str, spec: str, help: str, **kw: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help, **kw)
    p.set_defaults(handler=spec)
    return p


_MIN_VERSION_HELP = "reject images older than this (with the TPM: at least its rollback counter)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="host-recover",
        description="Early-boot host recovery from a TPM-sealed secure store.",
        epilog="Exit codes: 0 ok, 1 internal error, 2 usage/config error, 3 TPM unavailable, "
        "4 policy mismatch, 5 integrity failure, 6 peers unavailable.",
    )
    parser.add_argument("--version", action="version", version=f"host-recover {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="configuration file (default /etc/host-recover/host-recover.conf)",
    )
    parser.add_argument(
        "--tcti",
        help="TPM TCTI, e.g. device:/dev/tpmrm0 or "
        "swtpm:host=127.0.0.1,port=2321 (env HOST_RECOVER_TCTI)",
    )
    parser.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a setting, e.g. --set tpm.pcrs=sha256:7",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True

    # --- secure store -------------------------------------------------------------
    p = _verb(
        sub,
        "provision",
        "recover.provision:cmd_provision",
        "Create the storage key, seal a master secret to the PCR policy, create the "
        "attestation key and NV counters. Idempotent.",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing sealed secret (old images become unreadable)",
    )
    p.add_argument(
        "--export-image-key",
        metavar="FILE",
        help="write the image key (derived from the new master secret) to FILE, "
        "mode 0600, for the image factory; only when a secret is created",
    )
    p.add_argument(
        "--export-master",
        metavar="FILE",
        help="write the master secret itself to FILE (mode 0600); only when a secret is created",
    )
    p.add_argument(
        "--master-from",
        metavar="FILE",
        help="seal this 32-byte master secret instead of a fresh random one "
        "(fleet images shared by hosts)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _verb(
        sub,
        "status",
        "recover.provision:cmd_status",
        "Report TPM reachability, orderly bit, lockout counter, handles and whether "
        "the current PCRs satisfy the sealed policy.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _verb(
        sub,
        "unseal",
        "recover.provision:cmd_unseal",
        "Check that the sealed secret can be unsealed now (never prints it).",
    )
    p.add_argument(
        "--check",
        action="store_true",
        required=True,
        help="only check; exit 0 if it unseals, 4 on policy mismatch",
    )

    pol = _verb(sub, "policy", "", "Signed PCR policies (tpm.policy = signed).")
    polsub = pol.add_subparsers(dest="policy_verb", metavar="ACTION")
    polsub.required = True
    p = _verb(
        polsub,
        "keygen",
        "recover.policy:cmd_keygen",
        "Create an ECC P-256 policy signing key pair (private key stays offline).",
    )
    p.add_argument("--private", required=True, metavar="FILE", help="private key PEM (0600)")
    p.add_argument("--public", required=True, metavar="FILE", help="public key PEM")
    p = _verb(
        polsub,
        "sign",
        "recover.policy:cmd_sign",
        "Sign a PCR policy for the current (or given) PCR values.",
    )
    p.add_argument("--key", required=True, metavar="FILE", help="private key PEM")
    p.add_argument("--pcrs", help="selection (default tpm.pcrs)")
    p.add_argument(
        "--values",
        metavar="FILE",
        help='JSON {"sha256": {"0": "hex", ...}} of predicted PCR values '
        "(default: read the current PCRs from the TPM)",
    )
    p.add_argument("--output", metavar="FILE", help="policy file (default tpm.policy_file)")
    p.add_argument(
        "--policy-version",
        type=int,
        metavar="N",
        help="anti-rollback version of the signed policy (default: one more than the "
        "existing output file's, at least the TPM's policy counter)",
    )

    # --- recovery image -----------------------------------------------------------
    img = _verb(sub, "image", "", "Encrypted recovery images (container v1).")
    imgsub = img.add_subparsers(dest="image_verb", metavar="ACTION")
    imgsub.required = True
    p = _verb(
        imgsub,
        "create",
        "recover.imagecli:cmd_create",
        "Encrypt a file system image into a recovery image.",
    )
    p.add_argument("input", help="plain file system image (squashfs or erofs)")
    p.add_argument("output", help="recovery image to write")
    p.add_argument(
        "--key-file",
        metavar="FILE",
        help="image key from `provision --export-image-key` (default: the TPM)",
    )
    p.add_argument("--image-version", type=int, default=1, help="anti-rollback version")
    p.add_argument("--payload-type", default="squashfs", choices=["squashfs", "erofs", "raw"])
    p.add_argument("--chunk-size", type=int, default=1 << 20)
    p = _verb(
        imgsub,
        "inspect",
        "recover.imagecli:cmd_inspect",
        "Print the header of a recovery image (authenticated with --key-file).",
    )
    p.add_argument("image")
    p.add_argument("--json", action="store_true")
    p.add_argument("--key-file", metavar="FILE", help="image key: also check key id and header MAC")
    p = _verb(
        imgsub,
        "verify",
        "recover.imagecli:cmd_verify",
        "Authenticate every chunk of a recovery image without writing plaintext.",
    )
    p.add_argument("image")
    p.add_argument("--key-file", metavar="FILE")
    p.add_argument("--min-version", type=int, default=0, help=_MIN_VERSION_HELP)
    p = _verb(
        imgsub,
        "decrypt",
        "recover.imagecli:cmd_decrypt",
        "Verify and decrypt a recovery image (output only appears when all is valid).",
    )
    p.add_argument("image")
    p.add_argument("output")
    p.add_argument("--key-file", metavar="FILE")
    p.add_argument("--workers", type=int, default=0, help="0: one per core")
    p.add_argument("--min-version", type=int, default=0, help=_MIN_VERSION_HELP)

    # --- credentials --------------------------------------------------------------
    cred = _verb(sub, "credential", "", "Service credentials in the encrypted store.")
    credsub = cred.add_subparsers(dest="credential_verb", metavar="ACTION")
    credsub.required = True
    p = _verb(credsub, "add", "recover.credentials:cmd_add", "Add or replace a credential.")
    p.add_argument("name")
    p.add_argument("file", help="file with the credential ('-' for stdin)")
    p.add_argument("--key-file", metavar="FILE", help="master secret file (default: the TPM)")
    p = _verb(credsub, "list", "recover.credentials:cmd_list", "List credential names.")
    p.add_argument("--key-file", metavar="FILE")
    p.add_argument("--json", action="store_true")
    p = _verb(credsub, "remove", "recover.credentials:cmd_remove", "Remove a credential.")
    p.add_argument("name")
    p.add_argument("--key-file", metavar="FILE")

    # --- evidence, peers, verdict -------------------------------------------------
    p = _verb(
        sub,
        "evidence",
        "recover.evidence:cmd_evidence",
        "Show the local evidence about the previous shutdown.",
    )
    p.add_argument("--json", action="store_true")
    p = _verb(
        sub,
        "decide",
        "recover.decide:cmd_decide",
        "Dry run: gather evidence, ask the peers and print the verdict with reasons; "
        "unseals nothing.",
    )
    p.add_argument("--json", action="store_true")
    p = _verb(
        sub,
        "agent",
        "recover.agent:cmd_agent",
        "Serve this host's attested status to its peers (normal OS).",
    )
    p.add_argument("--listen", help="override peers.listen")
    p = _verb(
        sub,
        "attest",
        "recover.provision:cmd_attest",
        "Print this host's inventory entry (id, AK public key, PCR values).",
    )
    p.add_argument("--address", default="", help="address peers reach this host at")
    p.add_argument("--failure-domain", default="", help="failure domain of this host")

    # --- boot ---------------------------------------------------------------------
    p = _verb(
        sub,
        "boot",
        "recover.boot:cmd_boot",
        "The initramfs payload: evidence, peers, verdict, unseal, image, credentials.",
    )
    p.add_argument("--newroot", default="/sysroot", help="where to mount the recovery root")
    p.add_argument("--cmdline", default="/proc/cmdline", help="kernel command line file")
    p = _verb(
        sub,
        "bundle",
        "recover.bundle:cmd_bundle",
        "Compute the payload's file set for the initramfs (modules + libraries).",
    )
    p.add_argument("--output", metavar="DIR", required=True, help="staging directory")
    p.add_argument("--json", action="store_true")
    p = _verb(
        sub,
        "config",
        "recover.cli:cmd_config",
        "Print the effective configuration, or the settings reference (--docs).",
    )
    p.add_argument("--docs", action="store_true")
    p.add_argument("--json", action="store_true")
    return parser


EXIT_CODES = (
    (0, "ok"),
    (1, "internal error (a bug; `--debug` prints the traceback)"),
    (2, "usage or configuration error"),
    (3, "TPM unavailable (no device, TCTI cannot connect, object missing, lockout)"),
    (4, "policy mismatch: the PCRs do not satisfy the sealed or signed policy"),
    (5, "integrity failure: tampered or truncated data, wrong key, rollback"),
    (6, "peers unavailable (verbs that use peers)"),
    (10, "`boot` only: the recovery root is mounted on $NEWROOT, switch root into it"),
    (11, "`boot` only: hold, the policy says stop for an operator"),
)


def render_cli_docs() -> str:
    """docs/cli.md, generated from the parser so the two never drift apart."""
    parser = build_parser()
    out = [
        "# CLI reference",
        "",
        "<!-- generated by `python -m recover.cli_docs`; do not edit by hand -->",
        "",
        "```",
        parser.format_help().rstrip(),
        "```",
        "",
        "## Exit codes",
        "",
        "The contract with the dracut hooks and with operators' scripts; fixed.",
        "",
        "| code | meaning |",
        "|---|---|",
        *[f"| {c} | {m} |" for c, m in EXIT_CODES],
        "",
        "Expected failures print one line `host-recover: error: ...` and one line",
        "`host-recover: hint: ...` on stderr; nothing is left half-written.",
        "",
    ]

    def walk(p: argparse.ArgumentParser, prefix: str) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sp in action.choices.items():
                    title = f"{prefix} {name}".strip()
                    if sp.get_default("handler"):
                        out.extend(
                            [
                                f"## `host-recover {title}`",
                                "",
                                "```",
                                sp.format_help().rstrip(),
                                "```",
                                "",
                            ]
                        )
                    walk(sp, title)

    walk(parser, "")
    return "\n".join(out)


def cmd_config(args: argparse.Namespace, cfg: Any) -> int:
    from recover import config

    if args.docs:
        sys.stdout.write(config.render_docs())
    elif args.json:
        import json

        print(json.dumps(cfg.as_dict(), indent=2, default=str))
    else:
        for name, value in cfg.as_dict().items():
            print(f"{name} = {hex(value) if name.endswith(('_handle', '_nv')) else value}")
    return 0


def _load_config(args: argparse.Namespace) -> Any:
    from recover import config

    overrides: dict[str, str] = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            from recover.errors import UsageError

            raise UsageError(
                f"--set {item!r}: expected NAME=VALUE", hint="e.g. --set tpm.pcrs=sha256:7"
            )
        overrides[name.strip()] = value
    if args.tcti:
        overrides["tpm.tcti"] = args.tcti
    return config.load(args.config, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    from recover import log as logsetup

    parser = build_parser()
    args = parser.parse_args(argv)
    kmsg = args.verb == "boot"
    logsetup.setup(debug=args.debug, kmsg=kmsg)
    try:
        try:
            cfg = _load_config(args)
        except HostRecoverError as e:
            if args.verb != "boot":
                raise
            from recover.boot import boot_without_config

            return boot_without_config(args, e)
        return int(_handler(args.handler)(args, cfg))
    except HostRecoverError as e:
        log.error("error: %s", e.message)
        if e.hint:
            log.error("hint: %s", e.hint)
        if args.debug:
            traceback.print_exc()
        return int(e.exit_code)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # noqa: BLE001 - the one top-level handler
        log.error("internal error: %s: %s", type(e).__name__, e)
        if args.debug:
            traceback.print_exc()
        else:
            log.error("hint: run again with --debug for a traceback, and report it")
        return int(ExitCode.INTERNAL)
