"""The TPM event log: parse it, replay it, and say which PCR measures what. Pure.

Linux exports the firmware's TCG PC Client event log at ``EVENT_LOG_PATH``: a
crypto-agile log (a SHA1-format ``Spec ID Event03`` header, then ``TCG_PCR_EVENT2``
records with one digest per bank) or a legacy SHA1-only log. This module

- parses it strictly and within fixed bounds (``parse_event_log``): anything malformed
  is an ``EventLogError`` (an ``IntegrityError``) with what is wrong and at which offset;
- replays it into the PCR values it predicts (``replay``) and compares those with the
  TPM's (``compare``): only PCRs whose replay matches can be vouched for by the log;
- classifies the boot path and which PCRs measure the kernel, the initramfs and the
  kernel command line (``classify`` -> ``Binding``): the Linux EFI stub (PCR 4 + tagged
  events in PCR 9), GRUB (strings in PCR 8, files in PCR 9), systemd-stub (PCR 11/12).
  Anything else is "not measured": nothing is assumed;
- checks a PCR selection against that (``check_selection``) and /proc/cmdline against
  the measured command line (``cmdline_matches``).

The reader of the file (a size-capped read of ``EVENT_LOG_PATH``) lives at the edge.
Event types, tags and strings per boot path, with their sources: docs/measured-boot.md.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import struct
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from recover.errors import IntegrityError

EVENT_LOG_PATH = "/sys/kernel/security/tpm0/binary_bios_measurements"
MAX_LOG_SIZE = 16 << 20  # a real log is a few KB to a few hundred KB
MAX_EVENT_SIZE = 1 << 20
MAX_DIGESTS = 8
NUM_PCRS = 24

#: TCG algorithm id -> (hashlib name, digest size). Other ids are rejected.
ALGORITHMS: dict[int, tuple[str, int]] = {
    0x0004: ("sha1", 20),
    0x000B: ("sha256", 32),
    0x000C: ("sha384", 48),
    0x000D: ("sha512", 64),
    0x0012: ("sm3_256", 32),
}


class EventType(enum.IntEnum):
    """TCG PC Client Platform Firmware Profile event types (those this module names)."""

    EV_PREBOOT_CERT = 0x0
    EV_POST_CODE = 0x1
    EV_NO_ACTION = 0x3
    EV_SEPARATOR = 0x4
    EV_ACTION = 0x5
    EV_EVENT_TAG = 0x6
    EV_S_CRTM_CONTENTS = 0x7
    EV_S_CRTM_VERSION = 0x8
    EV_CPU_MICROCODE = 0x9
    EV_PLATFORM_CONFIG_FLAGS = 0xA
    EV_TABLE_OF_DEVICES = 0xB
    EV_COMPACT_HASH = 0xC
    EV_IPL = 0xD
    EV_IPL_PARTITION_DATA = 0xE
    EV_NONHOST_CODE = 0xF
    EV_NONHOST_CONFIG = 0x10
    EV_NONHOST_INFO = 0x11
    EV_OMIT_BOOT_DEVICE_EVENTS = 0x12
    EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
    EV_EFI_VARIABLE_BOOT = 0x80000002
    EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
    EV_EFI_BOOT_SERVICES_DRIVER = 0x80000004
    EV_EFI_RUNTIME_SERVICES_DRIVER = 0x80000005
    EV_EFI_GPT_EVENT = 0x80000006
    EV_EFI_ACTION = 0x80000007
    EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x80000008
    EV_EFI_HANDOFF_TABLES = 0x80000009
    EV_EFI_PLATFORM_FIRMWARE_BLOB2 = 0x8000000A
    EV_EFI_HANDOFF_TABLES2 = 0x8000000B
    EV_EFI_VARIABLE_BOOT2 = 0x8000000C
    EV_EFI_HCRTM_EVENT = 0x80000010
    EV_EFI_VARIABLE_AUTHORITY = 0x800000E0
    EV_EFI_SPDM_FIRMWARE_BLOB = 0x800000E1
    EV_EFI_SPDM_FIRMWARE_CONFIG = 0x800000E2


#: Linux EFI stub (drivers/firmware/efi/libstub/efistub.h): EV_EVENT_TAG ids in PCR 9.
LINUX_EFI_INITRD_EVENT_TAG_ID = 0x8F3B22EC
LINUX_EFI_LOAD_OPTIONS_EVENT_TAG_ID = 0x8F3B22ED
#: GRUB (grub-core/commands/tpm.c): prefixes of the EV_IPL strings in PCR 8.
GRUB_STRING_PREFIXES = ("grub_cmd: ", "kernel_cmdline: ", "module_cmdline: ")
#: systemd-stub (src/boot/efi/stub.c, src/fundamental/uki.h): PE sections measured into PCR 11.
UKI_SECTIONS = frozenset(
    {".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname",
     ".sbat", ".pcrpkey", ".profile", ".dtbauto", ".hwids", ".efifw"}
)  # fmt: skip

_SPEC_ID_03 = b"Spec ID Event03\0"
_STARTUP_LOCALITY = b"StartupLocality\0"


class EventLogError(IntegrityError):
    """The event log is malformed (or not a TCG PC Client log at all)."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(
            f"event log: {message} at offset {offset:#x}",
            hint=f"{EVENT_LOG_PATH} must be a TCG PC Client event log",
        )
        self.offset = offset


