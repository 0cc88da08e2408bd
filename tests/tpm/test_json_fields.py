"""One naming of JSON fields across verbs: every ``--json`` output against a real swtpm,
every key snake_case, and every key two verbs share declared once in
recover/cli/jsonfields.py (docs/cli.md's table)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recover.cli import main
from recover.cli.jsonfields import JSON_FIELDS

pytestmark = pytest.mark.tpm

#: maps whose keys are data (banks, PCR indices, step names, count names), not names
DATA_MAPS = {"pcrs", "timeline_ms", "counts", "selected"}
SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


def _keys(doc: Any, stop: frozenset[str] = frozenset()) -> Iterator[str]:
    """Every field name in ``doc``; not inside data maps, nor inside the fields in ``stop``
    (a declared field's own members are its format, the same wherever it appears)."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield k
            if k not in DATA_MAPS and k not in stop:
                yield from _keys(v, stop)
    elif isinstance(doc, list):
        for v in doc:
            yield from _keys(v, stop)


def test_every_verb_uses_the_declared_snake_case_names(
    swtpm: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "host-recover.conf"
    conf.write_text(
        f"[tpm]\ntcti = {swtpm.tcti}\npcrs = sha256:0,2,4,7,16\nlock_pcr = 14\n"
        f"[store]\nimage = {tmp_path / 'recovery.hri'}\ncredentials = {tmp_path / 'c.hrc'}\n"
        f"[peers]\nhost_id = host-a\ninventory = {tmp_path / 'peers.json'}\n"
    )
    key, master, plain = tmp_path / "image.key", tmp_path / "master.key", tmp_path / "plain"
    plain.write_bytes(os.urandom(5000))
    (tmp_path / "cred").write_bytes(b"secret")

    def run(*argv: str) -> str:
        capsys.readouterr()
        rc = main.main(["--config", str(conf), *argv])
        out, err = capsys.readouterr()
        assert rc == 0, (argv, err)
        return out

    outputs = {
        "provision": run(
            "provision", "--no-owner-auth", "--allow-unbound", "--json",
            "--export-image-key", str(key), "--export-master", str(master),
        ),
        "status": run("status", "--json"),
        "attest": run("attest", "--address", "10.0.0.1:7469", "--failure-domain", "rack-1"),
        "evidence": run("evidence", "--json"),
        "decide": run("decide", "--json"),
    }  # fmt: skip
    run("image", "create", "--payload-type", "raw", "--key-file", str(key), str(plain),
        str(tmp_path / "recovery.hri"))  # fmt: skip
    outputs["image inspect"] = run("image", "inspect", "--json", str(tmp_path / "recovery.hri"))
    run("credential", "add", "--key-file", str(master), "c1", str(tmp_path / "cred"))
    outputs["credential list"] = run("credential", "list", "--json", "--key-file", str(master))

    seen: dict[str, set[str]] = {}
    for verb, text in outputs.items():
        doc = json.loads(text)
        for k in _keys(doc):
            assert SNAKE.match(k), f"{verb}: {k!r} is not snake_case"
        for k in _keys(doc, frozenset(JSON_FIELDS)):
            seen.setdefault(k, set()).add(verb)
    shared = {k for k, verbs in seen.items() if len(verbs) > 1}
    assert shared <= set(JSON_FIELDS), (
        f"shared names missing in jsonfields: {shared - set(JSON_FIELDS)}"
    )
    # the names fixed here, against what they replaced
    st = json.loads(outputs["status"])
    assert set(st["clock"]) == {"time", "clock", "reset_count", "restart_count", "safe"}
    assert st["sealed"]["selection"] == "sha256:0,2,4,7,16" and st["sealed"]["lock_pcr"] == 14
    assert st["sealed"]["lock_pcr_extended"] is False
    assert "timeline_ms" in json.loads(outputs["decide"])
