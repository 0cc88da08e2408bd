"""Key files carry their kind (recover/store/keyfile.py): the wrong kind is refused with a
hint naming the right file; raw 32-byte files from before are accepted with a warning."""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path

import pytest

from recover.cli.main import main
from recover.errors import UsageError
from recover.store.keyfile import KeyKind, encode_key_file, read_key_file

KEY = bytes(range(32))


@pytest.mark.parametrize("kind", list(KeyKind))
def test_round_trip(tmp_path: Path, kind: KeyKind) -> None:
    f = tmp_path / "k"
    f.write_bytes(encode_key_file(kind, KEY))
    assert f.read_text().splitlines()[0] == f"-----BEGIN HOST-RECOVER {kind}-----"
    assert read_key_file(f, kind) == KEY
    assert read_key_file(f, kind.noun) == KEY  # callers may name the kind by its noun


@pytest.mark.parametrize(("given", "wanted"), list(itertools.permutations(KeyKind, 2)))
def test_the_wrong_kind_is_refused_with_a_hint(
    tmp_path: Path, given: KeyKind, wanted: KeyKind
) -> None:
    f = tmp_path / "k"
    f.write_bytes(encode_key_file(given, KEY))
    with pytest.raises(UsageError) as e:
        read_key_file(f, wanted)
    assert f"holds a {given.noun}, not the {wanted.noun}" in e.value.message
    assert e.value.hint is not None and "--export-" in e.value.hint


@pytest.mark.parametrize(
    "text",
    [
        "-----BEGIN HOST-RECOVER IMAGE KEY-----\nAAAA\n-----END HOST-RECOVER IMAGE KEY-----\n",
        "-----BEGIN HOST-RECOVER IMAGE KEY-----\n!!!!\n-----END HOST-RECOVER IMAGE KEY-----\n",
        "-----BEGIN HOST-RECOVER IMAGE KEY-----\n",
        "-----BEGIN HOST-RECOVER PRIVATE KEY-----\nAAAA\n-----END HOST-RECOVER PRIVATE KEY-----\n",
        "-----BEGIN HOST-RECOVER IMAGE KEY-----\n"
        + encode_key_file(KeyKind.IMAGE_KEY, KEY).decode().splitlines()[1]
        + "\n-----END HOST-RECOVER MASTER SECRET-----\n",
    ],
)
def test_damaged_files_are_refused(tmp_path: Path, text: str) -> None:
    f = tmp_path / "k"
    f.write_text(text)
    with pytest.raises(UsageError):
        read_key_file(f, KeyKind.IMAGE_KEY)


def test_raw_files_from_before_are_accepted_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = tmp_path / "old.key"
    f.write_bytes(KEY)
    caplog.set_level(logging.WARNING)
    assert read_key_file(f, KeyKind.MASTER_SECRET) == KEY
    assert "raw 32-byte key" in caplog.text and "master secret" in caplog.text
    f.write_bytes(KEY[:31])
    with pytest.raises(UsageError, match="exactly 32 raw bytes"):
        read_key_file(f, KeyKind.MASTER_SECRET)


def test_image_create_with_the_master_key_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    master = tmp_path / "master.key"
    master.write_bytes(encode_key_file(KeyKind.MASTER_SECRET, os.urandom(32)))
    plain = tmp_path / "root.squashfs"
    plain.write_bytes(b"hsqs" + os.urandom(4000))
    out = tmp_path / "recovery.hri"
    monkeypatch.setenv("HOST_RECOVER_CONFIG", str(tmp_path / "none.conf"))
    rc = main(["image", "create", "--key-file", str(master), str(plain), str(out)])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2
    errors = [line for line in err if "error:" in line]
    hints = [line for line in err if "hint:" in line]
    assert len(errors) == 1 and "holds a master secret, not the image key" in errors[0], err
    assert len(hints) == 1 and "--export-image-key" in hints[0], err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "master.key",
        "root.squashfs",
    ]