def event_type_name(value: int) -> str:
    try:
        return EventType(value).name
    except ValueError:
        return f"{value:#010x}"


@dataclasses.dataclass(frozen=True)
class Event:
    """One measurement: extended into ``pcr`` of every bank, unless EV_NO_ACTION."""

    offset: int
    pcr: int
    type: int
    digests: tuple[tuple[str, bytes], ...]  # (bank, digest), in log order
    data: bytes

    def digest(self, bank: str) -> bytes | None:
        return next((d for alg, d in self.digests if alg == bank), None)


@dataclasses.dataclass(frozen=True)
class EventLog:
    """A parsed TCG event log: its format, its hash banks and its events."""

    format: str  # "crypto-agile" or "sha1"
    banks: tuple[str, ...]
    events: tuple[Event, ...]  # the crypto-agile header event is not among them
    startup_locality: int | None = None


class _Reader:
    def __init__(self, data: bytes, base: int = 0) -> None:
        self.data = data
        self.pos = 0
        self.base = base  # where data starts in the log, for the offsets in errors

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.left():
            raise EventLogError(
                f"truncated {what}: needs {n} bytes, {self.left()} left", self.base + self.pos
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.take(4, what))[0])

    def u16(self, what: str) -> int:
        return int(struct.unpack("<H", self.take(2, what))[0])


def _pcr_index(r: _Reader, start: int) -> int:
    pcr = r.u32("event header")
    if pcr >= NUM_PCRS:
        raise EventLogError(f"PCR index {pcr} out of range 0..{NUM_PCRS - 1}", start)
    return pcr


def _event_data(r: _Reader) -> bytes:
    at = r.pos
    size = r.u32("event size")
    if size > MAX_EVENT_SIZE:
        raise EventLogError(f"event data of {size} bytes exceeds the {MAX_EVENT_SIZE} cap", at)
    return r.take(size, "event data")


def _sha1_event(r: _Reader) -> Event:
    start = r.pos
    pcr = _pcr_index(r, start)
    etype = r.u32("event header")
    digest = r.take(20, "SHA1 digest")
    return Event(start, pcr, etype, (("sha1", digest),), _event_data(r))


