"""Pure tests of recover/core/eventlog.py: synthetic logs for each boot path, built here
byte by byte, and real logs captured from OVMF + swtpm (tests/unit/data/eventlog, made by
tests/unit/data/capture-eventlog.sh). No TPM, no QEMU."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import re
import struct
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recover.core import eventlog as el
from recover.errors import ExitCode, IntegrityError

DATA = Path(__file__).parent / "data" / "eventlog"
BANK_IDS = {"sha1": (0x0004, 20), "sha256": (0x000B, 32), "sha384": (0x000C, 48)}
APP = 0x80000003  # EV_EFI_BOOT_SERVICES_APPLICATION
EFI_ACTION = 0x80000007
IPL, TAG, SEPARATOR, NO_ACTION = 0xD, 0x6, 0x4, 0x3
DEFAULT = {0, 2, 4, 7, 9}  # tpm.pcrs' default


# --- a test-local log builder ---------------------------------------------------------


def utf16z(text: str) -> bytes:
    return text.encode("utf-16-le") + b"\0\0"


def tagged(tag_id: int, description: bytes) -> bytes:
    return struct.pack("<II", tag_id, len(description)) + description


class Log:
    """Builds a log and, independently of the module, the PCR values it implies."""

    def __init__(self, banks: tuple[str, ...] = ("sha256",), *, legacy: bool = False) -> None:
        self.banks = ("sha1",) if legacy else banks
        self.legacy = legacy
        self.records: list[bytes] = []
        self.extends: list[tuple[int, dict[str, bytes]]] = []
        self.locality = 0
        if not legacy:
            spec = b"Spec ID Event03\0" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(banks))
            spec += b"".join(struct.pack("<HH", *BANK_IDS[b]) for b in banks) + b"\0"
            self.records.append(self._sha1_record(0, NO_ACTION, bytes(20), spec))

    @staticmethod
    def _sha1_record(pcr: int, etype: int, digest: bytes, data: bytes) -> bytes:
        return struct.pack("<II", pcr, etype) + digest + struct.pack("<I", len(data)) + data

    def add(
        self,
        pcr: int,
        etype: int,
        data: bytes,
        measured: bytes | None = None,
        digests: dict[str, bytes] | None = None,
    ) -> Log:
        """One event whose digests are H(measured) (default: H(data)), or ``digests``;
        EV_NO_ACTION: zeros."""
        pre = data if measured is None else measured
        if digests is None:
            digests = {
                b: bytes(BANK_IDS[b][1]) if etype == NO_ACTION else hashlib.new(b, pre).digest()
                for b in self.banks
            }
        if self.legacy:
            self.records.append(self._sha1_record(pcr, etype, digests["sha1"], data))
        else:
            body = struct.pack("<III", pcr, etype, len(self.banks))
            body += b"".join(struct.pack("<H", BANK_IDS[b][0]) + digests[b] for b in self.banks)
            self.records.append(body + struct.pack("<I", len(data)) + data)
        if etype != NO_ACTION:
            self.extends.append((pcr, digests))
        return self

    def startup_locality(self, locality: int) -> Log:
        self.locality = locality
        return self.add(0, NO_ACTION, b"StartupLocality\0" + bytes([locality]))

    def bytes(self) -> bytes:
        return b"".join(self.records)

    def expected(self) -> dict[str, dict[int, bytes]]:
        out: dict[str, dict[int, bytes]] = {}
        for bank in self.banks:
            size = BANK_IDS[bank][1]
            pcrs: dict[int, bytes] = {}
            for pcr, digests in self.extends:
                if pcr not in pcrs:
                    pcrs[pcr] = bytes(size)
                    if pcr == 0:
                        pcrs[pcr] = bytes(size - 1) + bytes([self.locality])
                pcrs[pcr] = hashlib.new(bank, pcrs[pcr] + digests[bank]).digest()
            out[bank] = pcrs
        return out


def firmware(log: Log) -> Log:
    """What OVMF measures before any boot loader: PCR 0, 7, separators 0..7."""
    log.add(0, 0x8, b"\0\0").add(0, 0x80000008, bytes(16))
    log.add(7, 0x80000001, b"SecureBoot\0" + bytes(10))
    for pcr in range(8):
        log.add(pcr, SEPARATOR, bytes(4))
    return log


def efistub_log(
    cmdline: str = "console=ttyS0 root=/dev/vda initrd=initrd",
    banks: tuple[str, ...] = ("sha256",),
    initrd: bytes = b"070701 an initramfs",
    kernel: dict[str, bytes] | None = None,
) -> Log:
    """OVMF direct kernel boot: the kernel image in PCR 4 (``kernel``: its digests per
    bank), the stub's tagged events in 9."""
    log = firmware(Log(banks))
    log.add(4, APP, b"kernel device path", measured=b"authenticode of the kernel", digests=kernel)
    log.add(4, EFI_ACTION, b"Calling EFI Application from Boot Option")
    load_options = tagged(el.LINUX_EFI_LOAD_OPTIONS_EVENT_TAG_ID, b"LOADED_IMAGE::LoadOptions\0")
    log.add(9, TAG, load_options, measured=utf16z(cmdline))
    log.add(9, TAG, tagged(el.LINUX_EFI_INITRD_EVENT_TAG_ID, b"Linux initrd\0"), measured=initrd)
    return log.add(5, EFI_ACTION, b"Exit Boot Services Invocation")


