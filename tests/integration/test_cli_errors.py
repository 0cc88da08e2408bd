"""The operator's 3 a.m. audit: bad input through the real CLI (``python -m recover``).

Every case checks the contract of docs/cli.md: the documented exit code, exactly one
``host-recover: error:`` line (plus at most one ``hint:`` line), no traceback, and
nothing lost: inputs, outputs, the credential store and the sealed secret are as
before, and no temporary file is left behind. TPM cases use a real swtpm.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testing.waiting import until

from recover.core import imageformat, keys
from recover.store import credentials, image
from recover.store.keyfile import read_key_file

# provision on a test TPM: no event log, and the owner auth left empty on purpose
PROVISION = ("provision", "--no-owner-auth", "--allow-unbound")

# --- helpers ---------------------------------------------------------------------------


def hr(
    *argv: str | Path, conf: Path | None = None, stdin: bytes | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOST_RECOVER_")}
    env |= {"HOST_RECOVER_CONFIG": "/nonexistent/host-recover.conf", "TSS2_LOG": "all+none"}
    pre = ["--config", str(conf)] if conf else []
    r = subprocess.run(
        [sys.executable, "-m", "recover", *pre, *map(str, argv)],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())


def clean_error(r: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """Exit ``code``; stderr is one error line (+ optional hint), no traceback."""
    lines = r.stderr.splitlines()
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    errors = [ln for ln in lines if ln.startswith("host-recover: error: ")]
    hints = [ln for ln in lines if ln.startswith("host-recover: hint: ")]
    assert len(errors) == 1 and len(hints) <= 1, r.stderr
    assert lines[-len(hints) - 1] == errors[0], "the error line comes last (before its hint)"
    for f in fragments:
        assert f in errors[0] + "\n" + "".join(hints), (f, r.stderr)
    return errors[0]


def snapshot(*dirs: Path) -> dict[str, str]:
    """Every file (hidden ones too) under ``dirs`` → sha256; reveals leftovers and changes."""
    out = {}
    for d in dirs:
        for p in sorted(d.rglob("*")):
            if p.is_file() and not p.is_symlink():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif p.is_symlink():
                out[str(p)] = "-> " + os.readlink(p)
            elif not p.is_dir():
                out[str(p)] = "special"  # FIFO, device: must stay what it is
    return out


@contextlib.contextmanager
def mounted_tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted by us (needs CAP_SYS_ADMIN; the test skips without it)."""
    path.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True, timeout=30)


def write_conf(path: Path, tcti: str = "swtpm:host=127.0.0.1,port=1", extra: str = "") -> Path:
    root = path.parent
    path.write_text(
        f"[tpm]\ntcti = {tcti}\npcrs = sha256:0,2,4,7,16\nlock_pcr = 14\ntimeout = 2\n"
        f"[store]\nimage = {root / 'recovery.hri'}\ncredentials = {root / 'creds.hrc'}\n"
        f"[peers]\nhost_id = host-a\n{extra}"
    )
    return path


@pytest.fixture
def ws(tmp_path: Path) -> dict[str, Path]:
    """A work space: keys, a plain payload, a recovery image, a config (no TPM)."""
    master = tmp_path / "master.key"
    master.write_bytes(os.urandom(32))
    key = tmp_path / "image.key"
    key.write_bytes(keys.image_root_key(master.read_bytes()))
    plain = tmp_path / "root.squashfs"
    plain.write_bytes(b"hsqs" + os.urandom(40_000))
    img = tmp_path / "root.hri"
    image.encrypt_file(plain, img, key.read_bytes(), image_version=3, chunk_size=4096)
    conf = write_conf(tmp_path / "host-recover.conf")
    return {"dir": tmp_path, "master": master, "key": key, "plain": plain, "img": img, "conf": conf}


# --- configuration -------------------------------------------------------------------