def _spec_id_banks(data: bytes, offset: int) -> tuple[tuple[int, str, int], ...]:
    """TCG_EfiSpecIDEventStruct -> ((alg id, name, size), ...), fully validated."""
    r = _Reader(data, offset + 32)  # after the header's pcr, type, SHA1 digest and size
    r.take(16, "Spec ID signature")
    r.take(4, "Spec ID platform class")
    _minor, major, _errata, uintn = r.take(4, "Spec ID version")
    if major != 2 or uintn not in (1, 2):
        raise EventLogError(f"Spec ID Event03 with version {major}, uintnSize {uintn}", offset)
    count = r.u32("Spec ID algorithm count")
    if not 1 <= count <= MAX_DIGESTS:
        raise EventLogError(f"Spec ID declares {count} algorithms (1..{MAX_DIGESTS})", offset)
    banks: list[tuple[int, str, int]] = []
    for _ in range(count):
        alg, size = r.u16("Spec ID algorithm"), r.u16("Spec ID digest size")
        known = ALGORITHMS.get(alg)
        if known is None:
            raise EventLogError(
                f"unknown digest algorithm {alg:#06x} in the Spec ID header", offset
            )
        if size != known[1] or any(b[0] == alg for b in banks):
            raise EventLogError(f"bad or repeated {known[0]} entry in the Spec ID header", offset)
        banks.append((alg, known[0], size))
    vendor = r.take(1, "Spec ID vendor info size")[0]
    r.take(vendor, "Spec ID vendor info")
    if r.left():
        raise EventLogError(f"{r.left()} stray bytes after the Spec ID header", offset)
    return tuple(banks)


def _agile_event(r: _Reader, banks: tuple[tuple[int, str, int], ...]) -> Event:
    start = r.pos
    pcr = _pcr_index(r, start)
    etype = r.u32("event header")
    count = r.u32("digest count")
    if count == 0:
        raise EventLogError("event with zero digests", start)
    if count > MAX_DIGESTS:
        raise EventLogError(f"event with {count} digests (at most {MAX_DIGESTS})", start)
    by_id = {alg: (name, size) for alg, name, size in banks}
    digests: list[tuple[str, bytes]] = []
    for _ in range(count):
        at = r.pos
        alg = r.u16("digest algorithm")
        if alg not in by_id:
            raise EventLogError(f"digest algorithm {alg:#06x} not declared in the header", at)
        name, size = by_id[alg]
        if any(d[0] == name for d in digests):
            raise EventLogError(f"{name} digest given twice", at)
        digests.append((name, r.take(size, f"{name} digest")))
    if len(digests) != len(banks):
        missing = sorted({b[1] for b in banks} - {d[0] for d in digests})
        raise EventLogError(f"event lacks the {', '.join(missing)} digest", start)
    return Event(start, pcr, etype, tuple(digests), _event_data(r))


def parse_event_log(data: bytes) -> EventLog:
    """Parse a whole log (crypto-agile or legacy SHA1). Bounded: every record consumes
    at least 32 bytes and nothing is larger than the caps."""
    if len(data) > MAX_LOG_SIZE:
        raise EventLogError(f"log of {len(data)} bytes exceeds the {MAX_LOG_SIZE} cap", 0)
    if not data:
        raise EventLogError("empty log", 0)
    r = _Reader(bytes(data))
    first = _sha1_event(r)
    events: list[Event] = []
    if first.type == EventType.EV_NO_ACTION and first.data.startswith(_SPEC_ID_03):
        banks = _spec_id_banks(first.data, first.offset)
        fmt, names = "crypto-agile", tuple(b[1] for b in banks)
        while r.left():
            events.append(_agile_event(r, banks))
    else:
        fmt, names = "sha1", ("sha1",)
        events.append(first)
        while r.left():
            events.append(_sha1_event(r))
    locality = None
    for ev in events:
        if ev.type == EventType.EV_NO_ACTION and ev.data.startswith(_STARTUP_LOCALITY):
            if locality is not None or len(ev.data) != 17 or ev.pcr != 0 or ev.data[16] > 4:
                raise EventLogError("bad or repeated StartupLocality event", ev.offset)
            locality = ev.data[16]
    return EventLog(fmt, names, tuple(events), locality)


# --- replay -------------------------------------------------------------------------


def _hash(bank: str, data: bytes) -> bytes | None:
    try:
        return hashlib.new(bank, data).digest()
    except ValueError:  # e.g. sm3_256 where OpenSSL lacks it
        return None


def initial_value(bank: str, pcr: int, locality: int | None = None) -> bytes:
    """A PCR's value after TPM2_Startup: zeros (17..22: ones); PCR 0 ends with the
    startup locality when the log has a StartupLocality event."""
    size = next(s for n, s in ALGORITHMS.values() if n == bank)
    if 17 <= pcr <= 22:
        return b"\xff" * size
    if pcr == 0 and locality:
        return bytes(size - 1) + bytes([locality])
    return bytes(size)