def grub_log(
    args: str = "root=/dev/sda1 ro quiet",
    banks: tuple[str, ...] = ("sha256",),
    legacy: bool = False,
    kernel_file: str = "/boot/vmlinuz-6.1.0-57-amd64",
    initrd_file: str | None = "/boot/initrd.img-6.1.0-57-amd64",
    kernel_image: bytes = b"the kernel image",
    initrd: bytes = b"the initramfs",
    search: bool = False,
) -> Log:
    """GRUB (Debian 12, RHEL 9): strings into PCR 8, files into PCR 9; with ``search``,
    ``search --file`` reads the kernel first (on the device, and another device's file
    of the same path), as the lab's GRUB does."""
    kernel = "/boot/vmlinuz-6.1.0-57-amd64"
    log = firmware(Log(banks, legacy=legacy))
    log.add(4, APP, b"grubx64.efi device path", measured=b"authenticode of grub")

    def cmd(text: str) -> None:
        log.add(8, IPL, f"grub_cmd: {text}\0".encode(), measured=text.encode())

    log.add(9, IPL, b"(hd0,gpt2)/boot/grub/grub.cfg\0", measured=b"grub.cfg contents")
    if search:
        cmd(f"search --no-floppy --file {kernel} --set=root")
        log.add(9, IPL, f"(hd1){kernel}\0".encode(), measured=b"another disk's kernel")
        log.add(9, IPL, f"(hd0,gpt2){kernel}\0".encode(), measured=kernel_image)
    cmd("set root=hd0,gpt2")
    cmd(f"linux {kernel} {args}")
    log.add(9, IPL, kernel_file.encode() + b"\0", measured=kernel_image)
    text = f"{kernel} {args}"
    log.add(8, IPL, f"kernel_cmdline: {text}\0".encode(), measured=text.encode())
    if initrd_file is not None:
        cmd("initrd /boot/initrd.img-6.1.0-57-amd64")
        log.add(9, IPL, initrd_file.encode() + b"\0", measured=initrd)
    return log


