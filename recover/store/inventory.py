"""The inventory the configuration selects (docs/inventory.md), shared by the boot
payload, ``decide``, the agent and ``host-recover inventory``:

* ``inventory.key`` empty: the baked, unsigned ``peers.inventory`` (measured with the
  initramfs, so trusted as it is), as before;
* ``inventory.key`` set: the signed inventory at ``inventory.file`` (at boot: on the store
  partition), verified with the fleet key and refused below the floor
  max(``inventory.min_version``, the last version this host accepted).

The signed file is read like the signed policy: not followed if a link, a regular file
of bounded size, opened non-blocking (recover.store.safefile); its bytes are untrusted
until the signature checks.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from recover.errors import ConfigError, HostRecoverError

if TYPE_CHECKING:
    from recover.config import Config
    from recover.core.inventory import Inventory

log = logging.getLogger(__name__)


def signed(cfg: Config) -> bool:
    """Whether the configuration selects the signed inventory."""
    return bool(cfg.inventory_key)


def configured(cfg: Config) -> bool:
    """Whether this host has peers at all: a signed inventory is always expected once
    selected (a missing file is an error, never "alone"); the baked one if it exists."""
    return signed(cfg) or os.path.exists(cfg.peers_inventory)


def where(cfg: Config) -> str:
    """The file the inventory comes from (for messages)."""
    return cfg.inventory_file if signed(cfg) else cfg.peers_inventory


def read_key(cfg: Config) -> bytes:
    try:
        return Path(cfg.inventory_key).read_bytes()
    except OSError as e:
        raise ConfigError(
            f"cannot read the fleet key {cfg.inventory_key} (inventory.key): {e.strerror}",
            hint="bake the fleet public key as /etc/host-recover/inventory-pub.pem",
        ) from None


def read_signed(path: str | os.PathLike[str]) -> bytes:
    """The signed inventory's bytes: a regular file, not a link, at most MAX_BYTES."""
    from recover.core.endorse import MAX_BYTES
    from recover.store.safefile import read_capped

    try:
        return read_capped(path, MAX_BYTES, follow=False)
    except HostRecoverError as e:
        raise ConfigError(
            f"cannot read the signed inventory: {e.message}",
            hint="install it with `host-recover inventory sign` (docs/inventory.md)",
        ) from None


def floor(cfg: Config, last_seen: int = 0) -> int:
    """The lowest signed inventory version this host accepts."""
    return max(cfg.inventory_min_version, last_seen)


def load(
    cfg: Config, *, last_seen: int = 0, path: str | os.PathLike[str] | None = None
) -> Inventory:
    """The inventory the configuration selects; ``path`` overrides inventory.file (the
    store partition's copy at boot); ``last_seen``: the newest version accepted before."""
    if not signed(cfg):
        from recover.core import inventory

        return inventory.load(cfg.peers_inventory)
    from recover.core.endorse import parse_signed

    key = read_key(cfg)
    path = os.fspath(path or cfg.inventory_file)
    inv = parse_signed(read_signed(path), key, floor=floor(cfg, last_seen), origin=path)
    log.info(
        "signed inventory v%s: %d hosts (floor %d)", inv.version, len(inv), floor(cfg, last_seen)
    )
    return inv
