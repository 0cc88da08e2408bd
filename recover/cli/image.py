"""``host-recover image create|inspect|verify|decrypt|convert|floor`` (docs/image-format.md).

The image root key comes from ``--key-file`` (32 raw bytes, as written by
``provision --export-image-key``) or, without it, from the TPM: the sealed master
secret is unsealed and the image root key derived from it; the TPM's anti-rollback
counter then sets the lowest accepted image version.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from recover.errors import UsageError

if TYPE_CHECKING:
    from recover.config import Config

log = logging.getLogger(__name__)

_MIN_VERSION_HELP = "reject images older than this (with the TPM: at least its rollback counter)"


def register(sub: Any) -> None:
    img = sub.add_parser("image", help="Encrypted recovery images (containers v2 and v1).")
    imgsub = img.add_subparsers(dest="image_verb", metavar="ACTION", required=True)
    p = imgsub.add_parser("create", help="Encrypt a file system image into a recovery image.")
    p.set_defaults(handler=cmd_create)
    p.add_argument("input", help="plain file system image (squashfs or erofs)")
    p.add_argument("output", help="recovery image to write")
    p.add_argument(
        "--key-file",
        metavar="FILE",
        help="image key from `provision --export-image-key` (default: the TPM)",
    )
    p.add_argument("--image-version", type=int, default=1, help="anti-rollback version")
    p.add_argument("--payload-type", default="squashfs", choices=["squashfs", "erofs", "raw"])
    p.add_argument(
        "--format",
        type=int,
        default=2,
        choices=[1, 2],
        help="container version: 2 (dm-verity + dm-crypt, mapped by the kernel) or 1 "
        "(AES-GCM chunks, decrypted whole into RAM at boot)",
    )
    p.add_argument("--chunk-size", type=int, default=1 << 20, help="format 1 only")
    p = imgsub.add_parser(
        "inspect", help="Print the header of a recovery image (authenticated with --key-file)."
    )
    p.set_defaults(handler=cmd_inspect)
    p.add_argument("image")
    p.add_argument("--json", action="store_true")
    p.add_argument("--key-file", metavar="FILE", help="image key: also check key id and header MAC")
    p = imgsub.add_parser(
        "verify",
        help="Authenticate every chunk (v2: recompute the whole dm-verity tree) of a "
        "recovery image without writing plaintext.",
    )
    p.set_defaults(handler=cmd_verify)
    p.add_argument("image")
    p.add_argument("--key-file", metavar="FILE")
    p.add_argument("--min-version", type=int, default=0, help=_MIN_VERSION_HELP)
    p = imgsub.add_parser(
        "decrypt",
        help="Verify and decrypt a recovery image (output only appears when all is valid).",
    )
    p.set_defaults(handler=cmd_decrypt)
    p.add_argument("image")
    p.add_argument("output")
    p.add_argument("--key-file", metavar="FILE")
    p.add_argument("--workers", type=int, default=0, help="0: one per core")
    p.add_argument("--min-version", type=int, default=0, help=_MIN_VERSION_HELP)
    p = imgsub.add_parser(
        "convert",
        help="Re-encrypt a format 1 recovery image as format 2 (same key, image version and "
        "payload type); the plaintext stays in memory, the output only appears when every "
        "chunk verified.",
    )
    p.set_defaults(handler=cmd_convert)
    p.add_argument("image", help="format 1 recovery image")
    p.add_argument("output", help="format 2 recovery image to write")
    p.add_argument("--key-file", metavar="FILE")
    p.add_argument("--min-version", type=int, default=0, help=_MIN_VERSION_HELP)
    p = imgsub.add_parser(
        "floor",
        help="Raise the TPM's rollback counter (tpm.rollback_nv): recovery images below "
        "VERSION are refused from then on. Never lowers it.",
    )
    p.set_defaults(handler=cmd_floor)
    p.add_argument("version", type=int, metavar="VERSION")
    p.add_argument(
        "--owner-auth",
        metavar="FILE",
        help="owner hierarchy auth (from `provision --export-owner-auth`), once it is set",
    )


def _image_key(args: argparse.Namespace, cfg: Config) -> tuple[bytes, bool]:
    """(image root key, whether it came from the TPM)."""
    from recover.store.keyfile import read_key_file
    from recover.store.unseal import tpm_master

    if args.key_file:
        return read_key_file(args.key_file, "image key"), False
    from recover.core import keys

    return keys.image_root_key(tpm_master(cfg)), True


def _min_version(args: argparse.Namespace, cfg: Config, from_tpm: bool) -> int:
    """--min-version, raised to the TPM's anti-rollback counter when the TPM is used."""
    explicit = int(getattr(args, "min_version", 0) or 0)
    if not from_tpm:
        return explicit
    from recover.store.unseal import rollback_version

    return max(int(rollback_version(cfg)), explicit)


