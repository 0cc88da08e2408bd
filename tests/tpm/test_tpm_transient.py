"""Transient TPM return codes (RETRY, YIELDED, TESTING) against a real swtpm.

testing/tpmrelay.py sits between the TCTI and swtpm and answers a transient code instead
of forwarding a command, as a busy real TPM does: the command is not executed. The TPM
layer must re-issue exactly the refused command until it passes (or give up, bounded),
so every flow gives the same result as without faults, and a command with a side effect
(PCR_Extend, NV_Increment) takes effect once. Assertions are on results and on the
relay's counts, never on elapsed time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import selectors
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.tpmrelay import (
    COMMANDS,
    DEFAULT_LATENCY,
    RETURN_CODES,
    Fault,
    Latency,
    TpmRelay,
    fault_response,
)

from recover.core.attest import verify_quote
from recover.errors import ExitCode, TpmError
from recover.tpm import Tpm, core

pytestmark = pytest.mark.tpm

SRK, SEAL, AK, COUNTER = 0x81000001, 0x81000002, 0x81010002, 0x01500010
SEL, LOCK, MEASURED = "sha256:0,7,16", 23, 16
SECRET = bytes(range(32))
ESAPI_SENDS = 5  # libtss2 3.2 re-sends a refused command itself, 5 sends in all
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Millisecond pauses: the bounds under test are attempt counts, not seconds."""
    monkeypatch.setattr(core, "RETRY_FIRST_DELAY", 0.001)
    monkeypatch.setattr(core, "RETRY_MAX_DELAY", 0.004)


@pytest.fixture
def relay(swtpm) -> Iterator[TpmRelay]:
    with TpmRelay(swtpm.port) as r:
        yield r


@pytest.fixture
def twin(swtpm, tmp_path: Path) -> Iterator[object]:
    """A second fresh swtpm of the same kind, for a fault-free reference run."""
    other = type(swtpm)(tmp_path / "twin")
    other.start()
    try:
        yield other
    finally:
        other.kill()


def retries_logged(caplog: pytest.LogCaptureFixture) -> int:
    return sum("re-issuing" in r.getMessage() for r in caplog.records)


def seal(t: Tpm) -> None:
    t.seal_master(
        SECRET, srk_handle=SRK, seal_handle=SEAL, selection=SEL, lock_pcr=LOCK,
        policy="pcr", policy_pubkey_pem=None, force=True,
    )  # fmt: skip


def unseal(t: Tpm) -> bytes:
    return t.unseal_master(
        srk_handle=SRK, seal_handle=SEAL, selection=SEL, lock_pcr=LOCK, policy="pcr"
    )


@dataclasses.dataclass(frozen=True)
class Outcome:
    secret: bytes
    quote_ok: bool
    extend_once: bool
    counter_step: int


def provision_and_boot(t: Tpm) -> Outcome:
    """What `provision` and one boot do: SRK, AK, sealed secret, counter; then orderly,
    unseal, quote, a measurement into a PCR and one counter increment."""
    t.ensure_srk(SRK)
    ak_pem = t.ensure_ak(AK)
    seal(t)
    t.ensure_counter(COUNTER, orderly=False)
    t.orderly()
    secret = unseal(t)
    attest, sig = t.quote(AK, b"fresh nonce", SEL)
    info = verify_quote(ak_pem, attest, sig, qualifying_data=b"fresh nonce")
    before = t.pcr_read(f"sha256:{MEASURED}")["sha256"][MEASURED]
    t.pcr_extend(MEASURED, b"host-recover: measured once")
    after = t.pcr_read(f"sha256:{MEASURED}")["sha256"][MEASURED]
    once = hashlib.sha256(before + hashlib.sha256(b"host-recover: measured once").digest())
    c0 = t.counter_read(COUNTER)
    c1 = t.counter_increment(COUNTER)
    return Outcome(secret, info is not None, after == once.digest(), c1 - c0)