CONFIG_CASES = [
    ("[tpm]\npcsr = sha256:0\n", (), "unknown setting 'tpm.pcsr'", "did you mean tpm.pcrs?"),
    ("[tmp]\npcrs = sha256:0\n", (), "unknown setting 'tmp.pcrs'", "did you mean tpm.pcrs?"),
    ("pcrs = sha256:0\n", (), "no section headers", "INI syntax"),
    ("[tpm]\npcrs = a\npcrs = b\n", (), "already exists", "INI syntax"),
    ("[tpm]\nlock_pcr = 99\n", (), "tpm.lock_pcr: '99' is not a PCR index", ""),
    ("[tpm]\nsrk_handle = 0x12\n", (), "not an owner persistent handle", ""),
    ("[tpm]\nseal_handle = 0x81800001\n", (), "not an owner persistent handle", ""),
    ("[tpm]\nrollback_nv = 0x81000001\n", (), "not an NV index", ""),
    ("[boot]\nmode = sometimes\n", (), "not one of auto, force, never", ""),
    ("[tpm]\npcrs = sha999:1\n", (), "tpm.pcrs", ""),
    ("", ("--set", "tpm.pcr=sha256:1"), "override: unknown setting 'tpm.pcr'", "tpm.pcrs"),
    ("", ("--set", "tpm.pcrs"), "expected NAME=VALUE", "--set tpm.pcrs=sha256:7"),
    ("", ("--set", "tpm.timeout=0"), "tpm.timeout: '0' must be > 0", ""),
]


@pytest.mark.parametrize(("text", "pre", "message", "hint"), CONFIG_CASES)
def test_config_mistakes(tmp_path: Path, text: str, pre: tuple[str, ...], message: str, hint: str):
    conf = tmp_path / "host-recover.conf"
    conf.write_text(text)
    clean_error(hr(*pre, "config", conf=conf), 2, message, hint)


def test_traceback_only_with_debug(tmp_path: Path) -> None:
    r = hr("image", "inspect", tmp_path / "none.hri")
    clean_error(r, 2, "cannot open")
    r = hr("--debug", "image", "inspect", tmp_path / "none.hri")
    assert r.returncode == 2 and "Traceback" in r.stderr and "cannot open" in r.stderr


def test_config_file_missing_directory_or_binary(tmp_path: Path) -> None:
    clean_error(hr("config", conf=tmp_path / "nope.conf"), 2, "does not exist", "--config")
    clean_error(hr("config", conf=tmp_path), 2, "Is a directory")
    binary = tmp_path / "bin.conf"
    binary.write_bytes(b"\xff\xfe[tpm]\n")
    clean_error(hr("config", conf=binary), 2, "not UTF-8")
    dropins = tmp_path / "main.conf.d"
    dropins.mkdir()
    (tmp_path / "main.conf").write_text("")
    (dropins / "10-x.conf").write_text("[verdict]\nquorom = 2\n")
    clean_error(hr("config", conf=tmp_path / "main.conf"), 2, "10-x.conf", "verdict.quorum")


# --- TCTI that points nowhere (no TPM needed) -------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: nothing listens there


@pytest.mark.parametrize(
    ("tcti", "why"),
    [
        (f"swtpm:host=127.0.0.1,port={_closed_port()}", "IO failure"),  # retried, briefly
        ("nosuchtcti:whatever", "not supported"),  # fails at once
        ("swtpm:port=notanumber", "bad value"),  # fails at once
        ("device:/nonexistent/tpmrm0", "no TPM device"),  # no wait: only boot waits
    ],
)
def test_tcti_pointing_nowhere_is_exit_3_and_bounded(tmp_path: Path, tcti: str, why: str):
    """No TPM there: exit 3 naming the cause, after tpm.timeout at most (hr() gives up
    after 30 s: the device wait would take the default 30 s if the setting were lost)."""
    conf = write_conf(tmp_path / "c.conf", extra="")
    for verb in (
        ["unseal", "--check"],
        [*PROVISION],
        ["credential", "list"],
    ):
        r = hr("--tcti", tcti, "--set", "tpm.timeout=0.3", *verb, conf=conf)
        clean_error(r, 3, "tpm", "tcti", why)
    r = hr("--tcti", tcti, "--set", "tpm.timeout=0.3", "status", conf=conf)
    assert r.returncode == 3 and "unreachable" in r.stdout
    clean_error(r, 3)


# --- image ---------------------------------------------------------------------------


