"""``host-recover enrol``: enrol a host's AK anchored in its TPM's EK
(docs/peer-protocol.md#ak-enrolment).

    host      enrol request  --address A --failure-domain D  > request.json
    operator  enrol challenge request.json --secret-file S --ek-ca CA.pem ...  > challenge.json
    host      enrol answer challenge.json  > answer.json
    operator  enrol verify request.json answer.json --secret-file S  > entry.json

The challenge is TPM2_MakeCredential (in software) of a random secret to the EK for the
AK's name; only the TPM holding both the certified EK and that AK can activate it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from recover.config import Config
from recover.errors import ConfigError, IntegrityError

log = logging.getLogger(__name__)

_HINT = "see docs/peer-protocol.md#ak-enrolment"


def register(sub: Any) -> None:
    p = sub.add_parser("enrol", help="Enrol this host's attestation key, anchored in its EK.")
    steps = p.add_subparsers(dest="step", required=True, metavar="STEP")

    q = steps.add_parser("request", help="(host) print the enrolment request: entry, EK, AK")
    q.set_defaults(handler=cmd_request)
    q.add_argument("--address", default="", help="address peers reach this host at")
    q.add_argument("--failure-domain", default="", help="failure domain of this host")
    q.add_argument("--ek-type", default="EK-RSA2048", choices=("EK-RSA2048", "EK-ECC256"))

    c = steps.add_parser(
        "challenge", help="(operator) check the EK certificate, make the credential"
    )
    c.set_defaults(handler=cmd_challenge)
    c.add_argument("request", help="the host's enrolment request (JSON)")
    c.add_argument("--secret-file", required=True, help="where to keep the secret (0600)")
    c.add_argument(
        "--ek-ca",
        action="append",
        default=[],
        metavar="PEM",
        help="the EK certificate's issuer chain, issuing CA first, trusted root last "
        "(repeat); required unless --no-ek-cert",
    )
    c.add_argument(
        "--no-ek-cert",
        action="store_true",
        help="the TPM has no EK certificate: trust this EK on first use (said in the entry)",
    )

    a = steps.add_parser("answer", help="(host) activate the credential with the TPM")
    a.set_defaults(handler=cmd_answer)
    a.add_argument("challenge", help="the operator's challenge (JSON)")

    v = steps.add_parser("verify", help="(operator) check the answer, print the inventory entry")
    v.set_defaults(handler=cmd_verify)
    v.add_argument("request", help="the host's enrolment request (JSON)")
    v.add_argument("answer", help="the host's answer (JSON)")
    v.add_argument("--secret-file", required=True, help="the secret kept by `challenge`")


def _load(path: str, what: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the {what} {path}: {e}", _HINT) from None
    if not isinstance(data, dict) or data.get("version") != 1:
        raise ConfigError(f"{path}: not a version-1 enrolment {what}", _HINT)
    return data


def _hex(doc: dict[str, Any], key: str, where: str) -> bytes:
    try:
        return bytes.fromhex(doc[key])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{where}: {key} must be hex", _HINT) from None


def _binding(ek_public: bytes, ak_public: bytes) -> str:
    import hashlib

    return hashlib.sha256(len(ek_public).to_bytes(2, "big") + ek_public + ak_public).hexdigest()


def cmd_request(args: argparse.Namespace, cfg: Config) -> int:
    from recover.cli.store import own_entry
    from recover.store.unseal import open_tpm

    with open_tpm(cfg) as t:
        ak_pub = t.ensure_ak(cfg.tpm_ak_handle)
        ak_public = t.ak_public_area(cfg.tpm_ak_handle)
        ek_public, cert = t.endorsement(args.ek_type)
        pcrs = t.pcr_read(cfg.tpm_pcrs)
    cert_pem = None
    if cert is not None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        cert_pem = (
            x509.load_der_x509_certificate(cert).public_bytes(serialization.Encoding.PEM).decode()
        )
    request = {
        "version": 1,
        "entry": own_entry(cfg, args, ak_pub, pcrs),
        "ak_public": ak_public.hex(),
        "ek_type": args.ek_type,
        "ek_public": ek_public.hex(),
        "ek_cert": cert_pem,
    }
    print(json.dumps(request, indent=2))
    return 0


def _checked_request(path: str, chain: list[bytes] | None) -> tuple[dict[str, Any], bytes, bytes]:
    """The request's entry, EK public and AK public, after every check that needs no TPM."""
    from recover.core.attest import check_ek_certificate
    from recover.core.inventory import parse_peer
    from recover.tpm.quote import check_ak_public, ek_public_pem

    req = _load(path, "request")
    entry = req.get("entry")
    peer = parse_peer(entry, f"{path}: entry")
    ak_public = _hex(req, "ak_public", path)
    ek_public = _hex(req, "ek_public", path)
    try:
        if check_ak_public(ak_public) != peer.ak_pub:
            raise IntegrityError(f"{path}: ak_public is not the entry's ak_pub", _HINT)
        ek_pem = ek_public_pem(ek_public)
    except ValueError as e:
        raise IntegrityError(f"{path}: {e}", _HINT) from None
    if chain is not None:
        cert = req.get("ek_cert")
        if not isinstance(cert, str):
            raise IntegrityError(
                f"{path}: no EK certificate (the TPM has none in NV)",
                hint="enrol with --no-ek-cert to trust this EK on first use",
            )
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        try:
            der = x509.load_pem_x509_certificate(cert.encode()).public_bytes(
                serialization.Encoding.DER
            )
        except ValueError:
            raise IntegrityError(f"{path}: ek_cert is not a PEM certificate", _HINT) from None
        root = check_ek_certificate(der, ek_pem, chain)
        log.info("EK certificate of %s chains to %s", peer.id, root)
    assert isinstance(entry, dict)
    return entry, ek_public, ak_public


