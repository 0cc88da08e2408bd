"""Benchmark: stream-decrypt a recovery image from tmpfs into tmpfs vs `cp` (issue 5).

    .venv/bin/python -m bench.image_decrypt [--size-mib 1024] [--write-docs]

Everything is measured in the same run on the same machine: `cp` of the container into
tmpfs (the baseline), `decrypt_file` and `verify_file` with 1 and N workers, container
v2's `encrypt_file`, `verify_file` and `decrypt_file` (and v1's `encrypt_file`), in-memory
AES-256-GCM ``decrypt_into`` (16 KiB and 1 MiB) against `openssl speed`. Each timing is
the median of ``--repeat`` runs after a warm-up that touches the tmpfs pages once.
All files live in a private directory under /dev/shm, removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench.perfdoc import DOC, reproduce, write_section

from recover.core import imageformat  # noqa
from recover.store import image  # noqa

KEY = bytes(range(32))
SECTION = "## Image decryption"


def interleaved(
    contenders: dict[str, Callable[[], object]], rounds: int, cleanup: Callable[[], None]
) -> dict[str, list[float]]:
    """Time every contender once per round, in turn, so load from other processes on
    this shared machine hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            cleanup()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    cleanup()
    return times


def openssl_speed(seconds: int) -> float:
    """AES-256-GCM bytes/s from `openssl speed -evp aes-256-gcm -bytes 16384`."""
    out = subprocess.run(
        ["openssl", "speed", "-evp", "aes-256-gcm", "-bytes", "16384", "-seconds", str(seconds)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    m = re.search(r"^AES-256-GCM\s+([\d.]+)k\s*$", out, re.M | re.I)
    if not m:
        raise SystemExit(f"cannot parse openssl speed output:\n{out}")
    return float(m.group(1)) * 1000


def gcm_in_memory(block: int, seconds: float, total: int = 256 << 20) -> float:
    """decrypt_into bytes/s over ``total`` bytes of distinct ciphertext in ``block`` pieces."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(KEY)
    n = max(1, total // block)
    nonce = bytes(12)
    ct = aead.encrypt(nonce, bytes(block), b"")
    src = memoryview(bytearray(ct * n))
    dst = memoryview(bytearray(block))
    stride = block + 16
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for i in range(n):
            aead.decrypt_into(nonce, src[i * stride : (i + 1) * stride], b"", dst)
        done += n * block
    return done / (time.perf_counter() - t0)


def make_plaintext(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            piece = os.urandom(min(left, 64 << 20))
            h.update(piece)
            f.write(piece)
            left -= len(piece)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--chunk-size", type=int, default=imageformat.DEFAULT_CHUNK)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--openssl-seconds", type=int, default=3)
    ap.add_argument("--write-docs", action="store_true", help=f"update {SECTION!r} in {DOC}")
    args = ap.parse_args()
    size = args.size_mib << 20
    nworkers = image.default_workers()
    work = Path(tempfile.mkdtemp(prefix="hr-bench-", dir="/dev/shm"))
    try:
        names = ("plain", "img.hri", "img2.hri", "out", "cp.out")
        plain, img, img2, out, cpout = (work / n for n in names)
        digest = make_plaintext(plain, size)
        image.encrypt_file(
            plain, img, KEY, image_version=1, payload_type="raw", chunk_size=args.chunk_size,
            format_version=1,
        )  # fmt: skip
        image.encrypt_file(plain, img2, KEY, image_version=1, payload_type="raw")  # v2
        img_size = img.stat().st_size

        def rm() -> None:
            for p in (out, cpout):
                p.unlink(missing_ok=True)

        # Warm-up: fault in tmpfs pages once for every contender.
        subprocess.run(["cp", str(img), str(cpout)], check=True)
        for container in (img, img2):
            image.decrypt_file(container, out, KEY, workers=nworkers)
            if sha256_file(out) != digest:
                raise SystemExit(f"decrypted {container.name} differs from the plaintext")
            rm()

        contenders: dict[str, Callable[[], object]] = {
            "cp container → tmpfs (baseline)": partial(
                subprocess.run, ["cp", str(img), str(cpout)], check=True
            )
        }
        for w in sorted({1, nworkers}):
            contenders[f"v1 decrypt_file, {w} worker(s)"] = partial(
                image.decrypt_file, img, out, KEY, workers=w
            )
        for w in sorted({1, nworkers}):
            contenders[f"v1 verify_file (no output), {w} worker(s)"] = partial(
                image.verify_file, img, KEY, workers=w
            )
        # Container v2 (dm-verity over AES-XTS): the host-side tools, single-threaded.
        contenders["v1 encrypt_file (image create)"] = partial(
            image.encrypt_file, plain, out, KEY, image_version=1, payload_type="raw",
            chunk_size=args.chunk_size, format_version=1,
        )  # fmt: skip
        contenders["v2 encrypt_file (image create)"] = partial(
            image.encrypt_file, plain, out, KEY, image_version=1, payload_type="raw"
        )
        contenders["v2 verify_file (no output)"] = partial(image.verify_file, img2, KEY)
        contenders["v2 decrypt_file"] = partial(image.decrypt_file, img2, out, KEY)
        load = os.getloadavg()[0]
        times = interleaved(contenders, args.repeat, rm)
        gcm16 = gcm_in_memory(16384, args.openssl_seconds, total=16384)  # cache-hot, as openssl
        gcm1m = gcm_in_memory(1 << 20, args.openssl_seconds)
        ossl = openssl_speed(args.openssl_seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def gbs(seconds: float) -> float:
        return img_size / seconds / 1e9

    cmd = reproduce(
        "image_decrypt", f"--size-mib {args.size_mib} --repeat {args.repeat} --write-docs"
    )
    med = {n: statistics.median(t) for n, t in times.items()}
    best = {n: min(t) for n, t in times.items()}
    cp_name = next(iter(times))
    goal_name = f"v1 decrypt_file, {nworkers} worker(s)"
    goal_med, goal_best = med[cp_name] / med[goal_name], best[cp_name] / best[goal_name]
    lines = [
        SECTION,
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on this machine "
        f"({os.cpu_count()} cores), image {args.size_mib} MiB, chunk {args.chunk_size} bytes, "
        f"tmpfs → tmpfs, {args.repeat} interleaved rounds after one warm-up, load average "
        f"{load:.2f} at the start (the machine is shared). Reproduce:",
        "",
        f"    {cmd}",
        "",
        "| operation | median s | GB/s | vs cp (median) | best s | vs cp (best) |",
        "|---|---|---|---|---|---|",
        *[
            f"| {n} | {med[n]:.3f} | {gbs(med[n]):.2f} | {med[cp_name] / med[n]:.2f}x "
            f"| {best[n]:.3f} | {best[cp_name] / best[n]:.2f}x |"
            for n in times
        ],
        "",
        "| in-memory AES-256-GCM | GB/s | vs openssl |",
        "|---|---|---|",
        f"| `openssl speed -evp aes-256-gcm -bytes 16384` (encrypt, 1 core) | {ossl / 1e9:.2f} "
        "| 1.00x |",
        f"| AESGCM.decrypt_into, one 16 KiB block, cache-hot like openssl (1 thread) | {gcm16 / 1e9:.2f} "
        f"| {gcm16 / ossl:.2f}x |",
        f"| AESGCM.decrypt_into, 1 MiB chunks over 256 MiB of RAM (1 thread) | {gcm1m / 1e9:.2f} "
        f"| {gcm1m / ossl:.2f}x |",
        "",
        "The first write to never-touched memory in this VM is 2-4x slower (the host "
        "allocates guest pages); the warm-up round absorbs that for every contender alike. "
        "`cp` is single-threaded in-kernel copying; decryption with N workers needs N idle "
        "cores, so the ratio drops when other jobs load the machine (see the load average).",
        "",
        *(
            [
                f"In this run the baseline's median is {med[cp_name] / best[cp_name]:.1f}x its "
                "best (its times jump between rounds): the *best* columns compare steadier "
                "figures.",
                "",
            ]
            if med[cp_name] > 1.5 * best[cp_name]
            else []
        ),
        "The v1 rows read the v1 container; the v2 rows a format 2 container of the same "
        "plaintext (its data area is the plaintext padded to 4 KiB, plus the hash tree). "
        "v2 is single-threaded: its cost is one AES-XTS context and one salted SHA-256 per "
        "4 KiB block, and Python threads do not share that out (the per-block calls hold "
        "the interpreter lock longer than the hashing releases it). The boot never runs "
        "them: the kernel decrypts and checks what the recovery OS reads; these are `image "
        "create`, `verify`, `convert` and the offline `decrypt` of the operator's host.",
        "",
        f"Goal: decrypt + verify >= 0.9x of `cp` into tmpfs. Result with {nworkers} workers: "
        f"{goal_med:.2f}x median, {goal_best:.2f}x best "
        f"({'met' if goal_med >= 0.9 else 'NOT met'} on the median).",
        "",
    ]
    section = "\n".join(lines)
    print(section)
    if args.write_docs:
        write_section(SECTION, section)
        print(f"(written to {DOC})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