def test_image_create_bad_inputs_lose_nothing(ws: dict[str, Path]) -> None:
    d, key, plain = ws["dir"], ws["key"], ws["plain"]
    (d / "short.key").write_bytes(b"k" * 31)
    (d / "link.squashfs").symlink_to(plain.name)
    os.mkfifo(d / "fifo")
    before = snapshot(d)
    cases = [
        ((plain, plain), 2, "is the input", "never replaced"),
        ((plain, d / "link.squashfs"), 2, "is the input", ""),
        ((ws["img"], ws["img"], "--payload-type", "raw"), 2, "is the input", ""),
        ((d / "missing.squashfs", d / "o.hri"), 2, "cannot open", ""),
        ((d, d / "o.hri"), 2, "not a regular file", ""),
        ((plain, d), 2, "is a directory", "file"),
        ((plain, d / "fifo"), 2, "not a regular file", ""),
        ((plain, d / "nodir" / "o.hri"), 2, "No such file or directory", "create the directory"),
        ((ws["img"], d / "o.hri"), 2, "not a squashfs image", "--payload-type raw"),
        ((plain, d / "o.hri", "--chunk-size", "0"), 2, "chunk size", ""),
        ((plain, d / "o.hri", "--image-version", "-1"), 2, "image version", ""),
    ]
    for args, code, *frag in cases:
        clean_error(hr("image", "create", *args, "--key-file", key), code, *frag)
    for bad_key, frag in ((d / "short.key", "exactly 32"), (d, "Is a directory"), (d / "no", "")):
        r = hr("image", "create", plain, d / "o.hri", "--key-file", bad_key)
        clean_error(r, 2, "image key file", frag)
    assert snapshot(d) == before


def test_image_create_replaces_an_existing_output_atomically(ws: dict[str, Path]) -> None:
    out = ws["dir"] / "out.hri"
    out.write_bytes(b"old image")
    r = hr("image", "create", ws["plain"], out, "--key-file", ws["key"], "--image-version", "4")
    assert r.returncode == 0, r.stderr
    assert image.read_header(out).image_version == 4
    assert sorted(p.name for p in ws["dir"].iterdir() if p.name.startswith(".")) == []


def test_image_decrypt_and_verify_errors(ws: dict[str, Path]) -> None:
    d, key, img = ws["dir"], ws["key"], ws["img"]
    before = snapshot(d)
    clean_error(hr("image", "decrypt", img, img, "--key-file", key), 2, "is the input")
    clean_error(hr("image", "decrypt", img, d, "--key-file", key), 2, "is a directory")
    clean_error(hr("image", "decrypt", img, d / "x", "--key-file", ws["master"]), 5, "wrong key")
    clean_error(hr("image", "decrypt", ws["plain"], d / "x", "--key-file", key), 5, "bad magic")
    clean_error(hr("image", "decrypt", d / "none", d / "x", "--key-file", key), 2, "cannot open")
    clean_error(hr("image", "decrypt", img, d / "x", "--key-file", key, "--workers", "-1"), 2)
    r = hr("image", "verify", img, "--key-file", key, "--min-version", "4")
    clean_error(r, 5, "older than the minimum 4")
    clean_error(hr("image", "inspect", ws["plain"]), 5, "bad magic", "image create")
    assert snapshot(d) == before


def test_image_decrypt_to_full_or_read_only_destination(ws: dict[str, Path]) -> None:
    d = ws["dir"]
    before = snapshot(d)
    with mounted_tmpfs(d / "full", "size=16k") as full:
        r = hr("image", "decrypt", ws["img"], full / "root.img", "--key-file", ws["key"])
        clean_error(r, 7, "No space left on device", "enough space")  # a system fault
        assert os.listdir(full) == []
    with mounted_tmpfs(d / "ro", "ro,size=1m") as ro:
        r = hr("image", "decrypt", ws["img"], ro / "root.img", "--key-file", ws["key"])
        clean_error(r, 2, "Read-only file system")
        assert os.listdir(ro) == []
    assert snapshot(d) == before


# --- interrupted long operations ------------------------------------------------------