def cmd_challenge(args: argparse.Namespace, cfg: Config) -> int:
    import secrets

    from recover.atomicfile import write_file
    from recover.tpm.quote import make_credential

    if not args.ek_ca and not args.no_ek_cert:
        raise ConfigError(
            "give the EK certificate's issuer chain with --ek-ca, or --no-ek-cert", _HINT
        )
    chain = []
    for path in args.ek_ca:
        try:
            with open(path, "rb") as f:
                chain.append(f.read())
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}", _HINT) from None
    entry, ek_public, ak_public = _checked_request(args.request, None if args.no_ek_cert else chain)
    secret = secrets.token_bytes(32)
    blob, enc = make_credential(ek_public, ak_public, secret)
    # The secret, and what it was made for: verify records exactly this EK and AK.
    write_file(args.secret_file, f"{secret.hex()}\n{_binding(ek_public, ak_public)}\n".encode())
    challenge = {
        "version": 1,
        "id": entry["id"],
        "ek_type": _load(args.request, "request").get("ek_type", "EK-RSA2048"),
        "credential": blob.hex(),
        "secret": enc.hex(),
    }
    print(json.dumps(challenge, indent=2))
    return 0


def cmd_answer(args: argparse.Namespace, cfg: Config) -> int:
    from recover.store.unseal import open_tpm

    ch = _load(args.challenge, "challenge")
    ek_type = ch.get("ek_type", "EK-RSA2048")
    if ek_type not in ("EK-RSA2048", "EK-ECC256"):
        raise ConfigError(f"{args.challenge}: unknown ek_type {ek_type!r}", _HINT)
    blob = _hex(ch, "credential", args.challenge)
    enc = _hex(ch, "secret", args.challenge)
    with open_tpm(cfg) as t:
        answer = t.activate_credential(cfg.tpm_ak_handle, blob, enc, ek_type)
    print(json.dumps({"version": 1, "id": ch.get("id"), "answer": answer.hex()}))
    return 0


def cmd_verify(args: argparse.Namespace, cfg: Config) -> int:
    import hmac

    entry, ek_public, ak_public = _checked_request(args.request, None)
    ans = _load(args.answer, "answer")
    try:
        with open(args.secret_file, encoding="ascii") as f:
            secret_hex, binding = f.read().split()
        secret = bytes.fromhex(secret_hex)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the secret {args.secret_file}: {e}", _HINT) from None
    if binding != _binding(ek_public, ak_public):
        raise IntegrityError(
            f"{args.request}: EK or AK differ from those the challenge was made for", _HINT
        )
    if not hmac.compare_digest(_hex(ans, "answer", args.answer), secret):
        raise IntegrityError(
            f"{entry['id']}: the answer is not the credential's secret: this AK is not in "
            "the TPM of that EK",
            _HINT,
        )
    from recover.tpm.quote import ek_public_pem

    req = _load(args.request, "request")
    out = {**entry, "ek_pub": ek_public_pem(ek_public).decode()}
    if isinstance(req.get("ek_cert"), str):
        out["ek_cert"] = req["ek_cert"]
    log.info("enrolled %s: its AK is in the TPM of the enrolled EK", entry["id"])
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0
