"""The docs/performance.md section of bench/coldstart.py: its tables from a run's
``Results``, and the findings with this run's figures (``--write-docs`` writes it)."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from testing.importtime import group_self_times, top_level
from testing.tpmwire import command_name
from testing.trees import EXTRA_MODES, MODES, SITE

from bench.perfdoc import reproduce

if TYPE_CHECKING:
    from bench.coldstart import Results

SECTION = "## Payload cold start"
NOFAPI = "`import tpm2_pytss`, tpm2-pytss built without FAPI (`--nofapi`)"
BUNDLE_PASS = "python3 -S -c pass, bundle layout"
# Is importing only tpm2_pytss submodules cheaper than the package? (bundle layout)
_SKIP_INIT = (
    "import sys, types, importlib.util as u; "
    "s = u.find_spec('tpm2_pytss'); m = types.ModuleType('tpm2_pytss'); "
    "m.__path__ = list(s.submodule_search_locations); sys.modules['tpm2_pytss'] = m; "
    "from tpm2_pytss.ESAPI import ESAPI"
)
_NO_GC = "import gc; gc.disable(); import tpm2_pytss; gc.freeze(); gc.enable()"
# What Tpm.open does since issue 12 (recover/tpm/core.py, recover/deferred.py).
_DEFERRED = (
    "import gc\nfrom recover import deferred\ngc.disable()\n"
    "with deferred.importing():\n    import tpm2_pytss\ngc.freeze(); gc.enable()"
)
# dataclasses plainly and as the boot entry imports it (recover/cli/entry.py); both after
# the modules recover.deferred itself imports, so the difference is inspect's share.
_DATACLASSES = "import contextlib, importlib.machinery, types, typing\nimport dataclasses"
_DATACLASSES_DEFERRED = (
    "import contextlib, importlib.machinery, types, typing\nfrom recover import deferred\n"
    "with deferred.importing(deferred.DATACLASSES):\n    import dataclasses"
)
# The boot's modules with dataclasses compiling the methods it writes, and with the
# bundle's table of their code (recover/dataclasscode.py, as the boot entry installs it);
# both with inspect deferred, so the difference is the table's share.
_CLEAN_MODULES = "import recover.boot.payload, recover.boot.gather"
_RECOVERY_MODULES = (
    "import recover.boot.payload, recover.boot.gather, recover.boot.recovery, "
    "recover.peers.server, recover.peers.rounds, recover.core.attest, recover.store.binding, "
    "recover.store.unseal, recover.store.image, recover.store.credentials"
)
_COMPILED = (
    "from recover import deferred\n"
    "with deferred.importing(deferred.DATACLASSES):\n    import dataclasses\n"
)
_TABLE = "from recover.cli import entry\nentry._import_dataclasses()\n"
# What tpm2_pytss.internal.crypto imports at module level (with the stdlib it needs).
_TSS_CRYPTO = (
    "import inspect, secrets, logging, typing\n"
    "from cryptography.hazmat.primitives.asymmetric import rsa, ec, padding, utils\n"
    "from cryptography.hazmat.primitives import hashes, hmac, serialization\n"
    "from cryptography.x509 import load_pem_x509_certificate\n"
    "from cryptography.hazmat.primitives.kdf import kbkdf, concatkdf\n"
    "from cryptography.hazmat.primitives.ciphers import algorithms, modes, Cipher\n"
    "from cryptography.hazmat.decrepit.ciphers import algorithms as _a, modes as _m\n"
    "from cryptography.hazmat.backends import default_backend"
)
VARIANTS = (
    ("`import tpm2_pytss`", "import tpm2_pytss"),
    ("`import tpm2_pytss`, cyclic GC paused", _NO_GC),
    ("`import tpm2_pytss`, GC paused, cryptography deferred (as `Tpm.open` does)", _DEFERRED),
    ("`from tpm2_pytss.ESAPI import ESAPI`", "from tpm2_pytss.ESAPI import ESAPI"),
    ("`from tpm2_pytss.TCTILdr import TCTILdr`", "from tpm2_pytss.TCTILdr import TCTILdr"),
    ("`import cryptography.x509` (tpm2_pytss.types needs it)", "import cryptography.x509"),
    ("ESAPI, package `__init__` skipped (experiment, not used)", _SKIP_INIT),
    ("`import recover.cli.main`", "import recover.cli.main"),
    (
        "`import recover.cli.main` + `build_parser()`",
        "import recover.cli.main; recover.cli.main.build_parser()",
    ),
    (
        "the boot entry: `recover.cli.entry` reads `boot`, with `recover.cli.run`",
        "from recover.cli import entry, run; entry._import_dataclasses(); "
        "entry.parse_boot(['boot'])",
    ),
    ("`import dataclasses` (after what recover.deferred imports)", _DATACLASSES),
    ("`import dataclasses`, inspect deferred (as the boot entry does)", _DATACLASSES_DEFERRED),
    ("what tpm2_pytss imports of cryptography (and the stdlib for it)", _TSS_CRYPTO),
    ("the clean boot's modules, dataclasses compiling", _COMPILED + _CLEAN_MODULES),
    ("the clean boot's modules, the bundle's dataclass code", _TABLE + _CLEAN_MODULES),
    ("a recovery's modules, dataclasses compiling", _COMPILED + _RECOVERY_MODULES),
    ("a recovery's modules, the bundle's dataclass code", _TABLE + _RECOVERY_MODULES),
)


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def report(args: argparse.Namespace, res: Results) -> str:
    b0 = med(res.base["python3 -I -S -c pass"])
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cmd = reproduce("coldstart", f"--rounds {args.rounds}")
    cmd += f" --before {args.before}" if args.before else ""
    cmd += f" --after {args.after}" if args.after else ""
    cmd += f" --nofapi {args.nofapi}" if args.nofapi else ""
    # --nofapi DIR: the tpm2-pytss wheel `make venv` builds without FAPI, installed apart.
    wheel = "/var/cache/host-recover/wheels-nofapi/tpm2_pytss-*.whl"
    pip = f".venv/bin/pip install -q --no-deps --target {args.nofapi} {wheel}"
    out = [
        SECTION,
        "",
        f"Measured {stamp} on this machine (2 cores shared with other jobs, load average "
        f"{os.getloadavg()[0]:.1f}; swtpm, not hardware), {args.rounds} interleaved rounds "
        "after a warm-up round; every time includes fork + exec of the child. Reproduce:",
        "",
        *([f"    {pip}"] if args.nofapi else []),
        f"    {cmd} --write-docs",
        "",
        "| run | median ms | min ms | vs `-I -S -c pass` |",
        "|---|---|---|---|",
    ]
    for name, xs in res.base.items():
        out.append(f"| `{name}` | {med(xs):.1f} | {min(xs):.1f} | {med(xs) / b0:.1f}x |")
    out += [
        "",
        "`host-recover boot` with a provisioned store after an orderly shutdown (verdict "
        "clean, exit 0). *connect*: the TCTI connected (interpreter, CLI, configuration, "
        "`import tpm2_pytss`, ESAPI init); *first command*: swtpm received the first TPM "
        "command; *exit*: the whole clean boot (evidence, NV record, decision.json); "
        "*first command CPU*: the child's CPU time (all threads) when swtpm received the "
        "first command, read by the relay before it forwards the command, while the child "
        "waits for the answer: exec to first command without the other jobs' share of the "
        "cores; *CPU*: the child's user + system time to its exit (less sensitive to the "
        "load); *teardown*: from the decision record's `time` to the exit (interpreter "
        "finalization).",
        "",
        "| tree | code from | connect ms | first command ms (min) | first command CPU ms "
        "(min) | command | first vs `-I -S -c pass` | exit ms | CPU ms | teardown ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (label, mode), runs in res.boot.items():
        first = [r.first_ms for r in runs]
        fcpu = [r.first_cpu_ms for r in runs]
        codes = "/".join(sorted({command_name(r.command) for r in runs}))
        out.append(
            f"| {label} | {mode} | {med([r.connect_ms for r in runs]):.1f} | "
            f"{med(first):.1f} ({min(first):.1f}) | {med(fcpu):.1f} ({min(fcpu):.1f}) | "
            f"{codes} | {med(first) / b0:.1f}x | "
            f"{med([r.exit_ms for r in runs]):.1f} | {med([r.cpu_ms for r in runs]):.1f} | "
            f"{med([r.teardown_ms for r in runs]):.1f} |"
        )
    pairs = [(f"{m}: after / before", ("after", m), ("before", m)) for m in MODES]
    last = res.trees[-1]
    pairs = (pairs if args.before else []) + [
        (f"{m} / bundle ({last})", (last, m), (last, "bundle"))
        for m in EXTRA_MODES
        if (last, m) in res.boot
    ]
    out += [
        "",
        "| ratio | first command, medians | first command, minima | first command CPU, "
        "medians | exit, medians | CPU, medians |",
        "|---|---|---|---|---|---|",
    ]
    for name, a, b in pairs:
        cells = [
            agg([getattr(r, f) for r in res.boot[a]]) / agg([getattr(r, f) for r in res.boot[b]])
            for f, agg in (
                ("first_ms", med),
                ("first_ms", min),
                ("first_cpu_ms", med),
                ("exit_ms", med),
                ("cpu_ms", med),
            )
        ]
        out.append(f"| {name} | " + " | ".join(f"{c:.2f}x" for c in cells) + " |")
    out += [
        "",
        "Imports in the bundle layout (`python3 -S -c ...`, sourceless stdlib and site), "
        "each in a fresh interpreter, CPU time inside the process (no start-up, no "
        "finalization):",
        "",
        "| `-c` | median CPU ms | min CPU ms |",
        "|---|---|---|",
    ]
    for label, xs in res.variants.items():
        out.append(f"| {label} | {med(xs):.1f} | {min(xs):.1f} |")
    out += [
        "",
        f"`-X importtime` of the payload ({last}, bundle layout, one run to its exit; "
        "importtime inflates times): top-level imports by cumulative time",
        "",
        "| import | cumulative ms | self ms |",
        "|---|---|---|",
    ]
    for e in top_level(res.imports[last])[: args.top]:
        out.append(f"| `{e.name}` | {e.cum_us / 1000:.1f} | {e.self_us / 1000:.1f} |")
    groups = {label: group_self_times(rows) for label, rows in res.imports.items()}
    names = sorted({g for gs in groups.values() for g in gs})
    out += [
        "",
        "Self time by origin, same runs:",
        "",
        "| origin | " + " | ".join(f"{label} ms" for label in groups) + " |",
        "|---|" + "---|" * len(groups),
    ]
    for n in names:
        row = " | ".join(f"{groups[label].get(n, 0) / 1000:.1f}" for label in groups)
        out.append(f"| {n} | {row} |")
    out += ["", *findings(args, res), "", ""]
    return "\n".join(out)


def _linked(so: Path) -> int:
    proc = subprocess.run(["ldd", str(so)], capture_output=True, text=True, timeout=60)
    return sum("=>" in line for line in proc.stdout.splitlines())


def _effect(args: argparse.Namespace, res: Results) -> list[str]:
    """The before/after line of the findings (empty without ``--before``)."""
    if not args.before:
        return []

    def ratio(mode: str, field: str, agg: Callable[[list[float]], float] = med) -> str:
        a = agg([getattr(r, field) for r in res.boot[("after", mode)]])
        return f"{mode} {a / agg([getattr(r, field) for r in res.boot[('before', mode)]]):.2f}x"

    return [
        "- Effect of the change, after / before: child CPU to the first command (medians) "
        + ", ".join(ratio(mode, "first_cpu_ms") for mode in MODES)
        + "; child CPU to exit (medians) "
        + ", ".join(ratio(mode, "cpu_ms") for mode in MODES)
        + "; wall time to the first command, minima "
        + ", ".join(ratio(mode, "first_ms", min) for mode in MODES)
        + ", medians "
        + ", ".join(ratio(mode, "first_ms") for mode in MODES)
        + ". Wall-clock medians on this shared 2-core machine follow the other jobs' load "
        "from run to run; CPU time and minima are the steadier figures."
    ]


def findings(args: argparse.Namespace, res: Results) -> list[str]:
    """What the tables say, with the figures of this run."""
    last = res.trees[-1]

    def m(mode: str, field: str = "first_ms") -> float:
        return med([getattr(r, field) for r in res.boot[(last, mode)]])

    fb, fc = m("bundle"), m("bundle", "first_cpu_ms")
    fmin = min(r.first_ms for r in res.boot[(last, "bundle")])
    v = {label: med(xs) for label, xs in res.variants.items()}
    pkg, nogc, dfr, esapi, tctildr, x509, skip, cli, parser, boot_entry, dc, dc_dfr, tcrypto = (
        v[label] for label, _ in VARIANTS[:13]
    )
    clean_c, clean_t, rec_c, rec_t = (v[label] for label, _ in VARIANTS[13:])
    out = [
        "Findings:",
        "",
        "- The initramfs runs the bundle layout: dracut-module/module-setup.sh installs the "
        "staging directory of `host-recover bundle`, whose wrapper runs `/usr/bin/python3.11 "
        "-I -S -B` on the sourceless site and stdlib (a directory of .pyc since issue 12; "
        "the bench runs that wrapper's own `-c` statement with `-S -P` and PYTHONHOME at "
        "the staging copy, as `-I` would ignore PYTHONHOME; testing/trees.py). The "
        ".pyc are used as they are: sourceless, nothing to check or recompile. Sources with "
        "a warm "
        f"bytecode cache take {m('src', 'first_cpu_ms') / fc:.2f}x the bundle's CPU to the "
        f"first TPM command, sources without bytecode {m('src-nopyc', 'first_cpu_ms') / fc:.2f}x:"
        " ship bytecode (TCG magnifies the difference, DESIGN.md §3).",
        f"- Of the bundle's {fc:.0f} ms of CPU to the first TPM command ({fb:.0f} ms wall, "
        f"median, at this load), importing tpm2_pytss as `Tpm.open` does takes {dfr:.0f} ms "
        f"of CPU in a fresh interpreter (a plain `import tpm2_pytss`: {pkg:.0f} ms, of which "
        f"`cryptography.x509` alone {x509:.0f} ms); the rest (the interpreter's start, the boot entry, "
        "configuration and boot modules, the stdlib they need beyond what tpm2_pytss loads, "
        f"ESAPI init, the evidence step up to its first call) is {fc - dfr:.0f} ms.",
        f"- Importing tpm2_pytss submodules directly is not cheaper: ESAPI {esapi:.0f} ms, "
        f"TCTILdr {tctildr:.0f} ms vs the package {pkg:.0f} ms, because Python runs the "
        "package `__init__` first and it imports ESAPI, FAPI, policy, TCTILdr, types and "
        f"constants anyway. Skipping the `__init__` (experiment row) saves {pkg - skip:.0f} ms "
        "at the price of bypassing the package's own load checks: not done.",
        "- Deferred (issue 5): recover.boot imports subprocess and uuid (which imports "
        "platform) only where it mounts or lacks a boot_id; recover.decide imports the peer "
        "stack (recover.peers, recover.core.inventory, recover.agent) only when an inventory exists "
        "and the peers must be asked; recover.core.verdict imports peers' `Outcome` only when there "
        "are peer results. tests/unit/test_coldstart.py keeps these, tpm2_pytss, cryptography, "
        "asyncio, ssl, http, email and socket off the path up to `Tpm.open`.",
        *_effect(args, res),
        "- The boot entry (issue 12, recover/cli/entry.py): the hooks' command line "
        "(`boot --newroot DIR`) is read without argparse; any other goes to the full parser, "
        "and both run the parsed command through recover.cli.run (tests/unit/test_entry.py "
        "checks that they parse alike). Importing the full CLI and building its parser takes "
        f"{parser:.0f} ms of CPU in a fresh interpreter ({parser - cli:.0f} ms of it building "
        f"the parser), the boot entry with the configuration {boot_entry:.0f} ms. "
        "tests/unit/test_coldstart.py and tests/integration/test_bundle_paths.py keep "
        "argparse and recover.cli.main off the clean boot.",
        "- dataclasses without inspect (issue 12, recover/deferred.py): Python 3.11's "
        "dataclasses imports inspect (with dis and ast) only to write a docstring for a class "
        "that has none. Every dataclass of the package has one (tests/unit/test_deferred.py), "
        "and the boot entry imports dataclasses with a stand-in for inspect that loads the "
        f"real module on first use: {dc_dfr:.1f} ms of CPU instead of {dc:.1f} ms (rows "
        "`import dataclasses`). The bundled clean boot loads only the stand-in "
        "(tests/integration/test_bundle_paths.py).",
        "- Dataclass code compiled at bundle time (issue 12, recover/dataclasscode.py): "
        "Python 3.11's dataclasses writes the source text of each method it adds to a class "
        "and compiles it, at every import. `host-recover bundle` records the code of every "
        "such text while it imports the payload's modules and ships the table beside the "
        "package; the boot entry installs it. Importing the clean boot's modules takes "
        f"{clean_t:.1f} ms of CPU with the table against {clean_c:.1f} ms compiling "
        f"({clean_t / clean_c:.2f}x), a recovery's (peer stage, unseal, image, "
        f"credentials) {rec_t:.1f} ms against {rec_c:.1f} ms ({rec_t / rec_c:.2f}x). "
        "tests/unit/test_dataclasscode.py checks that every generated method of the package "
        "is the same code either way, tests/integration/test_bundle_paths.py that the "
        "bundle's table serves every route without a miss.",
        "- Not deferrable on this path: logging, dataclasses, "
        "pathlib, configparser and json serve every boot; "
        "`_hashlib` (OpenSSL's libcrypto) comes with hashlib, which the policy digests need; "
        "tpm2_pytss, with cryptography's `_rust`, is needed for the first command. "
        "`python3 -I -c pass` in the venv pays for site and the "
        "editable-install finder, which the payload (`-S`) never loads.",
        "- Experiment `bundle-stdlib-zip` (the same sourceless stdlib .pyc files in "
        "python311.zip, as the bundle shipped them before; `host-recover bundle --stdlib zip`):"
        f" first command {m('bundle-stdlib-zip') / fb:.2f}x, CPU "
        f"{m('bundle-stdlib-zip', 'cpu_ms') / m('bundle', 'cpu_ms'):.2f}x of the bundle's "
        "directory. Python 3.11's zipimport is written in Python and opens the archive again "
        "for every module it loads; the directory is the default now. Both are reproducible: "
        "the .pyc bytes are fixed, and dracut `--reproducible` clamps the files' times.",
        f"- Cyclic GC: `import tpm2_pytss` takes {nogc:.0f} ms CPU with the collector paused "
        f"vs {pkg:.0f} ms ({nogc / pkg:.2f}x); `Tpm.open` pauses it for that first import and "
        "freezes the imported objects out of later collections (recover/tpm/core.py).",
        "- Deferred cryptography (issue 12, recover/deferred.py): `Tpm.open` imports "
        "tpm2_pytss with its key conversions (tpm2_pytss.internal.crypto, which imports x509, "
        "serialization with ssh, kbkdf, concatkdf, ciphers and decrepit at module level: "
        f"{tcrypto:.0f} ms with the stdlib they need, measured alone) and cryptography's "
        "serialization package loaded on first use: "
        f"{dfr:.0f} ms of CPU instead of {nogc:.0f} ms (the collector paused in both). A clean "
        "boot never uses them (tests/integration/test_bundle_paths.py checks its imports); a "
        "recovery loads them when it first converts a key. Still loaded: cryptography's "
        "`_rust` extension (hashes, and the serialization enums tpm2_pytss.types needs when "
        "its classes are created) and tpm2_pytss's own modules (constants, types, ESAPI).",
        f"- Goal of issue 12, 60 ms from exec to the first TPM command: this run {fb:.0f} ms "
        f"wall, {fc:.0f} ms CPU (medians): "
        + ("met." if fb <= 60 else "not met.")
        + f" The fastest boot took {fmin:.0f} ms; the other jobs' load shows in the bare "
        f"interpreter's start, {med(res.base[BUNDLE_PASS]):.0f} ms median against "
        f"{min(res.base[BUNDLE_PASS]):.0f} ms at best in the same run."
        + " What is left is spread thin: no import's own time is over 3 ms (run "
        "`-X importtime` on the bundle); the interpreter's start (bare `-S -c pass` in the "
        f"bundle layout: {min(res.base[BUNDLE_PASS]):.0f} ms wall at best), the boot entry "
        f"with logging and the configuration ({boot_entry:.0f} ms), dataclasses "
        "(16 frozen dataclasses are created on the path: their methods' code comes from the "
        "bundle's table now, the classes are still built one by one), the verdict and "
        "evidence modules, tpm2_pytss's own modules. Next step, not done: the clean boot's few TPM commands marshalled without "
        "tpm2-pytss.",
        f"- Exit: after the decision record is written, the interpreter's finalization "
        f"takes {m('bundle', 'teardown_ms'):.0f} ms of the clean boot's "
        f"{m('bundle', 'exit_ms'):.0f} ms"
        + (
            f" ({med([r.teardown_ms for r in res.boot[('before', 'bundle')]]):.0f} ms before: "
            "the objects `Tpm.open` froze are skipped by the collections finalization runs)"
            if ("before", "bundle") in res.boot
            else ""
        )
        + ", and the hook waits for it. Ending the boot verb with `os._exit(code)` would "
        "skip the rest; not done: it also skips atexit handlers and unflushed file buffers.",
    ]
    if args.nofapi and (last, "bundle-nofapi") in res.boot:
        ext = "tpm2_pytss/_libtpm2_pytss.abi3.so"
        out.append(
            f"- Experiment `bundle-nofapi`: the tpm2-pytss wheel `make venv` builds links "
            f"libtss2-fapi and with it {_linked(Path(SITE) / ext)} libraries (curl, krb5, "
            f"ldap, ...); built with tss2-fapi.pc hidden it links {_linked(args.nofapi / ext)}."
            f" `import tpm2_pytss` {v[NOFAPI]:.0f} ms instead of {pkg:.0f} ms; first TPM "
            f"command {m('bundle-nofapi') / fb:.2f}x, CPU "
            f"{m('bundle-nofapi', 'cpu_ms') / m('bundle', 'cpu_ms'):.2f}x of the bundle's. "
            "recover/ does not use FAPI. Build used: `PKG_CONFIG_LIBDIR=DIR pip wheel --no-deps "
            "tpm2_pytss-3.0.0.tar.gz` with DIR holding links to every .pc file except "
            "tss2-fapi.pc, then `pip install --no-deps --target SITE` of that wheel."
        )
    return out