def test_esapi_resends_five_times_then_the_tpm_layer_reissues(
    relay: TpmRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """libtss2 re-sends a refused command 4 more times with no pause; our layer takes
    over from there. Pins both numbers, so a libtss2 upgrade that changes them shows."""
    caplog.set_level(logging.DEBUG, logger="recover.tpm.core")
    with Tpm.open(relay.tcti, timeout=5) as t:
        for streak in (1, 4, 5, 9, 10, 23):
            relay.set_faults(f"GetCapability:RETRY*{streak}")
            relay.reset_counts()
            caplog.clear()
            assert t.orderly() is True
            c = relay.counts()
            assert c.injected == {"GetCapability": streak}
            assert c.forwarded == {"GetCapability": 1}
            assert retries_logged(caplog) == streak // ESAPI_SENDS


@pytest.mark.parametrize("rc", sorted(RETURN_CODES))
def test_provision_and_boot_through_transient_codes_on_every_command(
    swtpm, twin, rc: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every command refused 7 times (more than libtss2 re-sends on its own): the same
    results and exactly the same commands reach the TPM as in a run without faults."""
    caplog.set_level(logging.DEBUG, logger="recover.tpm.core")
    with TpmRelay(twin.port) as clean, Tpm.open(clean.tcti, timeout=5) as t:
        expected = provision_and_boot(t)
        reference = clean.counts()
    assert expected == Outcome(SECRET, True, True, 1)
    assert not reference.injected

    streak = 7
    with TpmRelay(swtpm.port, faults=[f"*:{rc}*{streak}"]) as r, Tpm.open(r.tcti, timeout=5) as t:
        got = provision_and_boot(t)
        c = r.counts()
    assert got == expected
    assert c.forwarded == reference.forwarded  # nothing lost, nothing executed twice
    assert c.injected == {name: streak * n for name, n in c.forwarded.items()}
    assert c.injected_rc == {rc: sum(c.injected.values())}
    for name in (
        "CreatePrimary", "Create", "Load", "PolicyPCR", "Unseal", "Quote",
        "NV_Increment", "PCR_Extend", "GetCapability",
    ):  # fmt: skip
        assert c.injected[name] >= streak, name
    assert retries_logged(caplog) == sum(c.forwarded.values())  # one re-issue per command


def test_refused_policy_pcr_and_unseal_are_reissued_in_the_same_session(
    relay: TpmRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """Re-issuing inside a policy session: the session, its nonces and its policy digest
    stay consistent (a doubled PolicyPCR or a stale nonce would fail the Unseal, and a
    wrong response nonce would decrypt the secret to garbage)."""
    caplog.set_level(logging.DEBUG, logger="recover.tpm.core")
    with Tpm.open(relay.tcti, timeout=5) as t:
        t.ensure_srk(SRK)
        seal(t)
        relay.set_faults("PolicyPCR:RETRY*6", "Unseal:YIELDED*6")
        relay.reset_counts()
        caplog.clear()
        got = unseal(t)
    assert got == SECRET
    c = relay.counts()
    assert c.injected == {"PolicyPCR": 6, "Unseal": 6}
    assert c.forwarded["StartAuthSession"] == 1  # one session, not a restarted flow
    assert c.forwarded["PolicyPCR"] == c.forwarded["Unseal"] == 1
    assert retries_logged(caplog) == 2


def test_first_and_third_unseal_refused(relay: TpmRelay) -> None:
    with Tpm.open(relay.tcti, timeout=5) as t:
        t.ensure_srk(SRK)
        seal(t)
        relay.set_faults("Unseal:RETRY@1,3")
        relay.reset_counts()
        for _ in range(4):
            assert unseal(t) == SECRET
    c = relay.counts()
    assert c.injected == {"Unseal": 2}
    assert c.forwarded["Unseal"] == c.forwarded["StartAuthSession"] == 4


def test_refused_extend_and_increment_take_effect_once(relay: TpmRelay) -> None:
    """A TPM that answers RETRY has not executed the command: re-issuing it must not
    extend the PCR twice or count twice (read back from the TPM)."""
    data = b"host-recover: locked"
    with Tpm.open(relay.tcti, timeout=5) as t:
        t.ensure_counter(COUNTER, orderly=False)
        before = t.pcr_read(f"sha256:{MEASURED}")["sha256"][MEASURED]
        c0 = t.counter_read(COUNTER)
        relay.set_faults("PCR_Extend:TESTING*11", "NV_Increment:RETRY*7")
        relay.reset_counts()
        t.pcr_extend(MEASURED, data)
        t.counter_increment(COUNTER)
        relay.set_faults()
        after = t.pcr_read(f"sha256:{MEASURED}")["sha256"][MEASURED]
        assert after == hashlib.sha256(before + hashlib.sha256(data).digest()).digest()
        assert t.counter_read(COUNTER) == c0 + 1
    c = relay.counts()
    assert c.injected == {"PCR_Extend": 11, "NV_Increment": 7}
    assert c.forwarded["PCR_Extend"] == c.forwarded["NV_Increment"] == 1


def test_exhausted_retries_are_a_tpm_error_after_bounded_attempts(
    relay: TpmRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core, "RETRY_MAX_ATTEMPTS", 3)
    with Tpm.open(relay.tcti, timeout=5) as t:
        t.ensure_ak(AK)
        relay.set_faults("Quote:RETRY*inf")
        relay.reset_counts()
        with pytest.raises(TpmError) as err:
            t.quote(AK, b"nonce", SEL)
        e = err.value
        assert e.exit_code == ExitCode.TPM_UNAVAILABLE == 3
        assert e.rc == 0x922 and e.hint
        assert "\n" not in e.message
        assert e.message.startswith("TPM2_Quote: the TPM still answered TPM_RC_RETRY (0x922)")
        assert "after 3 attempts" in e.message
        c = relay.counts()
        assert c.injected == {"Quote": 3 * ESAPI_SENDS}
        assert "Quote" not in c.forwarded

        # A budget of 0 s allows no second attempt, whatever the attempt limit.
        monkeypatch.setattr(core, "RETRY_MAX_ATTEMPTS", 1000)
        monkeypatch.setattr(core, "RETRY_BUDGET", 0.0)
        relay.set_faults("*:TESTING*inf")
        relay.reset_counts()
        with pytest.raises(TpmError, match="after 1 attempts"):
            t.orderly()
        assert relay.counts().injected == {"GetCapability": ESAPI_SENDS}

        # The context is still usable once the TPM takes commands again.
        relay.set_faults()
        attest, _ = t.quote(AK, b"nonce", SEL)
        assert attest


def test_transient_codes_with_layer_bits() -> None:
    """As tpm2-pytss reports them: the TPM's own (layer 0) and a resource manager's TPM
    layer (11); the same numbers in other layers mean something else."""
    for rc in (0x922, 0x908, 0x90A):
        assert core.transient_rc(rc) == rc
        assert core.transient_rc(core.RESMGR_TPM_LAYER | rc) == rc
        assert core.transient_rc((7 << 16) | rc) is None  # ESAPI layer
        assert core.transient_rc(core.TCTI_LAYER | rc) is None
    for rc in (0x921, 0x99D, 0x128, 0x0, core.TCTI_IO_ERROR):
        assert core.transient_rc(rc) is None


def test_commands_work_under_the_latency_model(swtpm) -> None:
    with (
        TpmRelay(swtpm.port, latency_scale=0.005, seed=7) as r,
        Tpm.open(r.tcti, timeout=30) as t,
    ):
        assert provision_and_boot(t) == Outcome(SECRET, True, True, 1)
    c = r.counts()
    assert c.latency_s > 0 and c.forwarded["CreatePrimary"] == 2 and not c.injected


def test_relay_as_a_process(swtpm) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    argv = [
        sys.executable, "-m", "testing.tpmrelay", "--listen", "0", "--to", str(swtpm.port),
        "--latency-scale", "0.01", "--latency", "GetCapability=0.001/0.002",
        "--inject", "GetCapability:YIELDED*2", "--seed", "3",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(timeout=60), "the relay did not report that it listens"
        line = proc.stdout.readline()
        assert line.startswith("tpmrelay listening on 127.0.0.1:"), line
        port = int(line.split(":")[1].split()[0])
        with Tpm.open(f"swtpm:host=127.0.0.1,port={port}", timeout=5) as t:
            assert t.orderly() is True
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0
    counts = json.loads(out)
    assert counts["injected"] == {"GetCapability": 2}
    assert counts["forwarded"] == {"GetCapability": 1}
    assert counts["latency_s"] > 0


# --- the relay's model, without a TPM ----------------------------------------------------


def test_relay_command_table_matches_tpm2_pytss() -> None:
    from tpm2_pytss import TPM2_CC

    for cc, name in COMMANDS.items():
        assert int(getattr(TPM2_CC, name)) == cc, name


def test_fault_response_is_a_well_formed_tpm_response() -> None:
    assert fault_response(0x922) == bytes.fromhex("80010000000a00000922")


def test_latency_is_log_normal_with_the_given_median_and_p95() -> None:
    import random

    rng = random.Random(1)
    samples = sorted(DEFAULT_LATENCY["Quote"].sample(rng) for _ in range(20000))
    assert samples[10000] == pytest.approx(0.200, rel=0.05)
    assert samples[19000] == pytest.approx(0.600, rel=0.10)
    assert Latency.parse("2/5") == Latency(2.0, 5.0) == DEFAULT_LATENCY["CreatePrimary"]
    assert Latency(0.0, 0.0).sample(rng) == 0.0


def test_fault_specs_and_their_schedule() -> None:
    import random

    rng, unseal, quote = random.Random(0), 0x15E, 0x158
    f = Fault.parse("Unseal:RETRY@1,3")
    assert (f.command, f.rc, f.which, f.streak) == ("Unseal", 0x922, frozenset({1, 3}), 1)
    # instance 1: refused, its re-send passes; 2 passes; 3 refused, re-send passes; 4 passes
    assert [f.refuse(unseal, rng) for _ in range(6)] == [True, False, False, True, False, False]
    assert not f.refuse(quote, rng)
    g = Fault.parse("*:yielded*3")
    assert [g.refuse(quote, rng) for _ in range(5)] == [True, True, True, False, True]
    assert Fault.parse("Quote:0x90a@p0.5*inf").streak == math.inf
    p = Fault.parse("Quote:TESTING@p0.25")
    hits = sum(p.refuse(quote, rng) and not p.refuse(quote, rng) for _ in range(4000))
    assert 800 < hits < 1200  # about a quarter of the instances (seeded, not timed)
    for bad in ("Unseal", "Nope:RETRY", "Unseal:RETRY*0", "Unseal:RETRY@0", "Quote:x"):
        with pytest.raises(ValueError):
            Fault.parse(bad)