def replay(log: EventLog) -> dict[str, dict[int, bytes]]:
    """Expected values per bank of every PCR the log extends (new = H(old || digest)).
    Banks this Python cannot hash are left out."""
    out: dict[str, dict[int, bytes]] = {}
    for bank in log.banks:
        if _hash(bank, b"") is None:
            continue
        pcrs: dict[int, bytes] = {}
        for ev in log.events:
            digest = ev.digest(bank)
            if ev.type == EventType.EV_NO_ACTION or digest is None:
                continue
            old = pcrs.get(ev.pcr) or initial_value(bank, ev.pcr, log.startup_locality)
            pcrs[ev.pcr] = hashlib.new(bank, old + digest).digest()
        out[bank] = pcrs
    return out


@dataclasses.dataclass(frozen=True)
class PcrComparison:
    """Which of the TPM's PCR values the log explains, per bank."""

    matching: Mapping[str, frozenset[int]]
    mismatching: Mapping[str, frozenset[int]]
    banks_not_in_log: tuple[str, ...] = ()

    def matching_pcrs(self, bank: str) -> frozenset[int]:
        return self.matching.get(bank, frozenset())

    def to_json(self) -> dict[str, Any]:
        return {
            "matching": {b: sorted(p) for b, p in self.matching.items()},
            "mismatching": {b: sorted(p) for b, p in self.mismatching.items()},
            "banks_not_in_log": list(self.banks_not_in_log),
        }


def compare(log: EventLog, current: Mapping[str, Mapping[int, bytes]]) -> PcrComparison:
    """Compare the TPM's values (bank -> {pcr: value}) with the log's replay. A PCR the
    log never extends is expected at its reset value (so PCR 10 with IMA mismatches)."""
    expected = replay(log)
    good: dict[str, frozenset[int]] = {}
    bad: dict[str, frozenset[int]] = {}
    absent: list[str] = []
    for bank, values in current.items():
        if bank not in expected:
            absent.append(bank)
            continue
        ok = {
            p
            for p, v in values.items()
            if expected[bank].get(p, initial_value(bank, p, log.startup_locality)) == bytes(v)
        }
        good[bank] = frozenset(ok)
        bad[bank] = frozenset(set(values) - ok)
    return PcrComparison(good, bad, tuple(absent))


# --- what is measured where ---------------------------------------------------------


class Component(enum.StrEnum):
    KERNEL = "kernel"
    INITRD = "initrd"
    CMDLINE = "cmdline"
    # The EFI applications the firmware started (GRUB, a UKI, the kernel itself): the code
    # that measured the rest. Without it bound, a substitute could replay those values.
    LOADER = "loader"


LABELS = {
    Component.KERNEL: "kernel",
    Component.INITRD: "initramfs",
    Component.CMDLINE: "command line",
    Component.LOADER: "boot loader",
}


class BootPath(enum.StrEnum):
    """The measuring layers, in boot order (the nearest to the kernel is last)."""

    FIRMWARE = "firmware"  # measures the EFI applications it loads (never a boot path)
    GRUB = "grub"
    SYSTEMD_STUB = "systemd-stub"
    EFI_STUB = "efi-stub"
    NOT_MEASURED = "not-measured"


@dataclasses.dataclass(frozen=True)
class CmdlineMeasurement:
    """One measured command line: where, by whom, its digests, its text if the event
    carries it and the digest proves it."""

    pcr: int
    source: str  # "efi-stub" | "grub" | "systemd-stub" | "systemd-stub-section"
    digests: tuple[tuple[str, bytes], ...]
    text: str | None