def _interrupt_when_writing(argv: list[str | Path], out_dir: Path) -> subprocess.Popen[bytes]:
    """Start the CLI, wait until it holds its unnamed output file open, then SIGINT it.

    A shell without job control starts background commands with SIGINT ignored, and an
    ignored signal stays ignored across exec: Python then installs no handler and the
    child would run to its end (a local CI run started with ``&`` did exactly that). A
    signal *caught* here is reset to the default at exec, so the child always starts with
    SIGINT at its default and gets Python's KeyboardInterrupt handler."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        p = subprocess.Popen(
            [sys.executable, "-m", "recover", *map(str, argv)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "HOST_RECOVER_CONFIG": "/nonexistent"},
        )
    finally:
        signal.signal(signal.SIGINT, old)
    deadline = time.monotonic() + 20
    seen = False
    while not seen and time.monotonic() < deadline and p.poll() is None:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{p.pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{p.pid}/fd/{fd}")
                    if target.startswith(str(out_dir)) and "(deleted)" in target:
                        seen = True
        time.sleep(0.002)
    if not seen:
        _end(p)
        pytest.fail("the output was never opened (or the command finished too soon)")
    with open(f"/proc/{p.pid}/status") as f:
        ignored = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
    if ignored & 1 << (signal.SIGINT - 1):
        _end(p)
        pytest.fail("the child started with SIGINT ignored: it could not be interrupted")
    p.send_signal(signal.SIGINT)
    return p


def _end(p: subprocess.Popen[bytes]) -> None:
    """Kill our child by PID if it is still running, and reap it."""
    if p.poll() is None:
        p.kill()
        p.communicate(timeout=30)


def _communicate(p: subprocess.Popen[bytes]) -> bytes:
    """stderr of our child; killed by PID if it hangs."""
    try:
        return p.communicate(timeout=30)[1]
    finally:
        _end(p)


def test_sigint_leaves_no_output_and_no_temp_files(tmp_path: Path) -> None:
    key = tmp_path / "image.key"
    key.write_bytes(os.urandom(32))
    src = tmp_path / "big.img"
    with open(src, "wb") as f:  # sparse: costs no disk, takes a while to encrypt
        f.truncate(3 << 30)
    out = tmp_path / "out"
    out.mkdir()
    argv: list[str | Path] = ["image", "create", src, out / "big.hri", "--key-file", key]
    p = _interrupt_when_writing([*argv, "--payload-type", "raw", "--chunk-size", "4194304"], out)
    err = _communicate(p)
    assert p.returncode == 130 and b"interrupted" in err and b"Traceback" not in err
    assert os.listdir(out) == []

    mid = tmp_path / "mid.img"
    with open(mid, "wb") as f:
        f.truncate(256 << 20)
    image.encrypt_file(mid, tmp_path / "mid.hri", key.read_bytes(), image_version=1,
                       payload_type="raw", chunk_size=1 << 20)  # fmt: skip
    mid.unlink()
    for workers in ("1", "2"):
        argv = ["image", "decrypt", tmp_path / "mid.hri", out / "root.img"]
        p = _interrupt_when_writing([*argv, "--key-file", key, "--workers", workers], out)
        err = _communicate(p)
        assert p.returncode == 130 and b"Traceback" not in err, err
        assert os.listdir(out) == []


# --- credentials (master from --key-file: no TPM) ----------------------------------------


def test_credential_bad_names_and_files_lose_nothing(ws: dict[str, Path]) -> None:
    d, conf, master = ws["dir"], ws["conf"], ws["master"]
    value = d / "value"
    value.write_bytes(b"s3cret")
    r = hr("credential", "add", "db", value, "--key-file", master, conf=conf)
    assert r.returncode == 0, r.stderr
    before = snapshot(d)
    names = ["a/b", "../x", ".hidden", ".", "..", "", "-dash", "x" * 300, "nul\x01", "sp ace"]
    for name in names:
        r = hr("credential", "add", "--key-file", master, "--", name, value, conf=conf)
        line = clean_error(r, 2, "invalid credential name", "letters, digits")
        assert len(line) < 200  # a huge name is cut in the message
    for src, frag in ((d / "missing", "No such file"), (d, "Is a directory")):
        clean_error(hr("credential", "add", "x", src, "--key-file", master, conf=conf), 2, frag)
    big = d / "big"
    with open(big, "wb") as f:
        f.truncate((1 << 20) + 1)
    clean_error(hr("credential", "add", "x", big, "--key-file", master, conf=conf), 2, "larger")
    big.unlink()
    for verb in (["add", "x", value], ["list"], ["remove", "db"]):
        r = hr("credential", *verb, "--key-file", ws["key"], conf=conf)  # the image key
        clean_error(r, 5, "failed authentication", "--export-master")
    clean_error(hr("credential", "remove", "nope", "--key-file", master, conf=conf), 2, "no cred")
    clean_error(hr("credential", "list", "--key-file", d / "short", conf=conf), 2, "cannot read")
    assert snapshot(d) == before
    r = hr("credential", "list", "--key-file", master, conf=conf)
    assert r.returncode == 0 and r.stdout.split() == ["db"]


def test_credential_list_without_a_store(ws: dict[str, Path]) -> None:
    r = hr("credential", "list", "--key-file", ws["master"], conf=ws["conf"])
    clean_error(r, 2, "no credential store", "credential add")


def test_credential_store_path_mistakes(ws: dict[str, Path]) -> None:
    d, master = ws["dir"], ws["master"]
    (d / "dangling.hrc").symlink_to(d / "gone.hrc")
    (d / "junk.hrc").write_bytes(os.urandom(100))
    before = snapshot(d)
    cases = [
        (d / "nodir" / "c.hrc", 2, "No such file or directory", "create the directory"),
        (d, 2, "Is a directory"),
        (d / "dangling.hrc", 2, "symbolic link to a missing file", "fix or remove"),
        (d / "junk.hrc", 5, "not a host-recover credential store"),
    ]
    for store, code, *frag in cases:
        r = hr("--set", f"store.credentials={store}", "credential", "add", "a", "-",
               "--key-file", master, conf=ws["conf"], stdin=b"v")  # fmt: skip
        clean_error(r, code, *frag)
    assert snapshot(d) == before


# --- policy keys and signatures (PCR values from a file: no TPM) ------------------------

PCRS = '{"sha256": {"0": "%s", "2": "%s", "4": "%s", "7": "%s", "16": "%s"}}' % (("00" * 32,) * 5)


def test_policy_keygen_sign_mistakes(tmp_path: Path) -> None:
    d = tmp_path
    conf = write_conf(d / "c.conf")
    values = d / "values.json"
    values.write_text(PCRS)
    r = hr("policy", "keygen", "--private", d / "priv.pem", "--public", d / "pub.pem", conf=conf)
    assert r.returncode == 0, r.stderr
    assert (d / "priv.pem").stat().st_mode & 0o777 == 0o600
    assert (d / "pub.pem").stat().st_mode & 0o777 == 0o644
    before = snapshot(d)
    r = hr("policy", "keygen", "--private", d / "priv.pem", "--public", d / "p2.pem", conf=conf)
    clean_error(r, 2, "already exists", "never overwritten")
    r = hr("policy", "keygen", "--private", d / "k.pem", "--public", d / "no/p.pem", conf=conf)
    clean_error(r, 2, "No such file or directory")  # and no half key pair left behind
    for algo in (["-algorithm", "RSA"], ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
                 ["-algorithm", "ED25519"]):  # fmt: skip
        subprocess.run(["openssl", "genpkey", *algo, "-out", str(d / "wrong.pem")],
                       check=True, capture_output=True, timeout=30)  # fmt: skip
        r = hr("policy", "sign", "--allow-unbound", "--key", d / "wrong.pem", "--values", values,
               "--output", d / "pol.json", conf=conf)  # fmt: skip
        clean_error(r, 2, "ECC P-256 private key", "policy keygen")
        (d / "wrong.pem").unlink()
    sign = ("policy", "sign", "--allow-unbound", "--values", values, "--output")
    for keyfile, frag in ((d / "pub.pem", "private key"), (d / "c.conf", "cannot sign"),
                          (d / "none.pem", "No such file"), (d, "Is a directory")):  # fmt: skip
        clean_error(hr(*sign, d / "pol.json", "--key", keyfile, conf=conf), 2, frag)
    for output, frag in ((d, "is a directory"), (d / "no" / "p.json", "create the directory")):
        clean_error(hr(*sign, output, "--key", d / "priv.pem", conf=conf), 2, frag)
    bad = d / "bad.json"
    for text, frag in (("{", "not valid JSON"), ('{"sha256": {"0": "zz"}}', "hex")):
        bad.write_text(text)
        r = hr("policy", "sign", "--allow-unbound", "--key", d / "priv.pem", "--values", bad,
               "--output", d / "pol.json", conf=conf)  # fmt: skip
        clean_error(r, 2, frag, '{"sha256"')
    bad.unlink()
    r = hr(*sign, d / "pol.json", "--key", d / "priv.pem", "--policy-version", "-1", conf=conf)
    clean_error(r, 2, "--policy-version")
    assert snapshot(d) == before


# --- against a real swtpm ----------------------------------------------------------------


def _reset_pcrs(swtpm: Any) -> None:
    """Fresh PCRs: an orderly TPM restart (the lock PCR, 14, cannot be reset otherwise)."""
    swtpm.reboot_orderly()


@pytest.fixture
def tpm_ws(swtpm_module, ws: dict[str, Path]) -> dict[str, Path]:
    """``ws`` with a config for the module's swtpm, provisioned afresh (PCRs reset)."""
    _reset_pcrs(swtpm_module)
    write_conf(ws["conf"], swtpm_module.tcti)
    ws["master"].unlink()
    ws["key"].unlink()
    r = hr(*PROVISION, "--force", "--export-master", ws["master"],
           "--export-image-key", ws["key"], conf=ws["conf"])  # fmt: skip
    assert r.returncode == 0, r.stderr
    image_key = read_key_file(ws["key"], "image key")  # exported with its kind
    assert f"image key id {imageformat.key_id(image_key).hex()}" in r.stderr
    fd = os.open(ws["dir"], os.O_RDONLY)
    try:
        on_disk = not credentials.on_memory_fs(fd)
    finally:
        os.close(fd)
    assert (f"{ws['master']} is on persistent storage" in r.stderr) == on_disk
    image.encrypt_file(ws["plain"], ws["img"], image_key, image_version=3)
    return ws


