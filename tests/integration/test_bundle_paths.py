"""The bundled payload on its every path, run from the bundle alone (issue 12, item 3).

``host-recover bundle`` ships only the modules importing the payload loads (recover/
bundle.py). What a function imports only when it is called is invisible to that probe,
so this runs ``host-recover boot`` the way the initramfs does — the wrapper's entry code,
sourceless .pyc, the bundle's stdlib as the only standard library (``PYTHONHOME`` is
the staging root: nothing of the build machine's /usr/lib/python3.11 is on the path), no
site — through the clean boot, the recovery (unseal, image, mounts, credentials), the
peer stage (a real round over loopback with simulated peers, the payload's own status
server) and its failures (TPM unreachable, broken configuration, tampered image), each
against a real swtpm. A module missing from the bundle ends a path with
``ModuleNotFoundError`` (an internal error, exit 1) instead of its documented outcome.
Needs root (mounts), like tests/integration/test_boot_host.py, whose ``Host`` this uses.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_boot_host import Host, _assert_nothing_left, _umount_all

from testing import importtime
from testing.peersim import Fleet, SimPeer
from testing.ports import free_port_pair

from recover import bundle

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")

MISSING = ("ModuleNotFoundError", "No module named", "ImportError")


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "stage"
    bundle.build(out)
    return out


def run_bundled(
    stage: Path, *argv: str, python_options: tuple[str, ...] = (), code: str = bundle._ENTRY
) -> subprocess.CompletedProcess[str]:
    """``host-recover ARGV`` as the initramfs's wrapper runs it, from ``stage`` alone;
    ``code``: another statement for the bundle's interpreter (``{site}``: its site)."""
    root = stage / "root"
    entry = code.format(site=os.fspath(root / bundle.SITE_DIR))
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "TSS2_LOG": "all+none",
        "PYTHONHOME": os.fspath(root / "usr"),  # the bundle's stdlib, nothing else
    }
    proc = subprocess.run(
        [os.path.realpath(sys.executable), "-S", "-B", "-P", *python_options, "-c", entry, *argv],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    for needle in MISSING:
        assert needle not in proc.stderr, proc.stderr
    return proc


class BundledHost(Host):
    """``Host`` whose ``boot`` runs the bundled payload in a child process."""

    stage: Path

    def boot_bundled(
        self, *options: str, tcti: str | None = None, python_options: tuple[str, ...] = ()
    ) -> tuple[int, dict, str]:
        """``host-recover [OPTIONS] boot``; without OPTIONS and TCTI the hooks' own command
        line (the TCTI then comes from a configuration drop-in, as baked settings do)."""
        if options or tcti:
            options = ("--tcti", tcti or self.tpm.tcti, *options)
        else:
            dropins = self.conf.with_name(self.conf.name + ".d")
            dropins.mkdir(exist_ok=True)
            (dropins / "tcti.conf").write_text(f"[tpm]\ntcti = {self.tpm.tcti}\n")
        proc = run_bundled(self.stage, "--config", str(self.conf), *options, "boot",
                           "--newroot", str(self.newroot), "--cmdline", str(self.cmdline),
                           python_options=python_options)  # fmt: skip
        record = json.loads((self.run / "host-recover" / "decision.json").read_text())
        return proc.returncode, record, proc.stderr


class ToolsHost(BundledHost):
    """Provisioned with the operator verbs of the normal root's bundle (the e2e lab's
    ``tools`` bundle: payload + provision, image, credential, policy), from it alone."""

    tools: Path

    def cli(self, *argv: str) -> int:
        proc = run_bundled(self.tools, "--config", str(self.conf), "--tcti", self.tpm.tcti, *argv)
        return proc.returncode


@pytest.fixture
def host(tmp_path: Path, staged: Path) -> Iterator[BundledHost]:
    with contextlib.closing(BundledHost(tmp_path)) as h:
        h.stage = staged
        h.provision_and_build()
        yield h


def test_operator_verbs_from_the_tools_bundle(
    tmp_path: Path, staged: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """provision, image create, credential add from the normal root's bundle; then a
    recovery by the payload's bundle."""
    from testing.qemu.harness import TOOLS

    tools = tmp_path_factory.mktemp("tools") / "stage"
    bundle.build(tools, entry=(*bundle.payload_entry(), *TOOLS))
    with contextlib.closing(ToolsHost(tmp_path)) as h:
        h.stage, h.tools = staged, tools
        h.provision_and_build()
        h.tpm.power_cut_and_restart()
        code, rec, _ = h.boot_bundled()
        try:
            assert code == 10, rec
            assert rec["credentials"] == ["restore-token"]
        finally:
            _umount_all(h.newroot)


def test_bundle_sees_only_its_own_stdlib(staged: Path) -> None:
    """The interpreter the tests below run has the bundle's .pyc as its standard library."""
    root = staged / "root"
    code = "import sys, json; print(json.__file__); print(sys.path)"
    proc = subprocess.run(
        [os.path.realpath(sys.executable), "-S", "-B", "-P", "-c", code],
        env={"PATH": "/usr/bin:/bin", "PYTHONHOME": os.fspath(root / "usr")},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    json_file, path = proc.stdout.splitlines()
    assert json_file.startswith(os.fspath(root)) and json_file.endswith(".pyc")
    assert all(p.startswith(os.fspath(root)) for p in eval(path)), path  # noqa: S307


#: The modules of the boot's routes (clean, recovery, peer stage) and of its errors.
ROUTES = (
    "recover.boot.payload", "recover.boot.recovery", "recover.boot.dmimage",
    "recover.peers.server", "recover.peers.rounds", "recover.peers.client",
    "recover.core.attest", "recover.core.inventory", "recover.core.witness",
    "recover.store.binding", "recover.store.unseal", "recover.store.image",
    "recover.store.credentials", "recover.store.inventory",
)  # fmt: skip


def test_the_bundle_s_compiled_dataclass_code_serves_every_route(staged: Path) -> None:
    """The boot entry installs the bundle's table (recover.dataclasscode), and every
    dataclass the boot's routes create is in it: none compiled at boot."""
    code = (
        "import importlib, sys; sys.path.insert(0, {site!r}); "
        "from recover.cli import entry; entry._import_dataclasses(); "
        f"[importlib.import_module(m) for m in {ROUTES!r}]; "
        "from recover import dataclasscode; print(dataclasscode.stats())"
    )
    proc = run_bundled(staged, code=code)
    assert proc.returncode == 0, proc.stderr
    hits, misses = map(int, proc.stdout.strip("()\n").split(","))
    assert misses == 0 and hits > 100, proc.stdout


def test_clean_boot_from_the_bundle(host: BundledHost) -> None:
    host.tpm.reboot_orderly()
    code, rec, _ = host.boot_bundled()
    assert code == 0, rec
    assert rec["action"] == "normal" and rec["verdict"]["kind"] == "clean"
    assert rec["lock_pcr_extended"] is True
    _assert_nothing_left(host)


def test_clean_boot_loads_no_key_conversions_and_starts_no_process(host: BundledHost) -> None:
    """tpm2-pytss's key conversions (x509, SSH keys, KDFs, ciphers) stay unloaded through
    a whole clean boot (recover/deferred.py; the recovery below loads what it uses),
    and its cleanup, finding no mapping in sysfs, starts no dmsetup or losetup (nothing
    imports subprocess). The hooks' command line (``boot --newroot DIR``, here with
    ``--config`` and ``--cmdline``) is read without argparse (recover.cli.entry)."""
    host.tpm.reboot_orderly()
    code, rec, err = host.boot_bundled(python_options=("-X", "importtime"))
    assert code == 0 and rec["verdict"]["kind"] == "clean", rec
    loaded = {r.name for r in importtime.parse(err)}
    assert {"tpm2_pytss", "tpm2_pytss.types", "tpm2_pytss.ESAPI"} <= loaded
    for name in (
        "cryptography.x509",
        "cryptography.hazmat.primitives.serialization.ssh",
        "cryptography.hazmat.primitives.kdf.kbkdf",
        "cryptography.hazmat.decrepit",
        "subprocess",  # the cleanup found no mapping in sysfs: no dmsetup, no losetup
        "recover.core.imageformat",
        "recover.boot.recovery",  # the clean route is record and lock
        "argparse",  # the boot entry read the command line
        "recover.cli.main",
        "dis",  # with inspect: dataclasses got a stand-in for it (recover.deferred)
    ):
        assert name not in loaded, name
    assert [r.name for r in importtime.parse(err)].count("inspect") == 1  # the stand-in
    _assert_nothing_left(host)


#: Never loaded on the boot's routes: its P-256 keys are read and written without
#: cryptography's serialization package, which imports SSH key support and every key
#: type with it (recover/core/p256.py). The package's own name is in every run's rows:
#: recover.deferred's stand-in for it, while tpm2-pytss loads; its modules are not.
SERIALIZATION = (
    "cryptography.hazmat.primitives.serialization.base",
    "cryptography.hazmat.primitives.serialization.ssh",
    "cryptography.x509",
)


def test_recovery_from_the_bundle(host: BundledHost) -> None:
    host.tpm.power_cut_and_restart()
    code, rec, err = host.boot_bundled(python_options=("-X", "importtime"))
    try:
        assert code == 10, rec
        assert rec["action"] == "recover" and rec["credentials"] == ["restore-token"]
        assert (host.newroot / "RECOVERY-ROOT").read_text() == "this is the recovery root\n"
        for phase in ("unseal", "lock", "image", "mount", "credentials"):
            assert phase in rec["timeline_ms"], phase
        loaded = {r.name for r in importtime.parse(err)}
        assert "recover.store.unseal" in loaded
        assert not loaded & set(SERIALIZATION), loaded & set(SERIALIZATION)
    finally:
        _umount_all(host.newroot)


def test_peer_stage_from_the_bundle(host: BundledHost) -> None:
    """A real round: the payload asks a verifying peer and a dead one, and serves its own
    status while it asks (asyncio, http, json, the quote verification)."""
    port = free_port_pair()
    enrol = ["enrol", "request", "--address", f"127.0.0.1:{port}", "--failure-domain", "rack-1"]
    me = json.loads(
        subprocess.run(
            [
                sys.executable,
                "-m",
                "recover",
                "--config",
                str(host.conf),
                "--tcti",
                host.tpm.tcti,
                *enrol,
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
            env={**os.environ, "PYTHONPATH": os.fspath(Path(__file__).parents[2])},
        ).stdout
    )["entry"]
    with Fleet([SimPeer("p1"), SimPeer("p2", behaviour="down")], [me]) as fleet:
        inventory = host.base / "peers.json"
        inventory.write_text(json.dumps([me, *fleet.entries]))
        host.conf.write_text(
            host.conf.read_text().replace(
                f"inventory = {host.base / 'no-peers.json'}\n",
                f"inventory = {inventory}\nlisten = 127.0.0.1:{port}\n"
                "deadline = 3\ntimeout = 1\nretries = 0\n",
            )
        )
        host.tpm.power_cut_and_restart()
        # p2 stays dark: the rounds would ask it for verdict.wait (240 s); 2 s will do.
        code, rec, err = host.boot_bundled(
            "--set", f"peers.host_id={me['id']}", "--set", "verdict.wait=2",
            python_options=("-X", "importtime"),
        )  # fmt: skip
    try:
        assert rec["peers"] is not None, (rec, err)
        outcomes = {r["peer"]: r["outcome"] for r in rec["peers"]["results"]}
        assert set(outcomes) == {"p1", "p2"}, rec["peers"]
        assert outcomes["p2"] != outcomes["p1"], outcomes  # one answered, one did not
        assert code in (0, 10), rec
        # this host's AK as PEM, p1's quote verified with its AK: no serialization package
        loaded = {r.name for r in importtime.parse(err)}
        assert "recover.core.attest" in loaded
        assert not loaded & set(SERIALIZATION), loaded & set(SERIALIZATION)
        # asyncio served and asked without ssl (peers speak HTTP): the bundle does not
        # ship it, and asyncio takes `import ssl` failing as "no TLS". The failed import
        # has a row of its own; ssl.py would import _ssl first thing.
        assert "asyncio" in loaded and "_ssl" not in loaded
    finally:
        _umount_all(host.newroot)


def test_tpm_unreachable_from_the_bundle(host: BundledHost) -> None:
    host.tpm.kill()
    code, rec, _ = host.boot_bundled("--set", "tpm.timeout=1", tcti="swtpm:host=127.0.0.1,port=1")
    assert code == 3, rec
    assert rec["action"] == "error" and rec["next"] == "halt"
    host.tpm.start()


def test_broken_config_from_the_bundle(host: BundledHost) -> None:
    host.tpm.power_cut_and_restart()
    host.conf.write_text(host.conf.read_text().replace("[verdict]\n", "[verdict]\nquorom = 2\n"))
    # the broken file cannot say where the record goes: the option does
    code, rec, _ = host.boot_bundled("--set", f"boot.state_dir={host.run / 'host-recover'}")
    assert code == 2, rec
    assert rec["action"] == "error" and "quorom" in rec["error"]
    assert rec["lock_pcr_extended"] is True


def test_tampered_image_from_the_bundle(host: BundledHost) -> None:
    image = host.disk / "recovery.hri"
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 1
    image.write_bytes(bytes(data))
    host.tpm.power_cut_and_restart()
    code, rec, _ = host.boot_bundled()
    assert code == 5, rec
    assert rec["action"] == "error" and rec["lock_pcr_extended"] is True
    _assert_nothing_left(host)
