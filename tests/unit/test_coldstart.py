"""Cold start of the boot payload: what the boot path imports, and bench/coldstart.py's
helpers in testing/ (importtime parsing, the trees' run modes; the timestamping TCP
relay: tests/integration/test_tpmwire.py). Cheap; no timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testing import importtime, trees

ROOT = Path(__file__).resolve().parents[2]

# Not imported before the first TPM command of a clean boot: heavy, or needed only when a
# peer inventory exists, when the root is recovered, or after a failure.
DEFERRED = (
    "tpm2_pytss",
    "cryptography",
    "_cffi_backend",
    "asyncio",
    "ssl",
    "http",
    "email",
    "socket",
    "subprocess",
    "uuid",
    "platform",
    "recover.peers",
    "recover.core.protocol",
    "recover.core.inventory",
    "recover.store.image",
    "recover.store.credentials",
    "recover.store.provision",
    "recover.boot.recovery",
    "recover.bundle",
    "argparse",  # the hooks' command line is read by recover.cli.entry
    "recover.cli.main",
    "recover.cli.store",
)

# What `host-recover boot` imports before Tpm.open(): the boot entry, logging, the
# configuration, the payload, gather and the TPM package.
_PROBE = """
import json, sys
from recover.cli import entry
args = entry.parse_boot(["boot", "--newroot", "/sysroot"])
assert args is not None
from recover.cli import run
from recover import config, log
log.setup(kmsg=False)
config.load(None, {})
from recover.boot import payload, gather

from recover.tpm import Tpm
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after(code: str, tmp_path: Path) -> set[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), *[p for p in sys.path if "site-packages" in p]]),
        "HOST_RECOVER_CONFIG": str(tmp_path / "absent.conf"),
    }
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(proc.stdout.splitlines()[-1]))


def test_boot_path_defers_heavy_imports(tmp_path: Path) -> None:
    mods = _modules_after(_PROBE, tmp_path)
    assert {"recover.boot.payload", "recover.boot.gather", "recover.tpm.core"} <= mods
    loaded = sorted(m for m in mods if m.split(".")[0] in DEFERRED or m in DEFERRED)
    assert loaded == [], f"imported before the first TPM command: {loaded}"


def test_deferred_modules_still_import_when_needed(tmp_path: Path) -> None:
    """The lazy imports resolve: the names the boot path imports inside functions exist."""
    code = (
        "import json, sys\n"
        "from recover.boot import gather, payload, recovery\n"
        "from recover.core import inventory, keys, verdict\n"
        "from recover.store import credentials, image, provision\n"
        "from recover.core.protocol import Outcome, PeerResults\n"
        "from recover.peers.attestor import TpmAttestor\n"
        "from recover.peers.client import query_all\n"
        "from recover.peers.server import serve_in_background\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    mods = _modules_after(code, tmp_path)
    assert {"recover.peers.server", "recover.peers.client", "recover.core.inventory"} <= mods


def test_parse_importtime_links_parents() -> None:
    text = "\n".join(
        [
            "import time: self [us] | cumulative | imported package",
            "import time:        10 |         10 |     _json",
            "import time:        20 |         30 |   json.scanner",
            "import time:        40 |         40 |   json.encoder",
            "import time:         5 |         75 | json",
            "import time:         7 |          7 |       email",
            "import time:       100 |        107 |     cryptography.x509",
            "import time:        50 |        307 |   tpm2_pytss.types",
            "import time:         3 |        310 | tpm2_pytss",
            "host-recover: a log line in between",
        ]
    )
    rows = importtime.parse(text)
    by = {r.name: r for r in rows}
    assert [r.name for r in rows][:2] == ["_json", "json.scanner"]
    assert by["_json"].parent == "json.scanner" and by["json.scanner"].parent == "json"
    assert by["json.encoder"].parent == "json" and by["json"].parent is None
    assert by["email"].depth == 3 and by["tpm2_pytss.types"].depth == 1
    assert [r.name for r in importtime.top_level(rows)] == ["tpm2_pytss", "json"]
    groups = importtime.group_self_times(rows)
    assert groups == {
        "stdlib, top level": 10 + 20 + 40 + 5,
        "cryptography": 100,
        "stdlib via cryptography": 7,
        "tpm2_pytss": 50 + 3,
    }


def test_parse_importtime_of_a_real_interpreter() -> None:
    proc = subprocess.run(
        [sys.executable, "-S", "-X", "importtime", "-c", "import json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = importtime.parse(proc.stderr)
    by = {r.name: r for r in rows}
    assert by["json.decoder"].parent == "json"
    assert by["json"].depth == 0 and by["json"].cum_us >= by["json.decoder"].cum_us


@pytest.mark.parametrize("mode", [*trees.MODES, "bundle-nofapi"])
def test_tree_python_modes(tmp_path: Path, mode: str) -> None:
    tree = trees.Tree("t", ROOT, tmp_path, nofapi=tmp_path / "nofapi")
    argv, env = tree.python(mode)
    assert "-S" in argv
    if mode.startswith("bundle"):
        assert env["PYTHONHOME"].startswith(str(tmp_path)) and env["PYTHONDONTWRITEBYTECODE"]
        site = env["PYTHONPATH"].split(":")
        assert site[-1].endswith("/root/usr/lib/host-recover/site")
        assert (site[0] == str(tmp_path / "nofapi")) == (mode == "bundle-nofapi")
    else:
        assert env["PYTHONPATH"].split(":")[0] == str(ROOT)
        assert ("-B" in argv) == (mode == "src-nopyc")


def test_tree_entry_is_the_wrapper_s_own_statement(tmp_path: Path) -> None:
    """The bench starts the bundle as the initramfs's /usr/bin/host-recover does: with the
    ``-c`` statement that wrapper holds, its site pointed at the staging copy."""
    from recover import bundle

    tree = trees.Tree("t", ROOT, tmp_path)
    wrapper = tree.bundle / "root" / bundle.WRAPPER
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(bundle._wrapper(trees.SITE_IN_IMAGE.lstrip("/")))
    flag, statement = tree.entry("bundle")
    assert flag == "-c"
    site = f"{tree.bundle}/root{trees.SITE_IN_IMAGE}"
    assert statement == bundle._ENTRY.format(site=site)
    assert "recover.cli.entry" in statement
    assert tree.entry("src") == ["-m", "recover"]
    wrapper.write_text("#!/bin/sh\nexec /bin/false\n")
    with pytest.raises(SystemExit, match="no python -c line"):
        tree.entry("bundle")
