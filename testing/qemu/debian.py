"""A stock Debian 12 guest for the package e2e (tests/e2e/test_e2e_debian.py).

root tar   ``mmdebstrap --variant=minbase`` of bookworm with systemd, Debian's kernel
           (linux-image-amd64), dracut and python3, from the mirror apt is configured
           with; cached in /var/cache/host-recover/debian-guest/KEY/root.tar, KEY a
           digest of suite, variant, package list and mirror (about 2-3 min, 690 MB, once
           per machine)
disk       the root tar extracted, the built ``host-recover_*.deb`` installed **at image
           build time in a chroot, offline** with the README's own install block
           (``apt-get install ./host-recover_*.deb``: every dependency is in the root
           tar already), plus the e2e's first-boot unit (qemu-env/debian-guest-stage.sh),
           the README's other story blocks, the image factory's output (the lab's
           recovery squashfs), a service credential and a newer kernel .deb for the
           update; an ext4 image (no partition table), cached under the build directory
           keyed on all of those inputs
boot       OVMF + swtpm (testing/qemu/vm.py) with the guest's own kernel and initramfs,
           read out of its /boot with debugfs after every boot that may change them

The guest's first-boot unit reads what to do from the control disk (``action=``) and
runs the README's story blocks verbatim (``README.md``: ``<!-- story:NAME -->`` before a
fenced block); its output reaches the serial console.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from testing.qemu import harness

SUITE = "bookworm"
VARIANT = "minbase"
#: Sorted: part of the cache key. The libraries and tools the package depends on are in
#: the root already, so that installing the .deb needs no network.
PACKAGES = (
    "dracut",
    "e2fsprogs",
    "kmod",
    "libtss2-esys-3.0.2-0",
    "libtss2-mu0",
    "libtss2-rc0",
    "libtss2-sys1",
    "libtss2-tcti-device0",
    "libtss2-tctildr0",
    "linux-image-amd64",
    "python3",
    "squashfs-tools",
    "systemd",
    "systemd-sysv",
    "tpm-udev",
    "udev",
    "util-linux",
)
GUEST_CACHE = Path(os.environ.get("HOST_RECOVER_CACHE", "/var/cache/host-recover")) / "debian-guest"
BUILD = harness.BUILD / "debian"
README = harness.REPO / "README.md"
STAGE_SCRIPT = harness.QEMU_ENV / "debian-guest-stage.sh"
#: The guest's kernel command line (measured into PCR 9 with the initramfs: fixed).
CMDLINE = (
    "console=ttyS0,115200 root=/dev/disk/by-id/virtio-hrnormal rootfstype=ext4 rw "
    "panic=-1 loglevel=4 rd.shell=0 systemd.show_status=error"
)
ROOT_SIZE = "3G"
#: The e2e's additions to the configuration the README writes (a drop-in): the guest
#: has no peers, so it recovers on its own evidence after a power loss.
E2E_DROPIN = """[verdict]
on_isolated = recover
on_undetermined = recover
"""
STAGE_UNIT = """[Unit]
Description=host-recover e2e: the README's operator story, stage from the control disk
After=local-fs.target systemd-udev-settle.service
Wants=systemd-udev-settle.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/hr-e2e-stage

[Install]
WantedBy=multi-user.target
"""


def mirror() -> str:
    """The Debian mirror apt is configured with (deb822 or one-line sources)."""
    for f in sorted(Path("/etc/apt").glob("sources.list*")) + sorted(
        Path("/etc/apt/sources.list.d").glob("*.sources")
    ):
        if f.is_file():
            m = re.search(r"^(?:URIs:|deb)\s+(\S+/debian)\s*$", f.read_text(), re.M)
            if m:
                return m.group(1)
    return "http://deb.debian.org/debian"


def root_tar() -> Path:
    """The cached mmdebstrap root (built when missing: minutes, network to the mirror)."""
    url = mirror()
    key = harness._digest(SUITE, VARIANT, PACKAGES, url)[:16]
    out = GUEST_CACHE / key / "root.tar"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name("root.tar.part")
    part.unlink(missing_ok=True)
    harness.sh(
        "mmdebstrap",
        f"--variant={VARIANT}",
        "--format=tar",
        f"--include={','.join(PACKAGES)}",
        SUITE,
        part,
        url,
    )
    (out.parent / "packages").write_text("\n".join(PACKAGES) + "\n")
    part.rename(out)
    return out


def story_blocks(readme: Path = README) -> dict[str, str]:
    """The README's operator story: ``<!-- story:NAME -->`` then a fenced sh block."""
    rx = re.compile(r"<!-- story:(\w+) -->\n```sh\n(.*?)```", re.S)
    blocks = {m.group(1): m.group(2) for m in rx.finditer(readme.read_text())}
    missing = {"install", "configure", "provision", "reseal"} - set(blocks)
    if missing:
        raise RuntimeError(f"README.md lacks the story blocks {sorted(missing)}")
    return blocks


def build_deb() -> Path:
    """``make deb`` (the package and its lintian report) into the build directory."""
    out = BUILD / "deb"
    harness.sh("make", "-C", harness.REPO, "deb", f"DEBBUILD={out}")
    return sorted(out.glob("host-recover_*_amd64.deb"))[-1]


