"""Predicting the next boot's PCRs after an initramfs rebuild or a kernel update
(recover.core.predict): against the test log builder's independent computation of the
next boot's log, and on the real OVMF and GRUB captures."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from test_authenticode import pe_image
from test_eventlog import APP, IPL, Log, efistub_log, firmware, grub_log, sdstub_log, seabios_log

from recover.core import authenticode
from recover.core import eventlog as el
from recover.core.predict import NewFile, predict, with_new_files
from recover.errors import UsageError

DATA = Path(__file__).parent / "data" / "eventlog"


@pytest.mark.parametrize("banks", [("sha256",), ("sha1", "sha256", "sha384")])
def test_prediction_equals_the_log_of_a_boot_with_the_new_initramfs(banks) -> None:  # type: ignore[no-untyped-def]
    old = efistub_log(banks=banks, initrd=b"070701 the old initramfs")
    new = efistub_log(banks=banks, initrd=b"070701 the rebuilt initramfs")
    predicted = predict(
        el.parse_event_log(old.bytes()), initrd=NewFile(b"070701 the rebuilt initramfs")
    )
    assert predicted == new.expected()
    assert predicted != old.expected()


def test_only_the_initramfs_pcr_changes_in_a_real_capture() -> None:
    log = el.parse_event_log((DATA / "efistub.bin").read_bytes())
    now, predicted = el.replay(log), predict(log, initrd=NewFile(b"a different initramfs"))
    for bank in now:
        changed = {p for p in now[bank] if now[bank][p] != predicted[bank][p]}
        assert changed == {9}, (bank, changed)


def test_a_boot_path_without_an_initrd_measurement_is_refused() -> None:
    with pytest.raises(UsageError, match="no initramfs measured by the Linux EFI stub or GRUB"):
        predict(el.parse_event_log(seabios_log().bytes()), initrd=NewFile(b"x"))


# --- GRUB: files in PCR 9 ---------------------------------------------------------------

OLD_K, NEW_K = b"the old kernel", b"the new kernel"
OLD_I, NEW_I = b"070701 the old initramfs", b"070701 the new initramfs"


@pytest.mark.parametrize(
    "banks,legacy", [(("sha256",), False), (("sha1", "sha256", "sha384"), False), ((), True)]
)
def test_grub_initramfs_rebuild(banks, legacy) -> None:  # type: ignore[no-untyped-def]
    old = grub_log(banks=banks or ("sha256",), legacy=legacy, initrd=OLD_I)
    new = grub_log(banks=banks or ("sha256",), legacy=legacy, initrd=NEW_I)
    predicted = predict(el.parse_event_log(old.bytes()), initrd=NewFile(NEW_I))
    assert predicted == new.expected() != old.expected()


def test_grub_kernel_read_by_search_too_and_another_disks_file_left_alone() -> None:
    old = grub_log(search=True, kernel_image=OLD_K, initrd=OLD_I)
    new = grub_log(search=True, kernel_image=NEW_K, initrd=NEW_I)
    log = el.parse_event_log(old.bytes())
    both = predict(
        log,
        kernel=NewFile(NEW_K, "vmlinuz-6.1.0-57-amd64"),
        initrd=NewFile(NEW_I, "initrd.img-6.1.0-57-amd64"),
    )
    assert both == new.expected()
    only_kernel = predict(log, kernel=NewFile(NEW_K))
    assert only_kernel == grub_log(search=True, kernel_image=NEW_K, initrd=OLD_I).expected()


def test_grub_with_a_new_file_name_is_refused() -> None:
    """Debian's versioned /boot/vmlinuz-VERSION: a new name is a new grub.cfg and new
    commands in PCR 8, which the log cannot tell."""
    log = el.parse_event_log(grub_log().bytes())
    with pytest.raises(UsageError, match="named vmlinuz-6.1.0-58-amd64: a new name changes"):
        predict(log, kernel=NewFile(NEW_K, "vmlinuz-6.1.0-58-amd64"))
    with pytest.raises(UsageError, match="the initramfs as /boot/initrd.img-6.1.0-57-amd64"):
        predict(log, initrd=NewFile(NEW_I, "initrd.img"))


def test_grub_loading_two_initrd_files_is_refused() -> None:
    log = firmware(Log()).add(4, APP, b"grub", measured=b"authenticode of grub")
    for text in ("linux /vmlinuz root=/dev/vda", "initrd /microcode.cpio /initrd.img"):
        log.add(8, IPL, f"grub_cmd: {text}\0".encode(), measured=text.encode())
    log.add(9, IPL, b"/microcode.cpio\0", measured=b"ucode").add(9, IPL, b"/initrd.img\0")
    with pytest.raises(UsageError, match="GRUB loads 2 initrd files"):
        predict(el.parse_event_log(log.bytes()), initrd=NewFile(NEW_I))


def test_grub_image_loaded_after_the_linux_command_is_the_kernel_in_pcr_4() -> None:
    """GRUB (or shim for it) handing the kernel to LoadImage: the firmware measures its
    Authenticode digest into PCR 4 too."""
    image_old, image_new = pe_image(), pe_image(tail=b"new kernel" * 8)

    def boot(image: bytes) -> Log:
        log = firmware(Log()).add(4, APP, b"grub", measured=b"authenticode of grub")
        text = "linux /vmlinuz root=/dev/vda"
        log.add(8, IPL, f"grub_cmd: {text}\0".encode(), measured=text.encode())
        log.add(9, IPL, b"/vmlinuz\0", measured=image)
        return log.add(4, APP, b"kernel", digests={"sha256": authenticode.digest(image, "sha256")})

    predicted = predict(el.parse_event_log(boot(image_old).bytes()), kernel=NewFile(image_new))
    assert predicted == boot(image_new).expected() != boot(image_old).expected()


# --- the EFI stub started by the firmware: the kernel in PCR 4 ------------------------------


@pytest.mark.parametrize("banks", [("sha256",), ("sha1", "sha256", "sha384")])
def test_efi_stub_kernel_update(banks) -> None:  # type: ignore[no-untyped-def]
    def digests(image: bytes) -> dict[str, bytes]:
        return {b: authenticode.digest(image, b) for b in banks}

    old_image, new_image = pe_image(), pe_image(order=(1, 2, 0), tail=b"v2" * 32)
    old = efistub_log(banks=banks, kernel=digests(old_image), initrd=OLD_I)
    new = efistub_log(banks=banks, kernel=digests(new_image), initrd=NEW_I)
    log = el.parse_event_log(old.bytes())
    assert predict(log, kernel=NewFile(new_image), initrd=NewFile(NEW_I)) == new.expected()
    with pytest.raises(UsageError, match="not a PE/COFF image"):
        predict(log, kernel=NewFile(b"\x7fELF a kernel without the EFI stub"))


def test_kernel_inside_a_uki_is_refused() -> None:
    with pytest.raises(UsageError, match="inside a UKI"):
        predict(el.parse_event_log(sdstub_log().bytes()), kernel=NewFile(pe_image()))


def test_kernel_not_told_apart_is_refused() -> None:
    """The EFI stub entered through the handover protocol (no load options measured):
    nothing in the log is the kernel image."""
    log = firmware(Log()).add(4, APP, b"a loader", measured=b"authenticode of a loader")
    log.add(9, 0x6, el.LINUX_EFI_INITRD_EVENT_TAG_ID.to_bytes(4, "little") + bytes(4))
    with pytest.raises(UsageError, match="does not say which measurement is the kernel"):
        predict(el.parse_event_log(log.bytes()), kernel=NewFile(pe_image()))


# --- the real captures --------------------------------------------------------------------


def test_real_grub_capture_kernel_and_initramfs_move_pcr_9_only() -> None:
    log = el.parse_event_log((DATA / "grub.bin").read_bytes())
    now = el.replay(log)
    new = with_new_files(log, kernel=NewFile(NEW_K, "vmlinuz"), initrd=NewFile(NEW_I, "initrd.img"))
    moved = {
        el._cstring(e.data): dict(e.digests)["sha256"]
        for e, o in zip(new.events, log.events, strict=True)
        if e != o
    }
    # search --file /vmlinuz read "(hd0)/vmlinuz", linuxefi "/vmlinuz": the same file
    want_k, want_i = hashlib.sha256(NEW_K).digest(), hashlib.sha256(NEW_I).digest()
    assert moved == {"(hd0)/vmlinuz": want_k, "/vmlinuz": want_k, "/initrd.img": want_i}
    predicted = el.replay(new)
    for bank in now:
        assert {p for p in now[bank] if now[bank][p] != predicted[bank][p]} == {9}, bank


def test_real_efistub_capture_kernel_moves_pcr_4_only() -> None:
    log = el.parse_event_log((DATA / "efistub.bin").read_bytes())
    now = el.replay(log)
    image = pe_image()
    new = with_new_files(log, kernel=NewFile(image))
    (changed,) = [(e, o) for e, o in zip(new.events, log.events, strict=True) if e != o]
    assert changed[1].type == el.EventType.EV_EFI_BOOT_SERVICES_APPLICATION
    assert dict(changed[0].digests) == {
        b: authenticode.digest(image, b) for b, _ in changed[1].digests
    }
    predicted = el.replay(new)
    for bank in now:
        assert {p for p in now[bank] if now[bank][p] != predicted[bank][p]} == {4}, bank


def test_reading_the_new_files_does_not_allocate_the_size_bound(tmp_path: Path) -> None:
    """A 1 GiB guest got MemoryError from f.read(1 GiB + 1) on a 20 MB initramfs (found by
    tests/e2e/test_e2e_grub.py): under an address-space limit 256 MiB above what the
    process uses, reading a small file works."""
    import subprocess
    import sys

    small = tmp_path / "initrd.img"
    small.write_bytes(b"070701" + bytes(4096))
    code = (
        "import os, resource, sys; from recover.store import reseal;"
        "used = int(open('/proc/self/statm').read().split()[0]) * os.sysconf('SC_PAGE_SIZE');"
        "resource.setrlimit(resource.RLIMIT_AS, (used + (256 << 20),) * 2);"
        "f = reseal._read(sys.argv[1], 'initramfs'); print(len(f.data), f.name)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(small)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.split() == ["4102", "initrd.img"], out.stderr
