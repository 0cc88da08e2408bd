"""The batch hash tree (recover.core.merkle): every leaf of every tree size proves its
root; nothing else does (RFC 9162 paths, domain-separated leaf and node hashes)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recover.core import merkle
from recover.core.merkle import (
    PathError,
    batch_qualifying_data,
    leaf_data,
    leaf_hash,
    node_hash,
    root_from_path,
    tree,
)


def leaves(n: int) -> list[bytes]:
    return [leaf_hash(b"leaf %d" % i) for i in range(n)]


def reference_root(hs: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH, written independently of merkle.tree."""
    if len(hs) == 1:
        return hs[0]
    k = 1
    while k * 2 < len(hs):
        k *= 2
    return node_hash(reference_root(hs[:k]), reference_root(hs[k:]))


@pytest.mark.parametrize("n", [*range(1, 34), 64, 100, 255, 256, 257])
def test_every_leaf_of_every_size_proves_the_root(n: int) -> None:
    hs = leaves(n)
    root, paths = tree(hs)
    assert root == reference_root(hs)
    for i in range(n):
        assert root_from_path(hs[i], i, n, paths[i]) == root


@pytest.mark.parametrize("n", [2, 3, 5, 6, 7, 11, 17])
def test_a_leaf_at_another_index_or_size_does_not_prove_the_root(n: int) -> None:
    """Odd sizes included: the last leaf is never duplicated, so no second position (and
    no other tree size with the same bound size) yields the same root."""
    hs = leaves(n)
    root, paths = tree(hs)
    for i in range(n):
        for j in range(n):
            if j == i:
                continue
            # leaf i presented at index j with its own path, or with j's path
            for path in (paths[i], paths[j]):
                try:
                    assert root_from_path(hs[i], j, n, path) != root
                except PathError:
                    pass
        for m in range(i + 1, n + 3):
            if m == n:
                continue
            try:
                got = root_from_path(hs[i], i, m, paths[i])
            except PathError:
                continue
            # Even where a path shape fits another size, the quote binds the size.
            assert batch_qualifying_data(got, m) != batch_qualifying_data(root, n)


def test_the_last_leaf_of_an_odd_tree_is_not_duplicated() -> None:
    """Bitcoin's tree hashes [a, b, c] like [a, b, c, c]; this one does not."""
    a, b, c = leaves(3)
    root3, _ = tree([a, b, c])
    root4, _ = tree([a, b, c, c])
    assert root3 != root4 == node_hash(node_hash(a, b), node_hash(c, c))
    assert root3 == node_hash(node_hash(a, b), c)


def test_a_node_never_passes_for_a_leaf() -> None:
    """Second preimage: an interior node is not a leaf hash of any data (prefix 0x01 vs
    0x00); a smaller tree over interior nodes gives the same root only under another
    size, which the quote's qualifying data binds."""
    hs = leaves(4)
    root, _ = tree(hs)
    n01, n23 = node_hash(hs[0], hs[1]), node_hash(hs[2], hs[3])
    assert root_from_path(n01, 0, 2, [n23]) == root  # the classic trick on a bare tree
    assert batch_qualifying_data(root, 2) != batch_qualifying_data(root, 4)
    # The data whose leaf hash would be n01 is the two child hashes: the verifier never
    # hashes data of its own choosing that way, and the prefixes differ.
    assert leaf_hash(hs[0] + hs[1]) != n01
    assert hashlib.sha256(b"\x00" + hs[0] + hs[1]).digest() != n01


@pytest.mark.parametrize(
    "index,size,path,words",
    [
        (0, 0, [], "leaf 0 of a tree of 0"),
        (3, 3, [bytes(32)] * 2, "leaf 3 of a tree of 3"),
        (-1, 3, [bytes(32)] * 2, "leaf -1"),
        (0, merkle.MAX_LEAVES + 1, [bytes(32)] * 13, "of a tree of 4097"),
        (0, 4, [bytes(32)], "shorter"),
        (0, 4, [bytes(32)] * 3, "longer"),
        (0, 1, [bytes(32)], "longer"),
        (0, 2, [bytes(31)], "32-byte"),
        (0, 4, [bytes(32)] * 13, "32-byte"),
    ],
)
def test_impossible_paths_are_refused(index: int, size: int, path: list, words: str) -> None:
    with pytest.raises(PathError, match=words):
        root_from_path(leaf_hash(b"x"), index, size, path)


def test_leaf_data_fields_cannot_slide_into_each_other() -> None:
    h = bytes(32)
    assert leaf_data("ab", b"c" * 32, h) != leaf_data("a", b"b" + b"c" * 32, h)
    assert leaf_data("a", bytes(32), h) != leaf_data("b", bytes(32), h)
    with pytest.raises(ValueError):
        leaf_data("a", bytes(32), b"short")


def test_tree_bounds() -> None:
    with pytest.raises(ValueError):
        tree([])
    with pytest.raises(ValueError):
        tree([bytes(32)] * (merkle.MAX_LEAVES + 1))


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_a_changed_path_never_proves_the_root(n: int, data: st.DataObject) -> None:
    hs = leaves(n)
    root, paths = tree(hs)
    i = data.draw(st.integers(0, n - 1))
    path = list(paths[i])
    if not path:
        return
    k = data.draw(st.integers(0, len(path) - 1))
    bit = data.draw(st.integers(0, 255))
    path[k] = bytes(b ^ (1 << (bit % 8)) if j == bit // 8 else b for j, b in enumerate(path[k]))
    assert root_from_path(hs[i], i, n, path) != root
