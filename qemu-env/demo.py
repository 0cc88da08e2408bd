"""`make demo`: a host and its peers lose power together; the host recovers.

Everything is real: Debian's kernel, a dracut 059 initramfs with our module and the
real payload, OVMF measured boot, one swtpm per host, peers as host-side agents with
their own swtpms, the encrypted recovery image and credential store on a disk. The
story is read from the guest's serial console and its decision record.

The lab is the importable package testing.qemu (installed with the project by
``make venv``): ``.venv/bin/python qemu-env/demo.py`` from the repository root.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from testing.qemu import harness
from testing.qemu import lab as labmod
from testing.qemu import vm as vmmod

BOLD, DIM, GREEN, RED, OFF = "\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m"
if not sys.stdout.isatty():
    BOLD = DIM = GREEN = RED = OFF = ""


def say(text: str) -> None:
    print(f"\n{BOLD}== {text}{OFF}", flush=True)


def item(text: str) -> None:
    print(f"   {text}", flush=True)


def show_record(res: labmod.BootResult) -> None:
    rec: dict[str, Any] = dict(res.record or {})
    ev = rec.get("evidence") or {}
    item(f"{BOLD}evidence{OFF}: {ev.get('summary')}")
    for s in ev.get("signals", []):
        item(f"  {s['name']:<18} {s['reading']:<9} {s['reason']}")
    peers = rec.get("peers") or {}
    if peers:
        item(f"{BOLD}peers{OFF} (attested answers, TPM quotes checked):")
        for r in peers.get("results", []):
            st = r.get("status") or {}
            head = f"  {r.get('peer', '?'):<7} {r.get('outcome', '?'):<9} "
            if not st:  # not asked to the end (verdict settled), or no usable answer
                item(f"{head}{'-':<9} {r.get('reason') or ''}")
                continue
            item(
                f"{head}{st.get('summary', '-'):<9} orderly={st.get('orderly')} "
                f"TPM reset {st.get('since_reset_s', '?')} s ago, rtt {r.get('rtt_ms')} ms"
            )
    v = rec.get("verdict") or {}
    item(f"{BOLD}verdict{OFF}: {v.get('kind')} → {v.get('action')}")
    for reason in v.get("reasons", []):
        item(f"  - {reason}")
    if rec.get("error"):
        item(f"{RED}error{OFF}: {rec['error']}")
    tl = rec.get("timeline_ms") or {}
    if tl:
        item("payload steps (ms): " + ", ".join(f"{k} {v}" for k, v in tl.items()))


def timeline(res: labmod.BootResult) -> None:
    prev = 0.0
    for name, t in res.phases.items():
        item(f"{t:7.2f} s  (+{t - prev:5.2f})  {name}")
        prev = t


def main() -> int:
    t0 = time.monotonic()
    say(f"Building: kernel, initramfs (dracut + host-recover), disks   [accel {vmmod.accel()}]")
    lab = labmod.Lab(harness.BUILD / "demo-lab", n_peers=3)
    try:
        item("peers peer1..peer3: provisioning their swtpms, attesting (AK + PCRs)")
        item("host: first boot provisions its TPM in the guest, encrypts the recovery image")
        lab.setup()
        assert lab.art is not None
        mib = 1 << 20
        item(f"initramfs {lab.art.initramfs.stat().st_size / mib:.1f} MiB; host attested as "
             f"{lab.host_entry and lab.host_entry['id']}; agents up on 127.0.0.1")  # fmt: skip

        say("1. A clean reboot: the host boots its normal root, nothing is unsealed")
        res = lab.boot("hold")
        show_record(res)
        item(f"booted: {BOLD}{res.root} root{OFF}")
        timeline(res)

        say("2. Power outage: the host and peer1 + peer2 lose power together (kill -9)")
        lab.power_cut(peers=2)
        item("host QEMU and swtpm killed; peer1, peer2 swtpms cut and restarted; peer3 up")

        say("3. The host reboots: evidence, peers' attested answers, verdict")
        res = lab.boot("poweroff")
        show_record(res)
        rec = res.record or {}
        item(
            f"unsealed + lock PCR extended: {rec.get('lock_pcr_extended')}; image "
            f"{(rec.get('image') or {}).get('size')} bytes verified, decrypted, mounted"
        )
        item(f"booted: {BOLD}{res.root} root{OFF}; credentials: {rec.get('credentials')}")
        ok = res.proof_ok
        colour = GREEN if ok else RED
        item(
            f"recovery service HMAC over the host's challenge: {colour}{'valid' if ok else 'INVALID'}{OFF}"
        )
        item(f"PCR 15 in the recovery root: {res.lock_pcr} (sealed policy needs 0)")
        timeline(res)

        say("4. Back to normal: the recovery root powered off cleanly; reboot")
        for p in lab.peers:
            p.clean_reboot()
        res2 = lab.boot("poweroff")
        v = (res2.record or {}).get("verdict") or {}
        item(f"verdict: {v.get('kind')} → booted: {BOLD}{res2.root} root{OFF}")
        timeline(res2)

        good = res.root == "recovery" and ok and res2.root == "normal"
        say(f"{GREEN}demo complete{OFF}" if good else f"{RED}demo FAILED{OFF}")
        item(f"{time.monotonic() - t0:.0f} s in all; consoles in {lab.dir / 'host'}")
        return 0 if good else 1
    finally:
        lab.close()


if __name__ == "__main__":
    sys.exit(main())
