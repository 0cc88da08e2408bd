"""dm-verity hash trees, format version 1 (the kernel's and ``veritysetup``'s). Pure.

A data area of ``n`` blocks is hashed block by block (``H(salt ‖ block)``); the digests
are packed into hash blocks (``2^⌊log2(hash_block / digest)⌋`` per block, the rest of a
block zero), those blocks are hashed the same way, level by level, until one block is
left; the root hash is ``H(salt ‖ that block)`` (with one data block: ``H(salt ‖ it)``).
On the hash device the levels are stored top first: the level below the root at the
hash start, level 0 (the data blocks' digests) last. Used by recover.core.imageformat
(container v2) and checked against ``veritysetup format``/``verify`` in the tests.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable

DIGEST = "sha256"
DIGEST_SIZE = 32


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where the levels of a tree over ``data_blocks`` blocks lie in the hash area."""

    data_blocks: int
    hash_block_size: int
    #: (first block in the hash area, block count) per level, level 0 (data digests) first
    levels: tuple[tuple[int, int], ...]

    @property
    def hash_blocks(self) -> int:
        return sum(n for _, n in self.levels)

    @property
    def per_block(self) -> int:
        return per_block(self.hash_block_size)


def per_block(hash_block_size: int) -> int:
    """Digests per hash block: the largest power of two that fits."""
    n = hash_block_size // DIGEST_SIZE
    return 1 << (n.bit_length() - 1)


def geometry(data_blocks: int, hash_block_size: int) -> Geometry:
    if data_blocks < 1:
        raise ValueError("a verity tree needs at least one data block")
    bits = per_block(hash_block_size).bit_length() - 1
    depth = 0
    while (data_blocks - 1) >> (bits * depth):
        depth += 1
    sizes = [-(-data_blocks // (1 << (bits * (i + 1)))) for i in range(depth)]
    levels: list[tuple[int, int]] = [(0, 0)] * depth
    position = 0
    for i in reversed(range(depth)):  # the top level first on disk
        levels[i] = (position, sizes[i])
        position += sizes[i]
    return Geometry(data_blocks, hash_block_size, tuple(levels))


class Hasher:
    """Salted block digests, packed into hash blocks as the kernel reads them."""

    def __init__(self, salt: bytes, hash_block_size: int) -> None:
        self._base = hashlib.new(DIGEST, salt)
        self.hash_block_size = hash_block_size
        self.per_block = per_block(hash_block_size)

    def digest(self, block: bytes | memoryview) -> bytes:
        h = self._base.copy()
        h.update(block)
        return h.digest()

    def pack(self, digests: list[bytes]) -> bytes:
        """Digests into hash blocks (each zero-padded to the block size)."""
        out = bytearray()
        step = self.per_block
        for i in range(0, len(digests), step):
            out += b"".join(digests[i : i + step]).ljust(self.hash_block_size, b"\0")
        return bytes(out)


def build_tree(hasher: Hasher, geo: Geometry, level0: list[bytes]) -> tuple[bytes, bytes]:
    """(hash area, root hash) from the data blocks' digests (``level0``)."""
    if len(level0) != geo.data_blocks:
        raise ValueError(f"{len(level0)} digests for {geo.data_blocks} data blocks")
    if not geo.levels:  # one data block: its digest is the root
        return b"", level0[0]
    area = bytearray(geo.hash_blocks * hasher.hash_block_size)
    digests = level0
    bs = hasher.hash_block_size
    for start, count in geo.levels:
        blob = hasher.pack(digests)
        if len(blob) != count * bs:
            raise AssertionError("verity level size mismatch")  # geometry() disagrees
        area[start * bs : (start + count) * bs] = blob
        digests = [hasher.digest(blob[i : i + bs]) for i in range(0, len(blob), bs)]
    return bytes(area), digests[0]


def tree_of_blocks(salt: bytes, blocks: Iterable[bytes], block_size: int) -> tuple[bytes, bytes]:
    """(hash area, root hash) of whole data blocks of ``block_size`` (test helper scale)."""
    hasher = Hasher(salt, block_size)
    level0 = [hasher.digest(b) for b in blocks]
    return build_tree(hasher, geometry(len(level0), block_size), level0)
