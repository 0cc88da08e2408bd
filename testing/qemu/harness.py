"""Build everything a QEMU boot of host-recover needs, from nothing on Debian 12 (root).

kernel      ``apt-get download`` of Debian's unsigned kernel (cached in /var/cache/host-recover/kernel),
            ``dpkg -x`` + ``depmod -b`` into qemu-env/build/kernel/
bundle      ``recover.bundle.build`` from this interpreter's environment (sys.prefix)
initramfs   dracut 059 with our module through a ``dracutbasedir`` overlay of symlinks;
            shell init (default) or systemd; with or without the module (size delta)
grub        Debian's GRUB EFI image (grub-mkstandalone, ``linuxefi``) and a FAT boot disk
            for the boots "as Debian boots" (cached: a rebuild moves PCR 4)
disks       normal root and recovery root (squashfs made from host binaries: busybox,
            openssl), the store (ext4, label HRSTORE) and a control disk (challenge and
            what the guest does when it is up: poweroff or hold)

Artefacts are rebuilt only when their inputs change (a digest in a .stamp file), so a
test session or the demo builds once. Everything is deterministic (fixed timestamps)
so the initramfs, and with it PCR 9, is identical across rebuilds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: The guest scripts and the build directory (qemu-env/build, git-ignored) live here.
QEMU_ENV = REPO / "qemu-env"
# The kernel .deb is kept machine-wide, so fresh clones (CI) do not download it again.
CACHE = Path(os.environ.get("HOST_RECOVER_CACHE", "/var/cache/host-recover")) / "kernel"
BUILD = Path(os.environ.get("HOST_RECOVER_QEMU_BUILD", QEMU_ENV / "build"))
SOURCE_DATE_EPOCH = "1700000000"


#: What a QEMU boot of the lab needs on the host (make deps installs it).
TOOLS_NEEDED = ("qemu-system-x86_64", "swtpm", "dracut", "mksquashfs", "debugfs")


def missing_tools() -> list[str]:
    """The tools of TOOLS_NEEDED that are not on PATH."""
    return [t for t in TOOLS_NEEDED if shutil.which(t) is None]


def unavailable() -> str | None:
    """Why the QEMU labs cannot run here (not root, tools missing), or None. The e2e
    tests skip with it (a skipped e2e test fails CI: pytest --require-e2e)."""
    missing = missing_tools()
    if missing or os.geteuid() != 0:
        return f"needs root and {', '.join(missing) or 'the QEMU toolchain'} (make deps)"
    return None


def sh(*argv: str | os.PathLike[str], env: dict[str, str] | None = None, quiet: bool = True) -> str:
    """Run argv; raise with its stderr on failure."""
    args = [os.fspath(a) for a in argv]
    if os.environ.get("HR_DEBUG"):
        print("+ " + " ".join(args), file=sys.stderr)
    proc = subprocess.run(args, capture_output=quiet, text=True, env=env, timeout=1800, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {(proc.stderr or '')[-2000:]}")
    return proc.stdout or ""


def _digest(*parts: object) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, Path) and p.is_file():
            h.update(p.read_bytes())
        elif isinstance(p, Path) and p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and "__pycache__" not in f.parts:
                    h.update(os.fspath(f.relative_to(p)).encode())
                    h.update(f.read_bytes())
        else:
            h.update(repr(p).encode())
    return h.hexdigest()


def _fresh(out: Path, digest: str) -> bool:
    stamp = out.with_name(out.name + ".stamp")
    return out.exists() and stamp.exists() and stamp.read_text() == digest


def _stamp(out: Path, digest: str) -> None:
    out.with_name(out.name + ".stamp").write_text(digest)


# --- kernel -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Kernel:
    version: str
    vmlinuz: Path
    moddir: Path  # .../lib/modules/VERSION


def kernel_package() -> str:
    """The unsigned image behind Debian's linux-image-amd64 meta package."""
    out = sh("apt-cache", "depends", "linux-image-amd64")
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-") and line.endswith("-amd64"):
            return line.split()[1] + "-unsigned"
    raise RuntimeError("cannot find the kernel behind linux-image-amd64 (apt-get update?)")