def update_kernel_deb() -> Path:
    """A newer Debian kernel than the guest's (the lab's cached one): the update."""
    harness.kernel()  # downloads it into the cache when missing
    return sorted(harness.CACHE.glob("linux-image-*-amd64-unsigned_*.deb"))[-1]


def _chroot(tree: Path, script: str) -> None:
    """Run ``script`` (sh -e) in ``tree`` as root, with /proc and /dev, in a private
    mount namespace (nothing stays mounted on the host)."""
    inner = (
        f"mount -t proc proc {tree}/proc && mount --rbind /dev {tree}/dev && "
        f"chroot {tree} /bin/sh -ec 'cd /root && {script}'"
    )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}
    harness.sh("unshare", "--mount", "--propagation", "private", "sh", "-ec", inner, env=env)


def disk(files: dict[str, Path | bytes], deb: Path, update_deb: Path) -> Path:
    """The guest's root disk (ext4, cached on its inputs): the stock root with the
    package installed and the e2e's additions. ``files``: extra files under /root."""
    tar = root_tar()
    blocks = story_blocks()
    digest = harness._digest(
        tar,
        tar.stat().st_size,
        deb,
        update_deb.name,
        STAGE_SCRIPT,
        STAGE_UNIT,
        E2E_DROPIN,
        sorted(blocks.items()),
        sorted((k, v if isinstance(v, bytes) else v.read_bytes()) for k, v in files.items()),
        CMDLINE,
    )
    out = BUILD / "root.img"
    if harness._fresh(out, digest):
        return out
    BUILD.mkdir(parents=True, exist_ok=True)
    tree = BUILD / "root"
    if tree.exists():
        harness.sh("rm", "-rf", "--one-file-system", tree)
    tree.mkdir()
    harness.sh("tar", "-xpf", tar, "--numeric-owner", "-C", tree)
    root = tree / "root"
    shutil.copy2(deb, root / deb.name)
    shutil.copy2(update_deb, root / update_deb.name)
    for name, src in files.items():
        if isinstance(src, bytes):
            (root / name).write_bytes(src)
        else:
            shutil.copy2(src, root / name)
    # The package, as the README's install block says, offline in a chroot.
    _chroot(tree, blocks["install"].replace("'", "'\\''"))
    if not (tree / "usr/sbin/host-recover").exists():
        raise RuntimeError("the package did not install /usr/sbin/host-recover")
    share = tree / "usr/local/share/hr-e2e"
    share.mkdir(parents=True, exist_ok=True)
    for name, text in blocks.items():
        (share / f"story-{name}.sh").write_text(text)
    stage = tree / "usr/local/sbin/hr-e2e-stage"
    shutil.copy2(STAGE_SCRIPT, stage)
    stage.chmod(0o755)
    (tree / "etc/systemd/system/hr-e2e-stage.service").write_text(STAGE_UNIT)
    wants = tree / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "hr-e2e-stage.service").symlink_to("/etc/systemd/system/hr-e2e-stage.service")
    (tree / "etc/host-recover/host-recover.conf.d/10-e2e.conf").write_text(E2E_DROPIN)
    (tree / "etc/hostname").write_text("hr-debian\n")
    (tree / "etc/fstab").write_text(
        "/dev/disk/by-id/virtio-hrnormal / ext4 rw,errors=remount-ro 0 1\n"
    )
    # The lab's choice, for TCG speed: an initramfs for this machine, not every machine.
    (tree / "etc/dracut.conf.d/10-e2e.conf").write_text('hostonly="yes"\n')
    out.unlink(missing_ok=True)
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": harness.SOURCE_DATE_EPOCH}
    harness.sh("mkfs.ext4", "-q", "-F", "-L", "hrroot", "-d", tree, out, ROOT_SIZE, env=env)
    harness.sh("rm", "-rf", "--one-file-system", tree)
    harness._stamp(out, digest)
    return out


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", name))


def boot_files(root_img: Path, dest: Path) -> tuple[Path, Path, str]:
    """The newest kernel in the guest's /boot and its initramfs, copied out with debugfs
    (the guest must be off): (vmlinuz, initrd, version)."""
    listing = harness.sh("debugfs", "-R", "ls -p /boot", root_img)
    names = [f.split("/")[5] for f in listing.splitlines() if f.count("/") >= 6]
    versions = sorted(
        (n[len("vmlinuz-") :] for n in names if n.startswith("vmlinuz-")), key=_version_key
    )
    if not versions:
        raise RuntimeError(f"no kernel in the guest's /boot: {names}")
    version = versions[-1]
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in (f"vmlinuz-{version}", f"initrd.img-{version}"):
        target = dest / name
        target.unlink(missing_ok=True)
        harness.sh("debugfs", "-R", f"dump /boot/{name} {target}", root_img)
        if not target.exists() or target.stat().st_size == 0:
            raise RuntimeError(f"could not read /boot/{name} from {root_img}")
        out.append(target)
    return out[0], out[1], version


def copy_disk(src: Path, dest: Path) -> Path:
    """A sparse working copy of a cached disk (boots write to it)."""
    dest.unlink(missing_ok=True)
    subprocess.run(["cp", "--sparse=always", src, dest], check=True, timeout=600)
    return dest