def _still_the_same_secret(ws: dict[str, Path]) -> None:
    """The sealed secret is the one exported at provisioning (the image opens via the TPM)."""
    r = hr("image", "verify", ws["img"], conf=ws["conf"])
    assert r.returncode == 0, r.stderr


@pytest.mark.tpm
def test_provision_twice_and_bad_export_targets(tpm_ws: dict[str, Path]) -> None:
    ws, d, conf = tpm_ws, tpm_ws["dir"], tpm_ws["conf"]
    r = hr(*PROVISION, conf=conf)
    assert r.returncode == 0 and "secret kept" in r.stderr
    before = snapshot(d)
    clean_error(
        hr(
            *PROVISION,
            "--export-master",
            d / "m2",
            conf=conf,
        ),
        2,
        "already sealed",
    )
    r = hr(
        *PROVISION,
        "--force",
        "--export-master",
        ws["master"],
        conf=conf,
    )
    clean_error(r, 2, "already exists", "never replaced")
    r = hr(
        *PROVISION,
        "--force",
        "--export-master",
        d / "nodir" / "m",
        conf=conf,
    )
    clean_error(r, 2, "does not exist")
    r = hr(*PROVISION, "--force", "--export-master", d / "m", "--export-image-key", d / "m",
           conf=conf)  # fmt: skip
    clean_error(r, 2, "same file")
    r = hr(
        *PROVISION,
        "--force",
        "--export-master",
        d,
        conf=conf,
    )
    clean_error(r, 2, "already exists")
    for src, frag in ((d / "none", "No such file"), (d, "Is a directory"), (ws["plain"], "32")):
        clean_error(
            hr(
                *PROVISION,
                "--force",
                "--master-from",
                src,
                conf=conf,
            ),
            2,
            frag,
        )
    # Sealing fails (the "SRK" is the attestation key): the exports written before it go.
    r = hr("--set", "tpm.srk_handle=0x81010002", *PROVISION, "--force",
           "--export-master", d / "m5", "--export-image-key", d / "k5", conf=conf)  # fmt: skip
    clean_error(r, 3, "0x182")
    with mounted_tmpfs(d / "ro", "ro,size=1m") as ro:
        r = hr(
            *PROVISION,
            "--force",
            "--export-master",
            ro / "m",
            conf=conf,
        )
        clean_error(r, 2, "Read-only file system")
    assert snapshot(d) == before
    _still_the_same_secret(ws)


