"""Property tests on the container header parser: strict, pure, and never fooled."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recover.core import imageformat
from recover.errors import IntegrityError, UsageError

KEY = bytes(range(32))


def _valid_header() -> bytes:
    header, _ = imageformat._build_header(
        KEY, imageformat.PayloadType.EROFS, 1 << 16, 123456789, 42
    )
    return header.raw


VALID = _valid_header()


def test_valid_header_parses_and_authenticates() -> None:
    h = imageformat.parse_header(VALID)
    assert (h.payload_type, h.chunk_size, h.plaintext_length, h.image_version) == (
        "erofs",
        1 << 16,
        123456789,
        42,
    )
    assert len(imageformat.authenticate(h, KEY)) == 32


def _parse_and_auth(data: bytes) -> None:
    h = imageformat.parse_header(data)
    imageformat.authenticate(h, KEY)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, imageformat.HEADER_SIZE - 1), st.integers(1, 255)),
        min_size=1,
        max_size=6,
    )
)
def test_any_xor_mutation_is_rejected(flips: list[tuple[int, int]]) -> None:
    data = bytearray(VALID)
    for pos, mask in flips:
        data[pos] ^= mask
    if bytes(data) == VALID:  # flips cancelled out
        return
    with pytest.raises(IntegrityError):
        _parse_and_auth(bytes(data))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, imageformat.HEADER_SIZE - 1), st.binary(min_size=1, max_size=16))
def test_any_overwrite_is_rejected(pos: int, patch: bytes) -> None:
    data = bytearray(VALID)
    data[pos : pos + len(patch)] = patch
    data = data[: imageformat.HEADER_SIZE]
    if bytes(data) == VALID:
        return
    with pytest.raises(IntegrityError):
        _parse_and_auth(bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2 * imageformat.HEADER_SIZE))
def test_arbitrary_bytes_raise_only_typed_errors(data: bytes) -> None:
    try:
        _parse_and_auth(data)
    except (IntegrityError, UsageError):
        return
    raise AssertionError("random bytes authenticated")


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=imageformat.HEADER_SIZE, max_size=imageformat.HEADER_SIZE))
def test_random_bytes_with_valid_magic_raise_only_typed_errors(tail: bytes) -> None:
    data = imageformat.MAGIC + tail[len(imageformat.MAGIC) :]
    with pytest.raises(IntegrityError):
        _parse_and_auth(data)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, imageformat.HEADER_SIZE - 1))
def test_truncated_header_rejected(n: int) -> None:
    with pytest.raises(IntegrityError, match="too short"):
        imageformat.parse_header(VALID[:n])


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "message"),
    [
        (8, ">H", 3, "format version 3"),
        (10, ">H", 9, "cipher suite"),
        (12, ">B", 0, "payload type"),
        (13, ">B", 1, "reserved"),
        (14, ">H", 256, "header size"),
        (16, ">I", 100, "chunk size"),
        (16, ">I", (1 << 26) + 1, "chunk size"),
        (20, ">I", 1, "reserved"),
        (79, ">B", 1, "reserved"),
    ],
)
def test_field_checks(offset: int, fmt: str, value: int, message: str) -> None:
    import struct

    data = bytearray(VALID)
    struct.pack_into(fmt, data, offset, value)
    with pytest.raises(IntegrityError, match=message):
        imageformat.parse_header(bytes(data))


def test_length_beyond_chunk_counter_rejected() -> None:
    import struct

    data = bytearray(VALID)
    struct.pack_into(">IIQ", data, 16, 512, 0, 512 * (1 << 32) + 1)
    with pytest.raises(IntegrityError, match="2\\^32 chunks"):
        imageformat.parse_header(bytes(data))
