"""The kernel modules a recovery will need, loaded in the background while the payload
still waits for its peers and the TPM (docs/image-format.md, "The mapping").

Without this, each is loaded on demand by the step that first needs it: the store's
file system when the store is mounted, then loop, dm-verity, dm-crypt and the xts
template while the image is mapped, squashfs and overlay at the mount. Each on-demand
load is the kernel starting a ``modprobe`` of its own, one name at a time, inside the
recovery's critical path (on a slow early-boot machine: hundreds of ms each step).

``start`` is called once the evidence says the previous shutdown was not clean (a
recovery is possible) and on a forced recovery: loading a module gives nobody a secret,
so it may run before the verdict; a clean boot never starts it. Nothing waits for it
for correctness: a step that runs first loads what it needs as before (the kernel
serialises two loads of one module).
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time

log = logging.getLogger(__name__)

#: The image's and the recovery root's modules, in the order the steps need them (modprobe
#: names; their dependencies come with them): loop, dm-verity under dm-crypt
#: aes-xts-plain64 (the xts and ecb templates over the built-in or modular aes), then the
#: file systems under the overlay. The store's own file system goes first (``fs-TYPE``).
MODULES = ("loop", "dm_verity", "dm_crypt", "xts", "ecb", "squashfs", "overlay", "algif_skcipher")
#: Ciphers instantiated ahead through an AF_ALG socket (algif_skcipher): the kernel builds
#: ``xts(aes)`` from its templates and runs its self-tests on the first use, which would
#: otherwise be dm-crypt's table load inside the image step. An instance, once built,
#: serves every later user; the socket carries no key and is closed at once.
CIPHERS = (("skcipher", "xts(aes)"),)
#: Seconds the image step waits for the preload (then it goes on: the kernel loads what
#: is missing itself).
WAIT = 10.0
#: Bound of the preload's modprobe.
COMMAND_TIMEOUT = 60.0

_lock = threading.Lock()
_thread: threading.Thread | None = None
_result: dict[str, str | int] = {}  # "names": what modprobe was asked for, "rc", "error"


def names(store_fstype: str) -> list[str]:
    """What the preload asks modprobe for: the store's file system alias first (a name
    blkid gives; anything else is not passed on)."""
    known = store_fstype.isascii() and store_fstype.replace("_", "").isalnum()
    return ([f"fs-{store_fstype}"] if known else []) + list(MODULES)


def _run(store_device: str) -> None:
    from recover.boot.rootfs import store_fstype

    wanted = names(store_fstype(store_device) if store_device else "")
    _result["names"] = " ".join(wanted)
    try:
        proc = subprocess.run(
            ["modprobe", "-a", "-q", *wanted],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as e:
        _result["error"] = str(e)
        return
    _result["rc"] = proc.returncode
    _result["warmed"] = " ".join(instantiate(CIPHERS))


def instantiate(ciphers: tuple[tuple[str, str], ...]) -> list[str]:
    """Bind an AF_ALG socket to each cipher (the kernel instantiates it); the names that
    worked. A failure costs nothing but the head start (logged under debug)."""
    import socket

    done = []
    for kind, name in ciphers:
        try:
            with socket.socket(socket.AF_ALG, socket.SOCK_SEQPACKET, 0) as s:
                s.bind((kind, name))
        except (OSError, AttributeError) as e:  # AttributeError: no AF_ALG in this Python
            log.debug("cipher %s not instantiated ahead: %s", name, e)
            continue
        done.append(name)
    return done


def warmed() -> list[str]:
    """The ciphers the preload instantiated (after :func:`wait` returned a figure)."""
    return str(_result.get("warmed", "")).split()


def start(store_device: str) -> None:
    """Start the preload, once per process (a daemon thread: the payload never waits for
    it to end, and its exit does not either)."""
    global _thread
    with _lock:
        if _thread is not None:
            return
        _thread = threading.Thread(
            target=_run, args=(store_device,), name="host-recover-preload", daemon=True
        )
        _thread.start()


def wait(timeout: float = WAIT) -> float | None:
    """Wait (bounded) for the preload: the ms waited when it loaded every module; None
    when it was not started, failed (logged) or still runs."""
    thread = _thread
    if thread is None:
        return None
    t = time.monotonic()
    thread.join(timeout)
    waited = round((time.monotonic() - t) * 1000, 1)
    if thread.is_alive():
        log.warning("module preload still runs after %g s: going on", timeout)
        return None
    if _result.get("rc") != 0:
        log.warning(
            "module preload of %s: %s (the steps load their modules on demand)",
            _result.get("names", ""),
            _result.get("error") or f"modprobe exit {_result.get('rc')}",
        )
        return None
    return waited