def sdstub_log(
    cmdline: str | None = "root=/dev/vda ro",
    sections: dict[str, bytes] | None = None,
    kernel_tags: bool = False,
    banks: tuple[str, ...] = ("sha256",),
) -> Log:
    """A UKI under systemd-stub: sections into PCR 11 (name, then content), load options
    into PCR 12; with kernel_tags, the kernel's own EFI stub (6.1+) measures into PCR 9."""
    if sections is None:
        sections = {".linux": b"bzImage", ".osrel": b"ID=debian\n", ".initrd": b"cpio"}
    log = firmware(Log(banks))
    log.add(4, APP, b"uki device path", measured=b"authenticode of the UKI")
    for name, content in sections.items():
        log.add(11, IPL, utf16z(name), measured=name.encode() + b"\0")
        log.add(11, IPL, utf16z(name), measured=content)
    if cmdline is not None:
        log.add(12, IPL, utf16z(cmdline))
    log.add(12, IPL, utf16z("Credentials initrd"), measured=b"a cpio of credentials")
    if kernel_tags:
        options = tagged(el.LINUX_EFI_LOAD_OPTIONS_EVENT_TAG_ID, b"LOADED_IMAGE::LoadOptions\0")
        log.add(9, TAG, options, measured=utf16z(cmdline or ""))
        log.add(9, TAG, tagged(el.LINUX_EFI_INITRD_EVENT_TAG_ID, b"Linux initrd\0"), b"all")
    return log


def seabios_log(legacy: bool = False) -> Log:
    """SeaBIOS: firmware, option ROMs and the MBR; nothing of the kernel."""
    log = Log(("sha1", "sha256"), legacy=legacy)
    log.add(0, 0x8, b"SeaBIOS").add(2, 0x1, b"option rom")
    for pcr in range(8):
        log.add(pcr, SEPARATOR, bytes(4))
    log.add(4, 0x5, b"Calling INT 19h")
    log.add(4, IPL, b"MBR", measured=b"boot sector").add(5, 0xE, b"MBR PARTITION TABLE")
    return log


def parse(log: Log) -> el.EventLog:
    return el.parse_event_log(log.bytes())


def binding(log: Log) -> el.Binding:
    return el.classify(parse(log))


def read_capture(name: str) -> tuple[bytes, dict[str, dict[int, bytes]], str]:
    pcrs: dict[str, dict[int, bytes]] = {}
    for line in (DATA / f"{name}.pcrs").read_text().splitlines():
        bank, pcr, value = line.split()
        pcrs.setdefault(bank, {})[int(pcr)] = bytes.fromhex(value)
    return (DATA / f"{name}.bin").read_bytes(), pcrs, (DATA / f"{name}.cmdline").read_text()


# --- parsing ----------------------------------------------------------------------------


def test_crypto_agile_header_and_events() -> None:
    log = parse(efistub_log(banks=("sha1", "sha256", "sha384")))
    assert log.format == "crypto-agile"
    assert log.banks == ("sha1", "sha256", "sha384")
    assert log.startup_locality is None
    assert [e.type for e in log.events[:2]] == [0x8, 0x80000008]
    tag = [e for e in log.events if e.type == TAG][0]
    assert [b for b, _ in tag.digests] == ["sha1", "sha256", "sha384"]
    assert el.event_type_name(tag.type) == "EV_EVENT_TAG"
    assert el.event_type_name(0x1234) == "0x00001234"


def test_legacy_sha1_log() -> None:
    log = parse(grub_log(legacy=True))
    assert log.format == "sha1" and log.banks == ("sha1",)
    assert log.events[0].type == 0x8  # the first event is an ordinary one


@pytest.mark.parametrize(
    "make",
    [
        lambda: efistub_log(banks=("sha1", "sha256", "sha384")),
        lambda: grub_log(banks=("sha256", "sha384")),
        lambda: grub_log(legacy=True),
        lambda: sdstub_log(kernel_tags=True, banks=("sha1", "sha256")),
        lambda: seabios_log(),
        lambda: seabios_log(legacy=True),
        lambda: firmware(Log(("sha1", "sha256", "sha384"))).startup_locality(3),
    ],
    ids=["efistub", "grub", "grub-sha1", "sdstub", "seabios", "seabios-sha1", "locality"],
)
def test_replay_equals_an_independent_computation(make) -> None:  # type: ignore[no-untyped-def]
    log = make()
    assert el.replay(parse(log)) == log.expected()


def test_startup_locality_sets_pcr0_initial_value() -> None:
    log = Log(("sha256",)).startup_locality(3).add(0, 0x8, b"crtm")
    parsed = parse(log)
    assert parsed.startup_locality == 3
    assert el.initial_value("sha256", 0, 3) == bytes(31) + b"\x03"
    want = hashlib.sha256(bytes(31) + b"\x03" + hashlib.sha256(b"crtm").digest()).digest()
    assert el.replay(parsed)["sha256"][0] == want
    # without the event, PCR 0 starts at zero: a different value
    plain = Log(("sha256",)).add(0, 0x8, b"crtm")
    assert el.replay(parse(plain))["sha256"][0] != want