def kernel() -> Kernel:
    CACHE.mkdir(parents=True, exist_ok=True)
    debs = sorted(CACHE.glob("linux-image-*-amd64-unsigned_*.deb"))
    if not debs:
        subprocess.run(["apt-get", "download", kernel_package()], cwd=CACHE, check=True)
        debs = sorted(CACHE.glob("linux-image-*-amd64-unsigned_*.deb"))
    deb = debs[-1]
    root = BUILD / "kernel"
    if not _fresh(root, _digest(deb.name)):
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        sh("dpkg", "-x", deb, root)
        _stamp(root, _digest(deb.name))
    vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))[-1]
    version = vmlinuz.name[len("vmlinuz-") :]
    moddir = root / "lib/modules" / version
    if not (moddir / "modules.dep").exists():
        sh("depmod", "-b", root, version)
    return Kernel(version, vmlinuz, moddir)


# --- payload bundle -------------------------------------------------------------------


#: Operator verbs the test normal root runs (first-boot provisioning, attest, status).
TOOLS = (
    "recover.store.provision",
    "recover.cli.image",
    "recover.cli.credential",
    "recover.cli.policy",
)


def bundle(kind: str = "payload") -> Path:
    """Staging directory: ``payload`` for the initramfs, ``tools`` for the test normal
    root (payload + operator verbs)."""
    from recover import bundle as rb

    out = BUILD / f"bundle-{kind}"
    digest = _digest(REPO / "recover", sys.prefix, kind)
    if _fresh(out, digest):
        return out
    rb.build(out, entry=(*rb.payload_entry(), *TOOLS) if kind == "tools" else None)
    _stamp(out, digest)
    return out


# --- dracut -----------------------------------------------------------------------------


def dracut_overlay() -> Path:
    """A dracutbasedir whose modules.d holds the system's modules plus ours."""
    base = Path("/usr/lib/dracut")
    ov = BUILD / "dracut"
    shutil.rmtree(ov, ignore_errors=True)
    (ov / "modules.d").mkdir(parents=True)
    epoch = int(SOURCE_DATE_EPOCH)
    for item in base.iterdir():
        if item.name != "modules.d":
            (ov / item.name).symlink_to(item)
            # --reproducible clamps the initramfs' mtimes to dracut-functions.sh as
            # lstat() sees it: the symlink's own mtime, so fix it (else PCR 9 moves).
            os.utime(ov / item.name, (epoch, epoch), follow_symlinks=False)
    for mod in (base / "modules.d").iterdir():
        (ov / "modules.d" / mod.name).symlink_to(mod)
    ours = ov / "modules.d" / "90host-recover"
    ours.mkdir()
    for f in [*(REPO / "dracut-module").iterdir(), *(REPO / "hooks").iterdir()]:
        shutil.copy2(f, ours / f.name)  # copies: dracut would install a symlink's target path
    return ov


SHELL_MODULES = ("bash", "base", "fs-lib", "rootfs-block", "udev-rules")
SYSTEMD_MODULES = (
    "bash",
    "systemd",
    "systemd-initrd",
    "dracut-systemd",
    "base",
    "fs-lib",
    "rootfs-block",
)
DRIVERS = "virtio_blk virtio_pci virtio_net squashfs overlay loop ext4 erofs"


def initramfs(
    kern: Kernel,
    confdir: Path,
    *,
    with_module: bool = True,
    init: str = "shell",
    name: str = "",
    stage: Path | None = None,
) -> Path:
    """Build (or reuse) an initramfs; returns its path. ``stage``: the payload from this
    staging directory (``host-recover bundle --output``), not from ``bundle()``."""
    if with_module and stage is None:
        stage = bundle()
    elif not with_module:
        stage = None
    modules = list(SHELL_MODULES if init == "shell" else SYSTEMD_MODULES)
    if with_module:
        modules.append("host-recover")
    digest = _digest(
        kern.version,
        modules,
        confdir,
        REPO / "dracut-module",
        REPO / "hooks",
        QEMU_ENV / "test-modules-hook.sh",
        Path(__file__),
    )
    if stage is not None:
        digest = _digest(digest, stage / "manifest.json", stage / "root")
    kind = f"{init}-{'hr' if with_module else 'plain'}-{_digest(confdir)[:8]}"
    out = BUILD / (name or f"initramfs-{kind}.img")
    if _fresh(out, digest):
        return out
    ov = dracut_overlay()
    tmp = BUILD / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    empty = BUILD / "dracut-conf.d"
    empty.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "dracutbasedir": os.fspath(ov),
        "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH,
        "HOST_RECOVER_CONFDIR": os.fspath(confdir),
    }
    if stage is not None:
        env["HOST_RECOVER_BUNDLE"] = os.fspath(stage)
    argv: list[str | os.PathLike[str]] = [
        "dracut",
        "--force",
        "--quiet",
        "--no-hostonly",
        "--reproducible",
        "--no-early-microcode",
        "--conf",
        "/dev/null",
        "--confdir",
        empty,
        "--tmpdir",
        tmp,
        "--kver",
        kern.version,
        "-k",
        kern.moddir,
        "--modules",
        " ".join(modules),
        "--drivers",
        DRIVERS,
        "--include",
        QEMU_ENV / "test-modules-hook.sh",
        "/usr/lib/dracut/hooks/pre-pivot/90-test-modules.sh",
        "--compress",
        "zstd",
        out,
    ]
    if init == "shell":
        argv[1:1] = ["--omit", "systemd systemd-initrd dracut-systemd"]
    sh(*argv, env=env)
    _stamp(out, digest)
    return out


