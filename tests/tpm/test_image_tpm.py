"""Image and credential verbs with the key from a real swtpm (no --key-file).

One swtpm, provisioned through the CLI: the TPM path and the exported key files must
agree, and the TPM's rollback counter (1 after provisioning) must reject version 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recover.store import image
from recover.store.keyfile import read_key_file

pytestmark = pytest.mark.tpm


def test_tpm_key_path(swtpm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = dict(os.environ, HOST_RECOVER_CONFIG="/nonexistent/host-recover.conf", **swtpm.env)
    creds = f"store.credentials={tmp_path / 'creds.hrc'}"

    def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "recover", "--set", creds, *map(str, argv)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    ik, master = tmp_path / "image.key", tmp_path / "master"
    r = run(
        "provision",
        "--no-owner-auth",
        "--allow-unbound",
        "--export-image-key",
        ik,
        "--export-master",
        master,
    )
    assert r.returncode == 0, r.stderr
    plain = tmp_path / "root.squashfs"
    plain.write_bytes(b"hsqs" + os.urandom(30_000))

    # Made with the TPM's key, readable with the exported key file, and vice versa.
    img = tmp_path / "a.hri"
    r = run("image", "create", plain, img, "--image-version", "3", "--chunk-size", "4096")
    assert r.returncode == 0, r.stderr
    assert image.verify_file(img, read_key_file(ik, "image key")).image_version == 3
    img2 = tmp_path / "b.hri"
    assert run("image", "create", plain, img2, "--key-file", ik).returncode == 0
    out = tmp_path / "out"
    r = run("image", "decrypt", img2, out)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == plain.read_bytes()

    # Anti-rollback from the TPM counter (1 after provisioning): version 0 is refused
    # through the TPM path, accepted with a key file and no --min-version.
    old = tmp_path / "old.hri"
    r = run("image", "create", plain, old, "--key-file", ik, "--image-version", "0")
    assert r.returncode == 0, r.stderr
    r = run("image", "verify", old)
    assert r.returncode == 5 and "older than the minimum 1" in r.stderr, r.stderr
    assert run("image", "verify", old, "--key-file", ik).returncode == 0

    # Credentials: the TPM's master and the exported master file open the same store.
    (tmp_path / "pw").write_bytes(b"hunter2")
    assert run("credential", "add", "db", tmp_path / "pw").returncode == 0
    r = run("credential", "list", "--key-file", master)
    assert r.returncode == 0 and r.stdout == "db\n", r.stderr
