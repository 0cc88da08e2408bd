"""The hash tree of a batched answer (peer protocol v2, docs/peer-protocol.md). Pure.

A v2 server answers every request pending when its TPM becomes free with ONE quote. Each
request is a leaf; the quote's qualifying data binds the tree's root and size; each reply
carries its leaf's audit path. The construction is RFC 9162's (Certificate Transparency
v2), with SHA-256:

* leaf hash  = SHA-256(0x00 ‖ leaf data), node hash = SHA-256(0x01 ‖ left ‖ right):
  a node can never pass for a leaf nor a leaf for a node (domain separation, no
  second-preimage trick);
* a tree of n leaves splits at the largest power of two below n: an odd leaf is never
  duplicated (the Bitcoin-style duplicate-last-leaf ambiguity does not exist);
* the verifier recomputes the root from (leaf, index, size, path) with RFC 9162 §2.1.3.2,
  which consumes exactly the path the (index, size) pair dictates: a path of the wrong
  length, an index >= size or a size of 0 is refused.

The root alone does not fix the size of the tree, so the quote signs both
(:func:`batch_qualifying_data`). A leaf binds the requester's id, its nonce and the hash
of the status reported to it (:func:`leaf_data`), so a reply is exactly as fresh and as
bound as a v1 reply.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
LEAF_CONTEXT = b"host-recover/v2/leaf\x00"
BATCH_CONTEXT = b"host-recover/v2/batch\x00"
MAX_LEAVES = 4096  # a server never batches more; a verifier refuses larger trees
MAX_PATH = 12  # ceil(log2(MAX_LEAVES))


class PathError(ValueError):
    """The (index, size, path) triple does not describe a leaf of a tree."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def leaf_data(requester: str, nonce: bytes, status_hash: bytes) -> bytes:
    """What one leaf says: this status answers this requester's nonce. Every field has a
    fixed length or a length prefix, so no two triples encode alike."""
    rid = requester.encode()
    if len(rid) > 0xFFFF or len(nonce) > 0xFF or len(status_hash) != 32:
        raise ValueError("leaf field out of range")
    return b"".join(
        (
            LEAF_CONTEXT,
            struct.pack(">H", len(rid)),
            rid,
            struct.pack(">B", len(nonce)),
            nonce,
            status_hash,
        )
    )


def batch_qualifying_data(root: bytes, size: int) -> bytes:
    """The quote's qualifying data (extraData) for a batch: its root and its size."""
    return hashlib.sha256(BATCH_CONTEXT + struct.pack(">I", size) + root).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def tree(leaves: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """(root, the audit path of every leaf) for the leaf hashes ``leaves``."""
    if not 1 <= len(leaves) <= MAX_LEAVES:
        raise ValueError(f"a batch has 1 to {MAX_LEAVES} leaves, not {len(leaves)}")
    paths: list[list[bytes]] = [[] for _ in leaves]

    def build(lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return leaves[lo]
        k = lo + _split(hi - lo)
        left, right = build(lo, k), build(k, hi)
        for i in range(lo, k):
            paths[i].append(right)
        for i in range(k, hi):
            paths[i].append(left)
        return node_hash(left, right)

    return build(0, len(leaves)), paths


def root_from_path(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes:
    """The root a leaf hash at ``index`` of a ``size``-leaf tree proves with ``path``
    (RFC 9162 §2.1.3.2). Raises PathError if the path cannot belong to such a leaf."""
    if not 0 <= index < size <= MAX_LEAVES:
        raise PathError(f"leaf {index} of a tree of {size}")
    if len(path) > MAX_PATH or any(len(p) != 32 for p in path):
        raise PathError("audit path entries must be 32-byte hashes")
    fn, sn = index, size - 1
    r = leaf
    for p in path:
        if sn == 0:
            raise PathError("audit path longer than the tree")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise PathError("audit path shorter than the tree")
    return r
