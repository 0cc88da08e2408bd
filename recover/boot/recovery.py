"""The recovery steps, carried out in the order recover.core.plan gives them:
(mark) → binding → unseal → lock → store → image → rootfs → credentials.

Nothing on the store is read before the secret is unsealed and the lock PCR extended,
except — with ``tpm.policy = signed`` — the signed policy file, which the unseal needs;
it is read from the store mounted ``ro,nodev,nosuid,noexec`` with O_NONBLOCK|O_NOFOLLOW,
as a regular file of bounded size (recover.store.safefile).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from recover.boot import lock, rootfs
from recover.boot.record import Outcome, record_nv
from recover.config import Config
from recover.core.plan import Step
from recover.errors import HostRecoverError, IntegrityError, SystemFault
from recover.log import step
from recover.settings import PolicyKind

if TYPE_CHECKING:
    from recover.tpm import Tpm

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Recovery:
    """The state the recovery steps hand on to each other."""

    cfg: Config
    tpm: Tpm
    newroot: str
    outcome: Outcome
    master: bytearray = dataclasses.field(default_factory=bytearray)
    image_path: str = ""
    creds_path: str = ""
    image_device: str = ""  # what ``rootfs`` mounts: the dm-crypt device or the v1 plaintext
    cmdline: str = ""  # the kernel command line's text (/proc/cmdline)

    def wipe(self) -> None:
        for i in range(len(self.master)):
            self.master[i] = 0


def run_steps(r: Recovery, steps: tuple[Step, ...]) -> None:
    """Carry out ``steps`` in order; raises on the first failure. The master secret is
    wiped from memory at the end, whatever happens."""
    actions = {
        Step.MARK: _mark,
        Step.BINDING: _binding,
        Step.UNSEAL: _unseal,
        Step.LOCK: _lock,
        Step.STORE: _store,
        Step.IMAGE: _image,
        Step.ROOTFS: _rootfs,
        Step.CREDENTIALS: _credentials,
    }
    try:
        for s in steps:
            with step(str(s), r.outcome.timeline_ms):
                actions[s](r)
    finally:
        r.wipe()


def _mark(r: Recovery) -> None:
    record_nv(r.tpm, r.cfg, dataclasses.replace(r.outcome, action="recovering"))


def _binding(r: Recovery) -> None:
    """A command line the event log measured must be the one the kernel got: else the
    PCRs bind a command line this boot did not run with (exit 4, before unseal)."""
    from recover.store import binding

    log.info("binding: %s", binding.check_cmdline(r.cfg.tpm_event_log, r.cmdline))


def _unseal(r: Recovery) -> None:
    from recover.store import unseal

    cfg = r.cfg
    if cfg.tpm_policy is PolicyKind.SIGNED and cfg.store_device:
        # The signed policy lives outside the measured boot path: on the store
        # partition, next to the image (same file name as tpm.policy_file).
        rootfs.mount_store(cfg)
        policy_file = rootfs.store_dir(cfg) / os.path.basename(cfg.tpm_policy_file)
        cfg = dataclasses.replace(cfg, tpm_policy_file=os.fspath(policy_file))
    r.master[:] = unseal.unseal_master(cfg, tpm=r.tpm)


def _lock(r: Recovery) -> None:
    r.outcome.lock = lock.extend(r.tpm, r.cfg.tpm_lock_pcr)
    r.outcome.lock_pcr_extended = True


def _store(r: Recovery) -> None:
    r.image_path, r.creds_path = rootfs.mount_store(r.cfg)


def _image(r: Recovery) -> None:
    """Authenticate the image (key id, MAC, anti-rollback, size). v2: map it through
    dm-verity and dm-crypt (the kernel decrypts on demand; recover.boot.dmimage); v1:
    decrypt it whole into a tmpfs sized for it."""
    from recover.core import imageformat, keys
    from recover.store import image

    header = image.read_header(r.image_path)
    min_version = r.tpm.counter_read(r.cfg.tpm_rollback_nv)
    r.outcome.image = {
        "path": r.image_path,
        "format": header.version,
        "version": header.image_version,
        "payload_type": header.payload_type,
        "size": header.plaintext_length,
        "min_version": min_version,
    }
    image_key = keys.image_root_key(bytes(r.master))
    if isinstance(header, imageformat.HeaderV2):
        from recover.boot import dmimage

        header, data_key = image.open_v2(r.image_path, image_key, min_version=min_version)
        mapping = dmimage.map_image(r.image_path, header, bytearray(data_key))
        r.image_device = mapping.device
        r.outcome.image.update(
            key_passing=mapping.key_passing,
            steps_ms=mapping.steps_ms,
            warmed=mapping.warmed,
            tools=mapping.tools,
        )
    else:
        plain_dir = Path(r.cfg.boot_state_dir) / "image"
        rootfs.tmpfs(plain_dir, size_bytes=header.plaintext_length + (1 << 20))
        image.decrypt_file(r.image_path, plain_dir / "root.img", image_key, min_version=min_version)
        r.image_device = os.fspath(plain_dir / "root.img")
    if header.image_version > min_version:
        # The rollback counter is owner-write only: with an empty owner auth the boot may
        # still raise it; once an owner auth is set only `image floor --owner-auth` can.
        if r.tpm.owner_auth_set():
            log.info(
                "image version %d is above the floor %d: raise it with `host-recover image "
                "floor %d --owner-auth FILE`",
                header.image_version,
                min_version,
                header.image_version,
            )
        else:
            with contextlib.suppress(HostRecoverError):
                r.tpm.counter_advance_to(r.cfg.tpm_rollback_nv, header.image_version)


def _rootfs(r: Recovery) -> None:
    payload_type = (r.outcome.image or {}).get("payload_type", "auto")
    try:
        rootfs.mount_image(
            Path(r.image_device), payload_type, Path(r.cfg.boot_state_dir), r.newroot
        )
    except SystemFault:
        from recover.boot import dmimage

        if r.image_device.startswith("/dev/mapper/") and dmimage.corrupted():
            raise IntegrityError(
                "the recovery image failed dm-verity while mounting (a corrupted block)",
                hint="the image on the store is tampered or damaged; `image verify` names the block",
            ) from None
        raise


def _credentials(r: Recovery) -> None:
    from recover.core.credstore import require_generation
    from recover.store import credentials

    floor = credentials.tpm_floor(r.tpm, r.cfg)  # read before the store is used
    store = credentials.load(r.creds_path, bytes(r.master))
    require_generation(store, floor, r.creds_path)
    if floor is None:
        log.warning("no credential store floor in the TPM yet: rollback is not detected")
    cred_dir = Path(r.cfg.boot_credentials_dir)
    cred_dir.parent.mkdir(mode=0o755, parents=True, exist_ok=True)  # /run: tmpfs
    r.outcome.credentials = credentials.write_to_dir(store, cred_dir)
    rootfs.unmount_store(r.cfg, in_use=r.image_device.startswith("/dev/mapper/"))
