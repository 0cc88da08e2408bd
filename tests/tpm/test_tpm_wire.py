"""The secret never crosses the TPM bus in clear: swtpm's own dump of every command and
response (``--log level=20``) must not contain it when we seal or unseal. The same dump
does show it for tpm2_unseal's unencrypted session, so the check can see a leak.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from testing.swtpm import SwTpm

from recover.tpm import Tpm

pytestmark = pytest.mark.tpm

SRK, SEAL = 0x81000001, 0x81000002
SEL, LOCK = "sha256:0,7", 15
SECRET = bytes.fromhex("5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7")


def wire_bytes(log: Path) -> bytes:
    """All bytes swtpm dumped (commands and responses), concatenated."""
    hexline = re.compile(r"^\s*(?:[0-9A-F]{2} )*[0-9A-F]{2}\s*$")
    return b"".join(
        bytes.fromhex(line) for line in log.read_text().splitlines() if hexline.match(line)
    )


def test_secret_is_encrypted_on_the_wire(tmp_path: Path) -> None:
    log = tmp_path / "swtpm.log"
    sw = SwTpm(tmp_path / "state", extra_args=("--log", f"file={log},level=20"))
    sw.start()
    try:
        with Tpm.open(sw.tcti) as t:
            t.ensure_srk(SRK)
            t.seal_master(
                SECRET, srk_handle=SRK, seal_handle=SEAL, selection=SEL, lock_pcr=LOCK,
                policy="pcr", policy_pubkey_pem=None, force=False,
            )  # fmt: skip
            got = t.unseal_master(
                srk_handle=SRK, seal_handle=SEAL, selection=SEL, lock_pcr=LOCK, policy="pcr"
            )
        assert got == SECRET
        ours = wire_bytes(log)
        assert len(ours) > 1000  # the dump did record the traffic
        assert SECRET not in ours and SECRET[:16] not in ours and SECRET[16:] not in ours

        log.write_text("")
        r = subprocess.run(
            ["tpm2_unseal", "-c", hex(SEAL), "-p", f"pcr:sha256:0,7,{LOCK}"],
            env=sw.env, capture_output=True, timeout=30, check=True,
        )  # fmt: skip
        assert r.stdout == SECRET
        assert SECRET in wire_bytes(log)  # an unencrypted session leaks it: visible here
    finally:
        sw.close()