@dataclasses.dataclass(frozen=True)
class Binding:
    """Which PCRs measure the kernel, the initramfs and the command line on this boot
    (any one of a component's PCRs binds it); empty = not measured on this path."""

    boot_path: str
    kernel: frozenset[int]
    initrd: frozenset[int]
    cmdline: frozenset[int]
    cmdline_text: str | None
    loader: frozenset[int] = frozenset()
    notes: tuple[str, ...] = ()
    measured_by: tuple[tuple[Component, BootPath], ...] = ()
    cmdline_measurements: tuple[CmdlineMeasurement, ...] = ()

    @classmethod
    def not_measured(cls, note: str) -> Binding:
        """For a boot without an event log (no TPM, SeaBIOS, GRUB's non-EFI handoff)."""
        e: frozenset[int] = frozenset()
        return cls(BootPath.NOT_MEASURED.value, e, e, e, None, e, (note,))

    def pcrs(self, component: Component) -> frozenset[int]:
        return {
            Component.KERNEL: self.kernel,
            Component.INITRD: self.initrd,
            Component.CMDLINE: self.cmdline,
            Component.LOADER: self.loader,
        }[component]

    def source(self, component: Component) -> BootPath | None:
        return dict(self.measured_by).get(component)

    def to_json(self) -> dict[str, Any]:
        return {
            "boot_path": self.boot_path,
            "kernel": sorted(self.kernel),
            "initrd": sorted(self.initrd),
            "cmdline": sorted(self.cmdline),
            "cmdline_text": self.cmdline_text,
            "loader": sorted(self.loader),
            "measured_by": {c.value: p.value for c, p in self.measured_by},
            "cmdline_measurements": [
                {
                    "pcr": m.pcr,
                    "source": m.source,
                    "text": m.text,
                    "digests": {b: d.hex() for b, d in m.digests},
                }
                for m in self.cmdline_measurements
            ],
            "notes": list(self.notes),
        }


def _cstring(data: bytes) -> str | None:
    """A NUL-terminated UTF-8 string with no other NUL, else None."""
    if not data.endswith(b"\0") or b"\0" in data[:-1]:
        return None
    try:
        return data[:-1].decode("utf-8")
    except UnicodeDecodeError:
        return None


def _utf16z(data: bytes) -> str | None:
    """A NUL-terminated UTF-16LE string with no other NUL, else None."""
    if len(data) % 2 or not data.endswith(b"\0\0"):
        return None
    try:
        text = data[:-2].decode("utf-16-le")
    except UnicodeDecodeError:
        return None
    return None if "\0" in text else text


def _proves(ev: Event, preimage: bytes) -> bool:
    """Every digest we can compute equals H(preimage), and we can compute one."""
    results = [_hash(bank, preimage) == d for bank, d in ev.digests if _hash(bank, b"") is not None]
    return bool(results) and all(results)


def _tag(ev: Event) -> int | None:
    if ev.type != EventType.EV_EVENT_TAG or len(ev.data) < 8:
        return None
    tag_id, size = struct.unpack_from("<II", ev.data)
    return int(tag_id) if size <= len(ev.data) - 8 else None


def _description(ev: Event) -> str | None:
    return _cstring(ev.data) if ev.data[-2:-1] != b"\0" else _utf16z(ev.data)


@dataclasses.dataclass(frozen=True)
class GrubEvents:
    """GRUB's EV_IPL events, by index in the log (grub-core/commands/tpm.c): ``files``
    (index, path) of every file it measured (an EV_IPL whose text is not one of its
    strings); ``commands`` (index, words) of every ``grub_cmd: `` string, the prefix
    removed; ``cmdlines`` (index, text) of every ``kernel_cmdline: `` string, likewise."""

    files: tuple[tuple[int, str], ...]
    commands: tuple[tuple[int, tuple[str, ...]], ...]
    cmdlines: tuple[tuple[int, str], ...]


def grub_events(events: Sequence[Event]) -> GrubEvents:
    files: list[tuple[int, str]] = []
    commands: list[tuple[int, tuple[str, ...]]] = []
    cmdlines: list[tuple[int, str]] = []
    for i, e in enumerate(events):
        text = _description(e) if e.type == EventType.EV_IPL else None
        if text is None:
            continue
        if text.startswith("grub_cmd: "):
            commands.append((i, tuple(text.removeprefix("grub_cmd: ").split())))
        elif text.startswith("kernel_cmdline: "):
            cmdlines.append((i, text.removeprefix("kernel_cmdline: ")))
        elif not text.startswith(GRUB_STRING_PREFIXES):
            files.append((i, text))
    return GrubEvents(tuple(files), tuple(commands), tuple(cmdlines))