def test_no_action_events_are_not_extended() -> None:
    log = Log(("sha256",)).add(4, NO_ACTION, b"anything").add(4, APP, b"x")
    assert el.replay(parse(log))["sha256"][4] == log.expected()["sha256"][4]
    assert len(log.extends) == 1


def test_pcrs_17_to_22_start_at_ones() -> None:
    assert el.initial_value("sha1", 17) == b"\xff" * 20
    log = Log(("sha256",)).add(18, 0x5, b"drtm")
    want = hashlib.sha256(b"\xff" * 32 + hashlib.sha256(b"drtm").digest()).digest()
    assert el.replay(parse(log))["sha256"][18] == want


def test_compare_names_matching_and_mismatching_pcrs() -> None:
    log = efistub_log(banks=("sha1", "sha256"))
    current = {b: dict(v) for b, v in log.expected().items()}
    current["sha256"][10] = bytes(32)  # never extended: matches its reset value
    current["sha256"][9] = b"\x01" * 32
    current["sha384"] = {0: bytes(48)}
    cmp = el.compare(parse(log), current)
    assert 9 in cmp.mismatching["sha256"] and 9 in cmp.matching["sha1"]
    assert {0, 4, 10} <= cmp.matching_pcrs("sha256")
    assert cmp.banks_not_in_log == ("sha384",)
    assert cmp.matching_pcrs("sha512") == frozenset()
    json.dumps(cmp.to_json())


# --- malformed input --------------------------------------------------------------------


def _corrupt(log: Log, index: int, fmt: str, at: int, value: int) -> bytes:
    """The log with one field of record ``index`` replaced."""
    records = list(log.records)
    rec = bytearray(records[index])
    struct.pack_into(fmt, rec, at, value)
    records[index] = bytes(rec)
    return b"".join(records)


def _error(data: bytes) -> el.EventLogError:
    with pytest.raises(el.EventLogError) as info:
        el.parse_event_log(data)
    err = info.value
    assert isinstance(err, IntegrityError) and err.exit_code == ExitCode.INTEGRITY
    assert "\n" not in str(err) and re.search(r" at offset 0x[0-9a-f]+$", str(err))
    return err


def test_truncated_record() -> None:
    data = efistub_log().bytes()
    err = _error(data[:-3])
    assert "truncated event data" in str(err)
    assert "truncated event header" in str(
        _error(data[: len(data) - len(efistub_log().records[-1]) + 2])
    )


def test_huge_sizes_are_refused_before_reading() -> None:
    log = efistub_log()
    err = _error(_corrupt(log, 3, "<I", 12 + 2 + 32, 0xFFFFFFF0))  # its eventSize
    assert "exceeds the 1048576 cap" in str(err)
    assert "exceeds the 16777216 cap" in str(_error(bytes(el.MAX_LOG_SIZE + 1)))


def test_zero_and_too_many_digests() -> None:
    log = efistub_log()
    assert "zero digests" in str(_error(_corrupt(log, 2, "<I", 8, 0)))
    assert "9 digests (at most 8)" in str(_error(_corrupt(log, 2, "<I", 8, 9)))


def test_unknown_algorithms() -> None:
    log = efistub_log()
    err = _error(_corrupt(log, 2, "<H", 12, 0x0013))
    assert "digest algorithm 0x0013 not declared in the header" in str(err)
    err = _error(_corrupt(log, 0, "<H", 32 + 28, 0x1234))  # the Spec ID's first algorithm
    assert "unknown digest algorithm 0x1234 in the Spec ID header" in str(err)
    assert str(err).endswith("at offset 0x0")


