"""Credential store v1: real AES-GCM, atomic files, tmpfs hand-over, CLI exit codes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recover.core import credstore
from recover.errors import IntegrityError, UsageError
from recover.store import credentials

MASTER = bytes(range(32))


def _store(**entries: bytes) -> credstore.Store:
    store = credstore.Store()
    for name, value in entries.items():
        store = credstore.add(store, name, value)
    return store


def test_round_trip_and_generation(tmp_path: Path) -> None:
    path = tmp_path / "creds.hrc"
    store = _store(db_password=b"s3cret", **{"tls.key": b"\0" * 3000})
    saved = credentials.save(path, store, MASTER)
    assert saved.generation == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = credentials.load(path, MASTER)
    assert dict(loaded.entries) == {"db_password": b"s3cret", "tls.key": b"\0" * 3000}
    assert loaded.generation == 1
    assert b"s3cret" not in path.read_bytes()
    again = credentials.save(path, credstore.remove(loaded, "tls.key"), MASTER)
    assert credstore.list_names(credentials.load(path, MASTER)) == ["db_password"]
    assert again.generation == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["creds.hrc"]


def test_empty_store_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c"
    credentials.save(path, credstore.Store(), MASTER)
    assert credstore.list_names(credentials.load(path, MASTER)) == []


def test_wrong_master_and_tampering(tmp_path: Path) -> None:
    path = tmp_path / "c"
    credentials.save(path, _store(a=b"1"), MASTER)
    with pytest.raises(IntegrityError, match="wrong master"):
        credentials.load(path, bytes(32))
    good = path.read_bytes()
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 0x01
        with pytest.raises(IntegrityError):
            credstore.unseal(bytes(bad), MASTER)
    for n in range(len(good)):
        with pytest.raises(IntegrityError):
            credstore.unseal(good[:n], MASTER)
    with pytest.raises(IntegrityError):
        credstore.unseal(good + b"\0", MASTER)


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "-x", "a/b", "a\0b", "x" * 256, "é"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(UsageError, match="invalid credential name"):
        credstore.add(credstore.Store(), name, b"v")


def test_limits_and_missing() -> None:
    with pytest.raises(UsageError, match="larger than"):
        credstore.add(credstore.Store(), "big", b"\0" * (credstore.MAX_VALUE + 1))
    with pytest.raises(UsageError, match="no credential named"):
        credstore.remove(credstore.Store(), "nope")


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.@+:-]{0,40}", fullmatch=True),
        st.binary(max_size=64),
        max_size=8,
    )
)
def test_encoding_round_trip(entries: dict[str, bytes]) -> None:
    assert credstore.decode_entries(credstore.encode_entries(entries)) == entries


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decoder_raises_only_integrity_error(data: bytes) -> None:
    try:
        credstore.decode_entries(data)
    except IntegrityError:
        pass


def test_write_to_dir_refuses_non_tmpfs(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        on_tmpfs = credentials.on_memory_fs(fd)
    finally:
        os.close(fd)
    if on_tmpfs:
        pytest.skip("tmp_path is itself on tmpfs")
    with pytest.raises(UsageError, match="not on tmpfs"):
        credentials.write_to_dir(_store(a=b"1"), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_write_to_dir_on_tmpfs(tmp_path: Path) -> None:
    base = Path("/dev/shm")
    if not base.is_dir():
        pytest.skip("no /dev/shm")
    fd = os.open(base, os.O_RDONLY)
    try:
        assert credentials.fs_type(fd) == credentials.TMPFS_MAGIC
        assert credentials.fs_type_name_from_mountinfo(fd) == "tmpfs"
    finally:
        os.close(fd)
    target = base / f"hr-creds-test-{os.getpid()}"
    try:
        names = credentials.write_to_dir(_store(b=b"two", a=b"one"), target)
        assert names == ["a", "b"]
        assert stat.S_IMODE(target.stat().st_mode) == 0o500
        assert sorted(p.name for p in target.iterdir()) == ["a", "b"]
        assert (target / "a").read_bytes() == b"one"
        assert stat.S_IMODE((target / "b").stat().st_mode) == 0o400
    finally:
        if target.exists():
            target.chmod(0o700)
            for p in target.iterdir():
                p.unlink()
            target.rmdir()


def _cli(tmp_path: Path, *argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, HOST_RECOVER_CONFIG="/nonexistent/host-recover.conf")
    store = f"store.credentials={tmp_path / 'creds.hrc'}"
    return subprocess.run(
        [sys.executable, "-m", "recover", "--set", store, "credential", *argv],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_cli(tmp_path: Path) -> None:
    key = tmp_path / "master"
    key.write_bytes(MASTER)
    k = ["--key-file", str(key)]
    (tmp_path / "pw").write_bytes(b"hunter2")
    assert _cli(tmp_path, "add", "db", str(tmp_path / "pw"), *k).returncode == 0
    assert _cli(tmp_path, "add", "api", "-", *k, stdin=b"token").returncode == 0
    r = _cli(tmp_path, "list", "--json", *k)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["credentials"] == [{"name": "api", "size": 5}, {"name": "db", "size": 7}]
    assert doc["generation"] == 2
    assert _cli(tmp_path, "remove", "db", *k).returncode == 0
    assert _cli(tmp_path, "list", *k).stdout == b"api\n"
    r = _cli(tmp_path, "remove", "db", *k)
    assert r.returncode == 2 and b"no credential named" in r.stderr
    r = _cli(tmp_path, "add", "../evil", "-", *k)
    assert r.returncode == 2 and b"invalid credential name" in r.stderr
    other = tmp_path / "other"
    other.write_bytes(bytes(32))
    r = _cli(tmp_path, "list", "--key-file", str(other))
    assert r.returncode == 5 and b"Traceback" not in r.stderr
    (tmp_path / "creds.hrc").unlink()
    r = _cli(tmp_path, "list", *k)
    assert r.returncode == 2 and b"no credential store" in r.stderr


def test_mountinfo_fallback_agrees_with_statfs(tmp_path: Path) -> None:
    for path in ("/proc", "/", "/dev/shm", str(tmp_path)):
        if not os.path.isdir(path):
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            name = credentials.fs_type_name_from_mountinfo(fd)
            memory = credentials.fs_type(fd) in (credentials.TMPFS_MAGIC, credentials.RAMFS_MAGIC)
        finally:
            os.close(fd)
        assert name, path
        assert (name in ("tmpfs", "ramfs")) == memory, (path, name)