_Found = dict[Component, tuple[BootPath, frozenset[int]]]


def classify(log: EventLog) -> Binding:
    """Which PCRs measure the kernel, the initramfs and the command line. For each, the
    layer nearest the kernel that measured it counts (EFI stub, then systemd-stub, then
    GRUB); a layer that did not measure something never stands in for another."""
    ipl = [(e, _description(e)) for e in log.events if e.type == EventType.EV_IPL]
    # GRUB: "grub_cmd: ..." and "kernel_cmdline: ..." (digest = H(text after prefix)).
    grub = [(e, t) for e, t in ipl if t and t.startswith(GRUB_STRING_PREFIXES)]
    # systemd-stub: UKI section names in PCR 11; load options (the event data is the
    # measured UTF-16 string itself) in PCR 12 (PCR 8 before systemd 251).
    sections = [(e, t) for e, t in ipl if t in UKI_SECTIONS]
    sd_options = [
        (e, t)
        for e, t in ipl
        if t is not None and e.data[-2:] == b"\0\0" and t not in UKI_SECTIONS and _proves(e, e.data)
    ]
    # Linux EFI stub: EV_EVENT_TAG in PCR 9; the digest is of the loaded bytes.
    initrd_tags = [e for e in log.events if _tag(e) == LINUX_EFI_INITRD_EVENT_TAG_ID]
    option_tags = [e for e in log.events if _tag(e) == LINUX_EFI_LOAD_OPTIONS_EVENT_TAG_ID]
    found = [
        p
        for p, present in (
            (BootPath.GRUB, grub),
            (BootPath.SYSTEMD_STUB, sections or sd_options),
            (BootPath.EFI_STUB, initrd_tags or option_tags),
        )
        if present
    ]
    boot_path = "+".join(p.value for p in found) or BootPath.NOT_MEASURED.value
    by: _Found = {}
    cmdline: list[CmdlineMeasurement] = []
    notes: list[str] = []
    apps = [e for e in log.events if e.type == EventType.EV_EFI_BOOT_SERVICES_APPLICATION]
    if apps:  # PCR 4 (TCG PC Client PFP): every EFI application the firmware loads
        by[Component.LOADER] = (BootPath.FIRMWARE, frozenset(e.pcr for e in apps))
    # Farthest layer first: nearer layers overwrite what they also measured.
    if grub:
        cmdline = _grub(log.events, by, notes) or cmdline
    if sections or sd_options:
        cmdline = _systemd_stub(sections, sd_options, by, notes)
    if initrd_tags or option_tags:
        cmdline = _efi_stub(log.events, initrd_tags, option_tags, by, notes, found) or cmdline
    for c in Component:
        if c not in by:
            notes.append(f"{LABELS[c]} not measured ({boot_path})")
    none: tuple[BootPath, frozenset[int]] = (BootPath.NOT_MEASURED, frozenset())
    return Binding(
        boot_path=boot_path,
        kernel=by.get(Component.KERNEL, none)[1],
        initrd=by.get(Component.INITRD, none)[1],
        cmdline=by.get(Component.CMDLINE, none)[1],
        cmdline_text=cmdline[-1].text if cmdline else None,
        loader=by.get(Component.LOADER, none)[1],
        notes=tuple(notes),
        measured_by=tuple((c, by[c][0]) for c in Component if c in by),
        cmdline_measurements=tuple(cmdline),
    )