def test_missing_bank_and_repeated_digest() -> None:
    two = Log(("sha1", "sha256"))
    rec = struct.pack("<III", 0, 0x8, 2) + (struct.pack("<H", 4) + bytes(20)) * 2
    err = _error(two.bytes() + rec + struct.pack("<I", 0))
    assert "sha1 digest given twice" in str(err)
    one = struct.pack("<III", 0, 0x8, 1) + struct.pack("<H", 4) + bytes(20) + bytes(4)
    assert "lacks the sha256 digest" in str(_error(two.bytes() + one))


def test_bad_pcr_index_and_header() -> None:
    assert "PCR index 24 out of range" in str(_error(_corrupt(efistub_log(), 2, "<I", 0, 24)))
    # Spec ID: signature (16), platformClass (4), minor, major, errata, uintnSize, count
    assert "Spec ID declares 0 algorithms" in str(_error(_corrupt(Log(), 0, "<I", 32 + 24, 0)))
    assert "Spec ID Event03 with version 3" in str(_error(_corrupt(Log(), 0, "<B", 32 + 21, 3)))
    header = bytearray(Log().records[0])
    struct.pack_into("<I", header, 28, len(header) - 32 + 1)  # one byte past vendorInfo
    assert "1 stray bytes after the Spec ID header" in str(_error(bytes(header) + b"\0"))
    truncated = Log().records[0][:-1]  # no vendorInfoSize byte
    truncated = truncated[:28] + struct.pack("<I", len(truncated) - 32) + truncated[32:]
    err = _error(truncated)
    assert "truncated Spec ID vendor info size" in str(err) and str(err).endswith(
        "at offset 0x40"
    )  # absolute


def test_bad_startup_locality() -> None:
    twice = Log().startup_locality(3).startup_locality(3).bytes()
    assert "StartupLocality" in str(_error(twice))
    odd = Log().add(0, NO_ACTION, b"StartupLocality\0\x09").bytes()
    assert "StartupLocality" in str(_error(odd))