# --- GRUB, as Debian boots ---------------------------------------------------------------

#: Debian's GRUB EFI build and the FAT tools, unpacked with ``dpkg -x`` (not installed).
GRUB_DEBS = (
    "grub-efi-amd64-bin",
    "grub-common",
    "libefivar1",
    "libefiboot1",
    "mtools",
    "dosfstools",
)
GRUB_CACHE = CACHE.parent / "grub"
#: Where tests/unit/data/capture-eventlog.sh keeps the same packages.
EVENTLOG_LAB = CACHE.parent / "eventlog-lab"


def grub_tools() -> Path:
    """The unpacked tools (``usr/bin/grub-mkstandalone``, ``sbin/mkfs.vfat``, mtools);
    the .debs come from the machine-wide cache, else ``apt-get download``."""
    GRUB_CACHE.mkdir(parents=True, exist_ok=True)
    debs = []
    for name in GRUB_DEBS:
        found = sorted(GRUB_CACHE.glob(f"{name}_*.deb")) or sorted(
            EVENTLOG_LAB.glob(f"{name}_*.deb")
        )
        if not found:
            subprocess.run(["apt-get", "download", name], cwd=GRUB_CACHE, check=True, timeout=600)
            found = sorted(GRUB_CACHE.glob(f"{name}_*.deb"))
        debs.append(found[-1])
    root = BUILD / "grub-tools"
    digest = _digest([d.name for d in debs])
    if not _fresh(root, digest):
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        for deb in debs:
            sh("dpkg", "-x", deb, root)
        _stamp(root, digest)
    return root


def _grub_env(tools: Path) -> dict[str, str]:
    path = f"{tools}/usr/bin:{tools}/sbin:{tools}/usr/sbin:{os.environ.get('PATH', '')}"
    lib = f"{tools}/usr/lib/x86_64-linux-gnu:{tools}/lib/x86_64-linux-gnu"
    return {**os.environ, "PATH": path, "LD_LIBRARY_PATH": lib, "MTOOLS_SKIP_CHECK": "1"}


#: GRUB reads the extra kernel arguments of one boot from its environment block, as
#: Debian's grub.cfg reads ``next_entry`` and friends: ``load_env`` opens the file
#: unverified, so it is not measured itself, but the expanded ``linuxefi`` command and the
#: ``kernel_cmdline`` are (PCR 8). grub.cfg, the kernel and the initrd are files GRUB
#: reads (PCR 9) and stay the same on every boot.
GRUB_CFG = """insmod fat
insmod linuxefi
search --no-floppy --file /hr-esp --set=root
set timeout=0
load_env -f ($root)/grubenv
linuxefi /vmlinuz {cmdline} $hr_extra
initrdefi /initrd.img
boot
"""


def grub_efi(cmdline: str) -> Path:
    """BOOTX64.EFI: ``grub-mkstandalone -O x86_64-efi`` with GRUB_CFG in its memdisk and
    ``linuxefi`` (Debian's Secure Boot path: the kernel's EFI stub runs, so Linux gets
    the event log; plain ``linux`` leaves it without one). Cached: the memdisk holds
    timestamps, so a rebuild changes PCR 4."""
    tools = grub_tools()
    cfg = GRUB_CFG.format(cmdline=cmdline)
    out = BUILD / f"grub-{_digest(cfg)[:8]}.efi"
    digest = _digest(cfg, tools.with_name(tools.name + ".stamp"))
    if _fresh(out, digest):
        return out
    cfg_file = out.with_suffix(".cfg")
    cfg_file.write_text(cfg)
    sh(
        "grub-mkstandalone",
        "-O",
        "x86_64-efi",
        "-d",
        tools / "usr/lib/grub/x86_64-efi",
        "--modules=tpm part_gpt part_msdos fat search search_fs_file linux linuxefi loadenv",
        "-o",
        out,
        f"boot/grub/grub.cfg={cfg_file}",
        env=_grub_env(tools),
    )
    _stamp(out, digest)
    return out


