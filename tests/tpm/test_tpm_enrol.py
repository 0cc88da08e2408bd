"""AK enrolment anchored in the EK (issue 9): what swtpm offers, and
MakeCredential/ActivateCredential binding the AK to the TPM whose EK the certificate
names. Real swtpm; swtpm_setup + swtpm_localca create the EK certificate."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.swtpm import SwTpm

from recover.core.attest import check_ek_certificate
from recover.errors import HostRecoverError, IntegrityError
from recover.tpm import Tpm
from recover.tpm.quote import check_ak_public, ek_public_pem, make_credential

pytestmark = pytest.mark.tpm

AK = 0x81010002
OTHER_AK = 0x81010003
SECRET = bytes(range(32))


def manufactured(root: Path) -> Path:
    """A TPM state with an RSA EK certificate issued by a local CA (swtpm_localca), as
    `swtpm_setup --create-ek-cert --create-platform-cert` makes it."""
    if not shutil.which("swtpm_setup") or not shutil.which("swtpm_localca"):
        pytest.skip("swtpm_setup/swtpm_localca not installed")
    ca, state = root / "ca", root / "state"
    ca.mkdir()
    state.mkdir()
    (root / "localca.conf").write_text(
        f"statedir = {ca}\nsigningkey = {ca}/signkey.pem\n"
        f"issuercert = {ca}/issuercert.pem\ncertserial = {ca}/certserial\n"
    )
    (root / "setup.conf").write_text(
        "create_certs_tool = /usr/bin/swtpm_localca\n"
        f"create_certs_tool_config = {root}/localca.conf\n"
        "create_certs_tool_options = /etc/swtpm-localca.options\n"
        "active_pcr_banks = sha256\n"
    )
    subprocess.run(
        ["swtpm_setup", "--tpm2", "--tpmstate", str(state), "--create-ek-cert",
         "--create-platform-cert", "--config", str(root / "setup.conf"), "--overwrite"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return state


@pytest.fixture
def certified(tmp_path: Path) -> Iterator[tuple[SwTpm, list[bytes]]]:
    sw = SwTpm(manufactured(tmp_path)).start()
    chain = [(tmp_path / "ca" / n).read_bytes() for n in ("issuercert.pem",
             "swtpm-localca-rootca-cert.pem")]  # fmt: skip
    try:
        yield sw, chain
    finally:
        sw.kill()


def test_ek_certificate_and_credential_activation(certified: tuple[SwTpm, list[bytes]]) -> None:
    sw, chain = certified
    with Tpm.open(sw.tcti) as t:
        ak_pem = t.ensure_ak(AK)
        ek_public, cert = t.endorsement()
        ak_public = t.ak_public_area(AK)
        # The operator's side: the certificate names this EK and chains to the CA ...
        assert cert is not None
        assert "swtpm-localca" in check_ek_certificate(cert, ek_public_pem(ek_public), chain)
        # ... the AK is a restricted, fixedTPM signing key: the one in the inventory ...
        assert check_ak_public(ak_public) == ak_pem
        # ... and the credential made for (EK, AK name) comes back only from this TPM.
        blob, enc = make_credential(ek_public, ak_public, SECRET)
        assert t.activate_credential(AK, blob, enc) == SECRET


def test_credential_for_another_ak_or_ek_is_not_activated(
    certified: tuple[SwTpm, list[bytes]], tmp_path: Path
) -> None:
    sw, chain = certified
    other = SwTpm(tmp_path / "other").start()  # another TPM, no EK certificate
    try:
        with Tpm.open(other.tcti) as o:
            o.ensure_ak(AK)
            other_ek, other_cert = o.endorsement()
            other_ak = o.ak_public_area(AK)
        assert other_cert is None  # plain swtpm: no EK certificate in NV
        with Tpm.open(sw.tcti) as t:
            t.ensure_ak(AK)
            ek_public, cert = t.endorsement()
            assert cert is not None
            # An AK from elsewhere presented with this TPM's EK: its name differs.
            blob, enc = make_credential(ek_public, other_ak, SECRET)
            with pytest.raises(HostRecoverError):
                t.activate_credential(AK, blob, enc)
            # This AK, but a credential for another TPM's EK.
            blob, enc = make_credential(other_ek, t.ak_public_area(AK), SECRET)
            with pytest.raises(HostRecoverError):
                t.activate_credential(AK, blob, enc)
            # A certificate does not vouch for another EK.
            with pytest.raises(IntegrityError, match="another key"):
                check_ek_certificate(cert, ek_public_pem(other_ek), chain)
            with pytest.raises(IntegrityError, match="not issued by"):
                check_ek_certificate(cert, ek_public_pem(ek_public), chain[1:])
    finally:
        other.kill()


def test_a_non_restricted_key_is_not_an_ak() -> None:
    """check_ak_public refuses a key that could sign anything (not restricted)."""
    from tpm2_pytss import TPM2B_PUBLIC

    from recover.tpm.quote import AK_ATTRS

    tmpl = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=AK_ATTRS & ~0x10000)
    with pytest.raises(ValueError, match="not an attestation key"):
        check_ak_public(bytes(tmpl.publicArea.marshal()))


def test_enrol_cli_end_to_end(certified: tuple[SwTpm, list[bytes]], tmp_path: Path) -> None:
    """host: request → operator: challenge (checks the EK certificate) → host: answer
    (ActivateCredential) → operator: verify → an inventory entry recording the EK."""
    import json
    import os
    import sys

    from recover.core import inventory

    sw, _ = certified
    ca = tmp_path / "ca"
    chain = ["--ek-ca", str(ca / "issuercert.pem"), "--ek-ca",
             str(ca / "swtpm-localca-rootca-cert.pem")]  # fmt: skip
    env = {**sw.env, "HOST_RECOVER_CONFIG": os.devnull}

    def hr(*args: str, out: Path | None = None, rc: int = 0) -> str:
        p = subprocess.run([sys.executable, "-m", "recover", *args], env=env,
                           capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert p.returncode == rc, p.stderr
        if out is not None:
            out.write_text(p.stdout)
        return p.stdout if rc == 0 else p.stderr

    req, ch, ans, secret = (tmp_path / n for n in ("req.json", "ch.json", "ans.json", "s"))
    hr("enrol", "request", "--address", "10.0.0.1:7469", "--failure-domain", "r1", out=req)
    hr("enrol", "challenge", str(req), "--secret-file", str(secret), *chain, out=ch)
    assert secret.stat().st_mode & 0o777 == 0o600
    hr("enrol", "answer", str(ch), out=ans)
    entry = json.loads(hr("enrol", "verify", str(req), str(ans), "--secret-file", str(secret)))
    peer = inventory.parse([entry]).peers[0]
    assert peer.ek_pub and peer.ek_cert and peer.lock_pcr == 15
    assert peer.ak_pub.decode() == json.loads(req.read_text())["entry"]["ak_pub"]
    # Without the CA chain the operator must say --no-ek-cert explicitly.
    assert "--ek-ca" in hr("enrol", "challenge", str(req), "--secret-file", str(secret), rc=2)
    # A wrong answer (another secret) is refused with the integrity exit code.
    bad = json.loads(ans.read_text()) | {"answer": "00" * 32}
    ans.write_text(json.dumps(bad))
    out = hr("enrol", "verify", str(req), str(ans), "--secret-file", str(secret), rc=5)
    assert "not in the TPM of that EK" in out