def test_empty_log() -> None:
    assert "empty log" in str(_error(b""))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_bytes_only_ever_raise_event_log_error(data: bytes) -> None:
    _total(data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_real_logs_only_ever_raise_event_log_error(data: st.DataObject) -> None:
    raw = bytearray((DATA / data.draw(st.sampled_from(["efistub.bin", "grub.bin"]))).read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    _total(bytes(raw[:cut]))


def _total(data: bytes) -> None:
    """Parsing fails only with EventLogError; whatever parses also classifies and checks."""
    try:
        log = el.parse_event_log(data)
    except el.EventLogError:
        return
    b = el.classify(log)
    el.replay(log)
    el.check_selection(b, DEFAULT)
    el.cmdline_matches(b, "x")
    json.dumps(b.to_json())


# --- classification, selection checks, cmdline -----------------------------------------


def test_efistub_binding() -> None:
    b = binding(efistub_log())
    assert (b.boot_path, b.kernel, b.initrd, b.cmdline, b.loader) == (
        "efi-stub", {4}, {9}, {9}, {4},
    )  # fmt: skip
    assert b.cmdline_text is None  # the stub logs a digest, not the text
    assert el.check_selection(b, DEFAULT) == []
    assert el.cmdline_matches(b, "console=ttyS0 root=/dev/vda initrd=initrd\n") is True
    assert el.cmdline_matches(b, "console=ttyS0 root=/dev/vda initrd=initrd") is True
    assert el.cmdline_matches(b, "console=ttyS0 root=/dev/vda") is False  # initrd= is part of it
    assert el.cmdline_matches(b, "console=ttyS0 root=/dev/vda initrd=initrd rd.break") is False


def test_efistub_without_pcr9_names_the_pcr_to_add() -> None:
    problems = el.check_selection(binding(efistub_log()), {0, 2, 7})
    assert [(p.component, p.kind, p.add) for p in problems] == [
        (el.Component.KERNEL, el.ProblemKind.NOT_SELECTED, 4),
        (el.Component.INITRD, el.ProblemKind.NOT_SELECTED, 9),
        (el.Component.CMDLINE, el.ProblemKind.NOT_SELECTED, 9),
        (el.Component.LOADER, el.ProblemKind.NOT_SELECTED, 4),
    ]
    assert problems[2].message == (
        "the command line is measured into PCR 9 (efi-stub) but tpm.pcrs does not include it: add 9"
    )


def test_efistub_initrd_from_the_cmdline_loader_is_not_measured() -> None:
    """The stub's own initrd= loader (6.1) measures no initrd: only load options."""
    log = firmware(Log()).add(4, APP, b"k")
    options = tagged(el.LINUX_EFI_LOAD_OPTIONS_EVENT_TAG_ID, b"LOADED_IMAGE::LoadOptions\0")
    log.add(9, TAG, options, measured=utf16z("initrd=\\initrd.img root=/dev/vda"))
    b = binding(log)
    assert (b.kernel, b.initrd, b.cmdline) == ({4}, set(), {9})
    [problem] = el.check_selection(b, DEFAULT)
    assert problem.kind == el.ProblemKind.NOT_MEASURED and problem.add is None
    assert problem.message == (
        "the initramfs is not measured on this boot path (efi-stub): no PCR can bind it"
    )


def test_grub_binding_needs_pcr8_for_the_command_line() -> None:
    b = binding(grub_log())
    assert (b.boot_path, b.kernel, b.initrd, b.cmdline, b.loader) == (
        "grub", {9}, {9}, {8}, {4},
    )  # fmt: skip
    assert b.cmdline_text == "/boot/vmlinuz-6.1.0-57-amd64 root=/dev/sda1 ro quiet"
    [problem] = el.check_selection(b, DEFAULT)
    assert problem.message == (
        "the command line is measured into PCR 8 (grub) but tpm.pcrs does not include it: add 8"
    )
    assert problem.add == 8 and problem.component == el.Component.CMDLINE
    assert el.check_selection(b, DEFAULT | {8}) == []
    assert (
        "policy.pcrs does not" in el.check_selection(b, DEFAULT, setting="policy.pcrs")[0].message
    )


def test_grub_cmdline_matching() -> None:
    b = binding(grub_log())
    proc = "BOOT_IMAGE=/boot/vmlinuz-6.1.0-57-amd64 root=/dev/sda1 ro quiet\n"
    assert el.cmdline_matches(b, proc) is True
    assert el.cmdline_matches(b, proc.replace(" quiet", " quiet rd.host_recover=0")) is False
    assert el.cmdline_matches(b, proc.replace("ro", "rw")) is False


def test_grub_unmeasured_files_are_not_claimed() -> None:
    other = binding(grub_log(kernel_file="/boot/other", initrd_file="/boot/other-initrd"))
    assert other.kernel == set() and other.initrd == set() and other.cmdline == {8}
    assert "GRUB loaded an initrd file it did not measure" in other.notes
    no_initrd = binding(grub_log(initrd_file=None))
    assert no_initrd.initrd == set() and no_initrd.kernel == {9}


def test_grub_string_whose_digest_disagrees_has_no_text() -> None:
    log = firmware(Log()).add(4, APP, b"grub")
    log.add(8, IPL, b"kernel_cmdline: /vmlinuz root=/dev/sda1\0", measured=b"/vmlinuz init=/bin/sh")
    b = binding(log)
    assert b.cmdline == {8} and b.cmdline_text is None
    assert el.cmdline_matches(b, "BOOT_IMAGE=/vmlinuz root=/dev/sda1") is False
    assert el.cmdline_matches(b, "BOOT_IMAGE=/vmlinuz init=/bin/sh") is True  # the digest rules


def test_systemd_stub_binding() -> None:
    b = binding(sdstub_log())
    assert (b.boot_path, b.kernel, b.initrd, b.cmdline) == ("systemd-stub", {11}, {11}, {12})
    assert b.cmdline_text == "root=/dev/vda ro"
    assert el.cmdline_matches(b, "root=/dev/vda ro\n") is True
    assert el.cmdline_matches(b, "root=/dev/vda rw") is False
    problems = el.check_selection(b, DEFAULT)
    assert [(p.component, p.add) for p in problems] == [
        (el.Component.KERNEL, 11), (el.Component.INITRD, 11), (el.Component.CMDLINE, 12),
    ]  # fmt: skip
    assert el.check_selection(b, DEFAULT | {11, 12}) == []


def test_systemd_stub_with_cmdline_section_and_no_load_options() -> None:
    sections = {".linux": b"bz", ".cmdline": b"root=/dev/vda quiet\n", ".initrd": b"c"}
    b = binding(sdstub_log(cmdline=None, sections=sections))
    assert b.cmdline == {12} and b.cmdline_text is None
    assert any(".cmdline section" in n for n in b.notes)
    assert el.cmdline_matches(b, "root=/dev/vda quiet") is True
    assert el.cmdline_matches(b, "root=/dev/vda") is False
    bare = binding(sdstub_log(cmdline=None, sections={".linux": b"bz"}))
    assert bare.cmdline == {12} and el.cmdline_matches(bare, "x") is None


def test_systemd_stub_with_a_kernel_that_measures_too() -> None:
    """The kernel's own stub measures exactly what the kernel got: it is the nearest."""
    b = binding(sdstub_log(kernel_tags=True))
    assert b.boot_path == "systemd-stub+efi-stub"
    assert (b.kernel, b.initrd, b.cmdline) == ({11}, {9}, {9})
    assert el.cmdline_matches(b, "root=/dev/vda ro") is True
    assert dict(b.measured_by)[el.Component.KERNEL] == el.BootPath.SYSTEMD_STUB


@pytest.mark.parametrize("legacy", [False, True])
def test_seabios_measures_nothing(legacy: bool) -> None:
    b = binding(seabios_log(legacy=legacy))
    assert b.boot_path == "not-measured"
    assert (b.kernel, b.initrd, b.cmdline, b.loader) == (set(), set(), set(), set())
    assert el.cmdline_matches(b, "root=/dev/sda1") is None
    problems = el.check_selection(b, set(range(24)))
    assert [p.kind for p in problems] == [el.ProblemKind.NOT_MEASURED] * 4
    assert problems[0].message == (
        "the kernel is not measured on this boot path (not-measured): no PCR can bind it"
    )


def test_a_log_without_the_known_layers_is_not_measured() -> None:
    """An unknown boot loader: PCR 4 names it, but nothing says what it measured."""
    log = firmware(Log()).add(4, APP, b"unknown loader").add(8, IPL, b"linux /vmlinuz\0")
    b = binding(log)
    assert b.boot_path == "not-measured" and b.loader == {4}
    assert (b.kernel, b.initrd, b.cmdline) == (set(), set(), set())


def test_not_measured_binding_for_a_missing_log() -> None:
    b = el.Binding.not_measured("no event log")
    assert b.notes == ("no event log",) and el.cmdline_matches(b, "x") is None
    assert len(el.check_selection(b, DEFAULT)) == 4


def test_verified_pcrs_must_match_the_log() -> None:
    b = binding(efistub_log())
    problems = el.check_selection(b, DEFAULT, verified={0, 2, 4, 7})
    assert [(p.component, p.kind) for p in problems] == [
        (el.Component.INITRD, el.ProblemKind.LOG_MISMATCH),
        (el.Component.CMDLINE, el.ProblemKind.LOG_MISMATCH),
    ]
    assert "does not match the event log" in problems[0].message


def test_cmdline_needs_every_bank_to_agree() -> None:
    log = efistub_log(banks=("sha1", "sha256"))
    b = binding(log)
    [m] = b.cmdline_measurements
    forged = dataclasses.replace(m, digests=(m.digests[0], ("sha256", bytes(32))))
    forged_binding = dataclasses.replace(b, cmdline_measurements=(forged,))
    assert el.cmdline_matches(b, "console=ttyS0 root=/dev/vda initrd=initrd") is True
    assert el.cmdline_matches(forged_binding, "console=ttyS0 root=/dev/vda initrd=initrd") is False


def test_to_json() -> None:
    b = binding(grub_log(banks=("sha1", "sha256")))
    doc = json.loads(json.dumps(b.to_json()))
    assert doc["boot_path"] == "grub"
    assert (doc["kernel"], doc["initrd"], doc["cmdline"], doc["loader"]) == ([9], [9], [8], [4])
    assert doc["measured_by"] == {
        "kernel": "grub", "initrd": "grub", "cmdline": "grub", "loader": "firmware",
    }  # fmt: skip
    [m] = doc["cmdline_measurements"]
    assert m["pcr"] == 8 and set(m["digests"]) == {"sha1", "sha256"}
    problem = el.check_selection(b, DEFAULT)[0].to_json()
    assert problem == {
        "component": "cmdline", "kind": "not-selected", "add": 8,
        "message": "the command line is measured into PCR 8 (grub) but tpm.pcrs does not include it: add 8",
    }  # fmt: skip


def test_eventlog_imports_only_the_stdlib_and_errors() -> None:
    """The event log parser runs on hostile bytes: stdlib and recover.errors only (the
    rules of the whole core: tests/unit/test_layers.py)."""
    banned = {"socket", "subprocess", "argparse", "asyncio", "ctypes"}
    for path in (Path(el.__file__),):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert name == "recover.errors" or (
                    top in sys.stdlib_module_names and top not in banned
                ), f"{path.name} imports {name}"


# --- real captures (OVMF + swtpm, sha1/sha256/sha384) ------------------------------------


@pytest.mark.parametrize("name", ["efistub", "grub"])
def test_real_log_replays_to_the_pcrs_read_at_the_same_boot(name: str) -> None:
    raw, pcrs, _ = read_capture(name)
    log = el.parse_event_log(raw)
    assert log.format == "crypto-agile" and log.banks == ("sha1", "sha256", "sha384")
    cmp = el.compare(log, pcrs)
    for bank in log.banks:
        # PCR 10 is IMA's (measured by Linux, not in the firmware's log)
        assert cmp.matching_pcrs(bank) == set(range(24)) - {10}, bank
        assert el.replay(log)[bank][9] == pcrs[bank][9]


def test_real_efistub_capture() -> None:
    raw, pcrs, proc_cmdline = read_capture("efistub")
    b = el.binding_from_log(raw)
    assert (b.boot_path, b.kernel, b.initrd, b.cmdline, b.loader) == (
        "efi-stub", {4}, {9}, {9}, {4},
    )  # fmt: skip
    assert proc_cmdline.rstrip("\n").endswith(" initrd=initrd")  # OVMF appends it
    assert el.cmdline_matches(b, proc_cmdline) is True
    assert el.cmdline_matches(b, proc_cmdline.replace("quiet", "quiet rd.break")) is False
    assert el.check_selection(b, DEFAULT, verified=set(range(24)) - {10}) == []


def test_real_grub_capture() -> None:
    raw, pcrs, proc_cmdline = read_capture("grub")
    b = el.binding_from_log(raw)
    assert (b.boot_path, b.kernel, b.initrd, b.cmdline, b.loader) == (
        "grub", {9}, {9}, {8}, {4},
    )  # fmt: skip
    assert proc_cmdline.startswith("BOOT_IMAGE=/vmlinuz ")
    assert b.cmdline_text == proc_cmdline.rstrip("\n").removeprefix("BOOT_IMAGE=")
    assert el.cmdline_matches(b, proc_cmdline) is True
    assert el.cmdline_matches(b, proc_cmdline.rstrip("\n") + " rd.host_recover=0") is False
    [problem] = el.check_selection(b, DEFAULT)
    assert problem.add == 8 and "PCR 8 (grub)" in problem.message


def test_real_grub_without_secure_boot_gives_linux_no_log() -> None:
    """Debian's GRUB 'linux' without Secure Boot exits boot services itself: PCR 8 and 9
    were extended, but Linux has no log to say by what (so: not measured)."""
    raw, pcrs, proc_cmdline = read_capture("grub-legacy")
    assert raw == b"" and "empty log" in str(_error(raw))
    assert pcrs["sha256"][8] != bytes(32) and pcrs["sha256"][9] != bytes(32)
    assert proc_cmdline.startswith("BOOT_IMAGE=/vmlinuz ")