def grubenv(extra: str) -> bytes:
    """A GRUB environment block (1024 bytes) setting ``hr_extra``."""
    head = f"# GRUB Environment Block\nhr_extra={extra}\n".encode()
    if len(head) > 1024 or "\n" in extra:
        raise ValueError("extra kernel arguments too long for a GRUB environment block")
    return head.ljust(1024, b"#")


def esp_disk(out: Path, efi: Path, kernel: Path, initrd: Path, extra: str = "") -> Path:
    """A FAT disk (no partition table) OVMF boots as removable media:
    /EFI/BOOT/BOOTX64.EFI, /vmlinuz, /initrd.img, /grubenv and the marker /hr-esp."""
    tools = grub_tools()
    env = _grub_env(tools)
    size = (efi.stat().st_size + kernel.stat().st_size + initrd.stat().st_size) // 2**20 + 64
    out.unlink(missing_ok=True)
    with out.open("wb") as f:
        f.truncate(size << 20)
    sh("mkfs.vfat", "-F", "32", "-i", "48520000", out, env=env)
    sh("mmd", "-i", out, "::/EFI", "::/EFI/BOOT", env=env)
    marker = out.with_suffix(".marker")
    marker.write_text("host-recover test ESP\n")
    for src, dest in ((efi, "EFI/BOOT/BOOTX64.EFI"), (kernel, "vmlinuz"),
                      (initrd, "initrd.img"), (marker, "hr-esp")):  # fmt: skip
        sh("mcopy", "-i", out, src, f"::/{dest}", env=env)
    set_grubenv(out, extra)
    return out


def set_grubenv(esp: Path, extra: str) -> None:
    """Replace /grubenv on the ESP: the extra kernel arguments of the next boot."""
    env = _grub_env(grub_tools())
    block = esp.with_suffix(".grubenv")
    block.write_bytes(grubenv(extra))
    sh("mcopy", "-o", "-i", esp, block, "::/grubenv", env=env)


# --- disks ------------------------------------------------------------------------------

GUEST_TOOLS = ("busybox", "openssl")
APPLETS = (
    "sh mount umount cat dd tr sed grep cut ls mkdir sleep poweroff echo head printf wc sync reboot"
    " ip"  # the normal root's own network (qemu-env/guest-normal-init.sh)
).split()


def _rootfs_tree(tree: Path, init_script: Path, stage: Path | None = None) -> None:
    """A tiny root made from host binaries (busybox + openssl and their libraries), plus
    the host-recover tool set of a bundle ``stage`` if given."""
    from recover.bundle import elf_closure

    shutil.rmtree(tree, ignore_errors=True)
    for d in (
        "bin",
        "sbin",
        "etc",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "mnt/store",
        "usr/lib",
        "lib64",
    ):
        (tree / d).mkdir(parents=True, exist_ok=True)
    (tree / "lib").symlink_to("usr/lib")
    bins = [Path(shutil.which(t) or t).resolve() for t in GUEST_TOOLS]
    libs, missing = elf_closure(bins)
    if stage is not None:
        shutil.copytree(stage / "root", tree, symlinks=True, dirs_exist_ok=True)
        py = [Path(p) for p in (stage / "binaries.list").read_text().split()]
        for p in py:
            (tree / "usr/bin").mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, tree / "usr/bin" / p.name)
        libs = sorted({*libs, *(Path(p) for p in (stage / "libraries.list").read_text().split())})
    if missing:
        raise RuntimeError(f"missing libraries for the guest root: {missing}")
    for b in bins:
        shutil.copy2(b, tree / "bin" / b.name)
    for lib in libs:
        text = os.fspath(lib)
        rel = Path(text[1:] if text.startswith(("/usr/", "/lib64/")) else "usr" + text)
        dest = tree / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(lib.resolve(), dest)
    for a in APPLETS:
        (tree / "bin" / a).symlink_to("busybox")
    (tree / "etc/os-release").write_text('ID=host-recover-test\nNAME="host-recover test root"\n')
    (tree / "etc/ssl").mkdir(parents=True)
    (tree / "etc/ssl/openssl.cnf").write_text("# empty\n")
    shutil.copy2(init_script, tree / "sbin/init")
    (tree / "sbin/init").chmod(0o755)
    if stage is not None:  # the normal OS's own configuration (not measured)
        (tree / "etc/host-recover").mkdir(parents=True, exist_ok=True)
        (tree / "etc/host-recover/host-recover.conf").write_text(NORMAL_ROOT_CONF)