@pytest.mark.tpm
def test_locked_pcr_points_to_key_file(tpm_ws: dict[str, Path], swtpm_module) -> None:
    from recover.tpm import Tpm

    ws, conf = tpm_ws, tpm_ws["conf"]
    value = ws["dir"] / "v"
    value.write_bytes(b"token")
    with Tpm.open(swtpm_module.tcti) as t:  # what the boot payload does (boot.lock=always)
        t.pcr_extend(14, b"host-recover: boot without unseal")
    before = snapshot(ws["dir"])
    for argv in (["credential", "add", "tok", value], ["unseal", "--check"],
                 ["image", "verify", ws["img"]]):  # fmt: skip
        clean_error(hr(*argv, conf=conf), 4, "lock PCR 14 is extended", "--key-file")
    assert snapshot(ws["dir"]) == before
    r = hr("credential", "add", "tok", "-", "--key-file", ws["master"], conf=conf, stdin=b"tok")
    assert r.returncode == 0, r.stderr
    # status still tells whether the rest of the policy matches (the seal is right).
    sealed = json.loads(hr("status", "--json", conf=conf).stdout)["sealed"]
    assert sealed["satisfied"] is False and sealed["pcrs_match"] is True
    assert "lock PCR 14 is extended" in sealed["reason"]
    assert "other PCRs match" in sealed["reason"]