def _grub(events: Sequence[Event], by: _Found, notes: list[str]) -> list[CmdlineMeasurement]:
    """GRUB's kernel and initrd are the files named by its last linux/initrd commands,
    each measured as an EV_IPL whose data is the path; the command line is the last
    "kernel_cmdline: " string (the kernel's path, then its arguments)."""
    g = grub_events(events)
    if g.cmdlines and g.cmdlines[-1][1].split():
        kernel = g.cmdlines[-1][1].split()[0]
        if pcrs := frozenset(events[i].pcr for i, t in g.files if t == kernel):
            by[Component.KERNEL] = (BootPath.GRUB, pcrs)
    initrds = [w[1:] for _, w in g.commands if len(w) > 1 and w[0] in ("initrd", "initrdefi")]
    if initrds:
        per_file = [
            frozenset(events[i].pcr for i, t in g.files if t == path) for path in initrds[-1]
        ]
        if common := frozenset.intersection(*per_file):
            by[Component.INITRD] = (BootPath.GRUB, common)
        else:
            notes.append("GRUB loaded an initrd file it did not measure")
    if not g.cmdlines:
        return []
    i, text = g.cmdlines[-1]
    e = events[i]
    by[Component.CMDLINE] = (BootPath.GRUB, frozenset({e.pcr}))
    proven = text if _proves(e, text.encode("utf-8")) else None
    return [CmdlineMeasurement(e.pcr, BootPath.GRUB.value, e.digests, proven)]


def _systemd_stub(
    sections: Sequence[tuple[Event, str | None]],
    options: Sequence[tuple[Event, str | None]],
    by: _Found,
    notes: list[str],
) -> list[CmdlineMeasurement]:
    """Each UKI section is measured into PCR 11 twice (its name, then its content, both
    described by the name); load options the stub uses are measured into PCR 12."""
    names = {t for _, t in sections}
    if ".linux" in names:
        by[Component.KERNEL] = (BootPath.SYSTEMD_STUB, _pcrs(sections, ".linux"))
    if ".initrd" in names:
        by[Component.INITRD] = (BootPath.SYSTEMD_STUB, _pcrs(sections, ".initrd"))
        notes.append("systemd-stub measures only the UKI's embedded .initrd")
    if options:
        e, text = options[-1]
        by[Component.CMDLINE] = (BootPath.SYSTEMD_STUB, frozenset({e.pcr}))
        return [CmdlineMeasurement(e.pcr, BootPath.SYSTEMD_STUB.value, e.digests, text)]
    # No load options used: had there been any, they would be in PCR 12, so PCR 12 binds
    # their absence; the command line is then the .cmdline section (PCR 11), if any.
    by[Component.CMDLINE] = (BootPath.SYSTEMD_STUB, frozenset({12}))
    content = [e for e, t in sections if t == ".cmdline" and not _proves(e, b".cmdline\0")]
    notes.append(
        "command line from the UKI's .cmdline section (PCR 11); PCR 12 binds that no other was passed"
        if content
        else "systemd-stub measured no command line; PCR 12 binds that none was passed"
    )
    return [
        CmdlineMeasurement(e.pcr, "systemd-stub-section", e.digests, None) for e in content[-1:]
    ]


def _efi_stub(
    events: tuple[Event, ...],
    initrd_tags: list[Event],
    option_tags: list[Event],
    by: _Found,
    notes: list[str],
    found: list[BootPath],
) -> list[CmdlineMeasurement]:
    """The stub measures the initrd it loads through LoadFile2 and, when entered as an
    EFI image (not through the handover protocol), its UTF-16 load options: both as
    tagged events whose digest is of the bytes; the text itself is not logged."""
    if initrd_tags:
        by[Component.INITRD] = (BootPath.EFI_STUB, frozenset({initrd_tags[-1].pcr}))
    if not option_tags:
        notes.append("the EFI stub measured the initrd but no load options")
        return []
    e = option_tags[-1]
    by[Component.CMDLINE] = (BootPath.EFI_STUB, frozenset({e.pcr}))
    # Entered as an EFI image: LoadImage measured that image (the kernel) into PCR 4.
    apps = [
        a.pcr
        for a in events[: events.index(e)]
        if a.type == EventType.EV_EFI_BOOT_SERVICES_APPLICATION
    ]
    if apps and BootPath.SYSTEMD_STUB not in found:
        by[Component.KERNEL] = (BootPath.EFI_STUB, frozenset(apps[-1:]))
    return [CmdlineMeasurement(e.pcr, BootPath.EFI_STUB.value, e.digests, None)]


def _pcrs(events: Sequence[tuple[Event, str | None]], name: str) -> frozenset[int]:
    return frozenset(e.pcr for e, t in events if t == name)