class _Progress:
    """A one-line progress indicator on stderr, only when stderr is a terminal."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.t0 = time.monotonic()
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        pct = 100 * done // total if total else 100
        rate = done / max(time.monotonic() - self.t0, 1e-6) / 1e6
        sys.stderr.write(f"\r{self.label}: {pct:3d}% {done >> 20} MiB, {rate:.0f} MB/s")
        sys.stderr.flush()
        self.shown = True

    def end(self) -> None:
        if self.shown:
            sys.stderr.write("\n")

    @classmethod
    def maybe(cls, label: str) -> _Progress | None:
        return cls(label) if sys.stderr.isatty() else None


def _run_with_progress(label: str, fn: Any, *a: Any, **kw: Any) -> Any:
    progress = _Progress.maybe(label)
    try:
        return fn(*a, progress=progress, **kw)
    finally:
        if progress:
            progress.end()


def _units(header: Any) -> str:
    """What was checked: v1 chunks, or v2 data blocks under a verity tree."""
    if header.version == 1:
        return f"{header.chunks} chunks"
    return f"{header.data_blocks} blocks under a {header.hash_blocks}-block verity tree"


def cmd_create(args: argparse.Namespace, cfg: Config) -> int:
    from recover.store import image

    key, _ = _image_key(args, cfg)
    header = image.encrypt_file(
        args.input,
        args.output,
        key,
        image_version=args.image_version,
        payload_type=args.payload_type,
        chunk_size=args.chunk_size,
        format_version=args.format,
    )
    print(
        f"{args.output}: format {header.version}, image version {header.image_version}, "
        f"{header.plaintext_length} bytes in {_units(header)}, key id {header.key_id.hex()}"
    )
    return 0


def cmd_inspect(args: argparse.Namespace, cfg: Config) -> int:
    from recover.core import imageformat
    from recover.store import image
    from recover.store.keyfile import read_key_file

    header = image.read_header(args.image)
    info = header.as_dict()
    if getattr(args, "key_file", None):
        imageformat.authenticate(header, read_key_file(args.key_file, "image key"))
    info["header_authenticated"] = bool(getattr(args, "key_file", None))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for name, value in info.items():
            print(f"{name}: {value}")
        if not info["header_authenticated"]:
            print("(header parsed, not authenticated: pass --key-file, or `image verify`)")
    return 0


def cmd_verify(args: argparse.Namespace, cfg: Config) -> int:
    from recover.store import image

    key, from_tpm = _image_key(args, cfg)
    min_version = _min_version(args, cfg, from_tpm)
    header = _run_with_progress(
        "verify", image.verify_file, args.image, key, min_version=min_version
    )
    print(
        f"{args.image}: OK (format {header.version}, image version {header.image_version}, "
        f"{_units(header)})"
    )
    return 0


def cmd_decrypt(args: argparse.Namespace, cfg: Config) -> int:
    from recover.store import image

    if args.workers < 0:
        raise UsageError("--workers must be >= 0")
    key, from_tpm = _image_key(args, cfg)
    min_version = _min_version(args, cfg, from_tpm)
    header = _run_with_progress(
        "decrypt",
        image.decrypt_file,
        args.image,
        args.output,
        key,
        min_version=min_version,
        workers=args.workers,
    )
    print(f"{args.output}: {header.plaintext_length} bytes verified and decrypted")
    return 0


def cmd_convert(args: argparse.Namespace, cfg: Config) -> int:
    from recover.store import image

    key, from_tpm = _image_key(args, cfg)
    min_version = _min_version(args, cfg, from_tpm)
    header = image.convert_file(args.image, args.output, key, min_version=min_version)
    print(
        f"{args.output}: format 2 from format 1, image version {header.image_version}, "
        f"{header.plaintext_length} bytes in {_units(header)}, key id {header.key_id.hex()}"
    )
    return 0


def cmd_floor(args: argparse.Namespace, cfg: Config) -> int:
    from recover.store.policyinstall import raise_image_floor

    value = raise_image_floor(cfg, args.version, owner_auth_file=args.owner_auth)
    log.info("rollback counter 0x%08x = %d: older images are refused", cfg.tpm_rollback_nv, value)
    return 0