@pytest.mark.tpm
def test_missing_objects_and_wrong_handles(tpm_ws: dict[str, Path]) -> None:
    conf = tpm_ws["conf"]
    r = hr("--set", "tpm.seal_handle=0x81000077", "unseal", "--check", conf=conf)
    clean_error(r, 3, "0x81000077 does not exist", "provision")
    r = hr("--set", "tpm.srk_handle=0x81000078", "image", "verify", tpm_ws["img"], conf=conf)
    clean_error(r, 3, "0x81000078 does not exist", "provision")


@pytest.mark.tpm
@pytest.mark.parametrize(
    "verb",
    [
        ["unseal", "--check"],
        [*PROVISION],
        ["status"],
        ["attest"],
        ["credential", "list"],
    ],
)
def test_swtpm_killed_mid_command(swtpm, tmp_path: Path, verb: list[str]) -> None:
    """The TPM stops answering (SIGSTOP), then dies (SIGKILL): exit 3, one line, quickly."""
    conf = write_conf(tmp_path / "c.conf", swtpm.tcti)
    if verb != [*PROVISION]:
        assert hr(*PROVISION, conf=conf).returncode == 0
    assert swtpm.proc is not None
    os.kill(swtpm.proc.pid, signal.SIGSTOP)
    p = subprocess.Popen(
        [sys.executable, "-m", "recover", "--config", str(conf), *verb],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "TSS2_LOG": "all+none"},
    )
    try:  # mid-command: the CLI's command bytes wait, unread, at the stopped swtpm
        until(lambda: swtpm.unread_bytes() or p.poll() is not None, "a command sent to the TPM")
    except TimeoutError:
        _end(p)
        raise
    assert p.poll() is None, "the CLI ended without waiting for the stopped TPM"
    swtpm.kill()
    err = _communicate(p)  # it must end once the TPM is gone (30 s guard)
    r = subprocess.CompletedProcess(p.args, p.returncode, "", err.decode())
    clean_error(r, 3)


# --- unreadable files and TPM device, as an unprivileged user ----------------------------


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory any user may enter (pytest's tmp_path is inside a 0700 directory)."""
    d = Path(tempfile.mkdtemp(prefix="hr-cli-errors-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


def test_permission_denied_as_nobody(tmp_path: Path, open_dir: Path) -> None:
    """As uid/gid 65534 (root drops privileges with setpriv): EACCES is one clear line."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run as nobody")
    # A config in a directory nobody cannot enter: used to be an internal error.
    hidden = tmp_path / "host-recover.conf"
    hidden.write_text("")
    tmp_path.chmod(0o700)
    tmp_path = open_dir
    conf = tmp_path / "c.conf"
    conf.write_text("[tpm]\ntimeout = 0.2\n")
    secret = tmp_path / "image.key"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o600)
    tpm = tmp_path / "tpm0"
    os.mknod(tpm, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # a root-only character device
    nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]

    def run(*argv: str | Path, conf: Path = conf) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [*nobody, sys.executable, "-m", "recover", "--config", str(conf), *map(str, argv)],
            capture_output=True, text=True, timeout=30, check=False,
            env={"PATH": os.environ.get("PATH", ""), "TSS2_LOG": "all+none"},
        )  # fmt: skip
        if "Permission denied" in r.stderr and "recover" not in r.stderr:
            pytest.skip("the interpreter is not readable by nobody")
        return r

    clean_error(run("config", conf=hidden), 2, "cannot read", "Permission denied")
    clean_error(run("image", "verify", tmp_path, "--key-file", secret), 2, "Permission denied")
    clean_error(run("--tcti", f"device:{tpm}", "unseal", "--check"), 3, "no permission", "tss")
    conf.chmod(0o600)
    clean_error(run("config"), 2, "cannot read", "Permission denied")