# --- checks -------------------------------------------------------------------------


class ProblemKind(enum.StrEnum):
    NOT_MEASURED = "not-measured"  # no PCR can bind it on this boot path
    NOT_SELECTED = "not-selected"  # measured, but not into a selected PCR
    LOG_MISMATCH = "log-mismatch"  # selected, but the TPM's value does not match the log


@dataclasses.dataclass(frozen=True)
class Problem:
    """Why a component of the measured boot cannot be bound by the selected PCRs."""

    component: Component
    kind: ProblemKind
    message: str
    add: int | None = None  # the PCR to add, for NOT_SELECTED

    def to_json(self) -> dict[str, Any]:
        return {"component": self.component.value, "kind": self.kind.value,
                "message": self.message, "add": self.add}  # fmt: skip


def check_selection(
    binding: Binding,
    selected_pcrs: Collection[int],
    *,
    verified: Collection[int] | None = None,
    setting: str = "tpm.pcrs",
) -> list[Problem]:
    """Is each of kernel, initramfs and command line bound by a selected PCR? With
    ``verified`` (the PCRs whose TPM value matched the replay, e.g. from ``compare``),
    a selected PCR only counts if the log vouches for it. Empty list = all bound."""
    selected = frozenset(selected_pcrs)
    problems: list[Problem] = []
    for c in Component:
        pcrs, label = binding.pcrs(c), LABELS[c]
        src = binding.source(c)
        where = f"PCR {'/'.join(str(p) for p in sorted(pcrs))} ({src.value if src else '?'})"
        if not pcrs:
            problems.append(Problem(c, ProblemKind.NOT_MEASURED,
                f"the {label} is not measured on this boot path ({binding.boot_path}): "
                "no PCR can bind it"))  # fmt: skip
        elif not pcrs & selected:
            add = min(pcrs)
            problems.append(Problem(c, ProblemKind.NOT_SELECTED,
                f"the {label} is measured into {where} but {setting} does not include it: "
                f"add {add}", add))  # fmt: skip
        elif verified is not None and not pcrs & selected & frozenset(verified):
            problems.append(Problem(c, ProblemKind.LOG_MISMATCH,
                f"the {label} is measured into {where} but the TPM's value does not match "
                "the event log: the log cannot vouch for it"))  # fmt: skip
    return problems


def normalize_proc_cmdline(proc_cmdline: str) -> str:
    """/proc/cmdline as read: the kernel appends one newline; nothing else is changed."""
    return proc_cmdline.removesuffix("\n")


def _preimages(source: str, cmdline: str) -> list[bytes]:
    """What each layer hashed, given the command line the kernel ended up with."""
    if source == "efi-stub":  # UTF-16LE load options, as passed (OVMF: with the NUL)
        u16 = cmdline.encode("utf-16-le")
        return [u16 + b"\0\0", u16]
    if source == "grub":  # the kernel gets "BOOT_IMAGE=" + the measured text
        return [cmdline.removeprefix("BOOT_IMAGE=").encode("utf-8")]
    if source == "systemd-stub":  # the load options string, with its NUL
        return [cmdline.encode("utf-16-le") + b"\0\0"]
    raw = cmdline.encode("utf-8")  # a UKI's .cmdline section as stored
    return [raw, raw + b"\n", raw + b"\0", raw + b"\n\0"]


def cmdline_matches(binding: Binding, proc_cmdline: str) -> bool | None:
    """Is /proc/cmdline the command line the log measured? None when the log measured
    none. Compared by digest (every bank we can hash), not by the event's text."""
    if not binding.cmdline_measurements:
        return None
    cmdline = normalize_proc_cmdline(proc_cmdline)
    for m in binding.cmdline_measurements:
        ev = Event(0, m.pcr, EventType.EV_IPL, m.digests, b"")
        if not any(_proves(ev, pre) for pre in _preimages(m.source, cmdline)):
            return False
    return True


def binding_from_log(data: bytes) -> Binding:
    """Parse and classify in one step (the log must still be checked with ``compare``)."""
    return classify(parse_event_log(data))