def squashfs(tree: Path, out: Path) -> Path:
    sh(
        "mksquashfs",
        tree,
        out,
        "-noappend",
        "-all-root",
        "-mkfs-time",
        SOURCE_DATE_EPOCH,
        "-all-time",
        SOURCE_DATE_EPOCH,
        "-quiet",
        "-no-progress",
        "-comp",
        "zstd",
    )
    return out


NORMAL_ROOT_CONF = """[store]
image = /mnt/store/recovery.hri
credentials = /mnt/store/credentials.hrc
[peers]
host_id = host
"""


def root_images() -> tuple[Path, Path]:
    """(normal root, plain recovery root) squashfs images."""
    outs = []
    for kind in ("normal", "recovery"):
        init = QEMU_ENV / f"guest-{kind}-init.sh"
        out = BUILD / f"{kind}-root.squashfs"
        stage = bundle("tools") if kind == "normal" else None
        digest = _digest(init, GUEST_TOOLS, APPLETS, NORMAL_ROOT_CONF)
        if stage is not None:
            digest = _digest(digest, stage / "manifest.json", stage / "root")
        if not _fresh(out, digest):
            tree = BUILD / f"{kind}-root"
            _rootfs_tree(tree, init, stage)
            squashfs(tree, out)
            _stamp(out, digest)
        outs.append(out)
    return outs[0], outs[1]


def store_disk(out: Path, files: dict[str, Path | bytes], size_mb: int = 96) -> Path:
    """ext4 labelled HRSTORE holding ``files`` (name → source file or bytes)."""
    tree = out.with_suffix(".d")
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    for name, src in files.items():
        dest = tree / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, bytes):
            dest.write_bytes(src)
        else:
            shutil.copyfile(src, dest)
    out.unlink(missing_ok=True)
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": SOURCE_DATE_EPOCH}
    sh("mkfs.ext4", "-q", "-F", "-L", "HRSTORE", "-d", tree, out, f"{size_mb}M", env=env)
    shutil.rmtree(tree)
    return out


def control_disk(
    out: Path,
    action: str,
    challenge: str,
    extra: dict[str, str] | None = None,
    attachment: bytes = b"",
) -> Path:
    """The guest reads this raw disk (virtio-hrcontrol): what to do once up, a challenge
    (and ``extra`` key=value lines, e.g. ``hrargs``: global CLI arguments).
    ``attachment`` (at most 64 KiB) follows the first 4 KiB block (e.g. an inventory)."""
    lines = {"action": action, "challenge": challenge, **(extra or {})}
    data = "".join(f"{k}={v}\n" for k, v in lines.items()).encode()
    assert len(data) <= 4096 and len(attachment) <= 65536
    out.write_bytes(data.ljust(4096, b"\0") + attachment.ljust(65536 if attachment else 0, b"\0"))
    return out


def default_confdir() -> Path:
    """The configuration baked into the test initramfs (store on the HRSTORE disk)."""
    conf = BUILD / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    text = (
        "[store]\n"
        "device = /dev/disk/by-label/HRSTORE\n"
        "image = recovery.hri\n"
        "credentials = credentials.hrc\n"
        "[boot]\n"
        "on_error = boot-normal\n"
    )
    path = conf / "host-recover.conf"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return conf


@dataclasses.dataclass(frozen=True)
class Artefacts:
    kernel: Kernel
    initramfs: Path
    normal_root: Path
    recovery_root: Path


def build_all(confdir: Path | None = None, init: str = "shell") -> Artefacts:
    BUILD.mkdir(parents=True, exist_ok=True)
    kern = kernel()
    img = initramfs(kern, confdir or default_confdir(), init=init)
    normal, recovery = root_images()
    return Artefacts(kern, img, normal, recovery)


def main(argv: Sequence[str]) -> int:
    art = build_all()
    print(json.dumps(dataclasses.asdict(art), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
