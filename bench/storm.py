"""Storm (issue 10, item 7): N hosts of one failure domain reboot together and all ask at
one instant; time to verdict, verdict kinds and TPM quotes per host, before and after
protocol v2 (batching, joining, the nonce cache, busy replies), in one run.

Each host is the product's own status server (``recover.peers.server.Server`` and
``Responder``) and client (``recover.peers.client.query_all_async`` with
``recover.core.verdict.EarlyStop``, product defaults: deadline 5 s, timeout 1.5 s,
retries 2, quorum 50%), on its own loopback address (127.1.x.y: per-source connection
caps apply per host, as in a fleet). Its TPM is ``testing.peersim.ModelAttestor``: one
command at a time on a per-host lock, each Quote taking a time drawn from
testing.tpmrelay's model (a fixed Q, or log-normal 200 ms median / 600 ms p95), counted
by the attestor. Hosts run as asyncio tasks in a few processes (a thousand processes
do not fit a 2-core machine): at most ``--per-proc`` hosts per process.

``--real N``: the same round with N hosts each on a real swtpm behind testing.tpmrelay
(the latency model on the wire, transient return codes injected), to compare with the
model at the same N.

    .venv/bin/python -m bench.storm --sizes 10,100,1000 --quotes 0,0.05,0.2,0.2/0.6 \
        --real 10 --write-docs

"before" is the previous behaviour: protocol v1 requests and a server with
``Limits(batching=False)`` (one quote per request, no joining, no nonce cache, no busy
queue). "after" is this release's v2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import math
import os
import queue
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from testing.peersim import ModelAttestor, entry, evidence_of
from testing.tpmrelay import Latency

from recover.core.evidence import Reading  # noqa
from recover.core.inventory import parse  # noqa
from recover.core.verdict import EarlyStop, Policy, decide_counts  # noqa
from recover.peers.client import query_all_async  # noqa
from recover.peers.server import Limits, Responder, Server, StatusSource  # noqa

DEADLINE, TIMEOUT, RETRIES = 5.0, 1.5, 2  # the product's defaults (recover/settings.py)
SINCE_RESET = 20.0
MODES = ("before", "after")
REAL_FAULTS = ("Quote:RETRY@p0.05", "ReadClock:YIELDED@p0.05", "PCR_Read:TESTING@p0.05")


def host_ip(i: int) -> str:
    return f"127.1.{i // 250}.{i % 250 + 1}"


def host_id(i: int) -> str:
    return f"h{i:04d}"


def quote_model(text: str) -> Latency:
    """``0.2`` (fixed), ``0.2/0.6`` (log-normal median/p95), seconds."""
    return Latency.parse(text)


# --- one child process: some of the hosts ------------------------------------------------


@dataclasses.dataclass
class Host:
    i: int
    att: Any
    server: Server
    ip: str
    relay: Any = None

    @property
    def quotes(self) -> int:
        if self.relay is not None:
            return int(self.relay.counts().forwarded.get("Quote", 0))
        return int(self.att.quotes)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _limits(mode: str, k: float) -> Limits:
    d = Limits()
    return Limits(
        # "sampled-greedy": the server before answer quotes were paced (pace 0)
        pace=0.0 if mode == "sampled-greedy" else d.pace * k,
        pace_cap=d.pace_cap * k,
        pace_window=d.pace_window * k,
        header_timeout=d.header_timeout * k,
        read_timeout=d.read_timeout * k,
        answer_timeout=d.answer_timeout * k,
        retry_after=d.retry_after * k,
        batching=mode != "before",  # v2 batches ("after", "sampled")
    )


def _dilate(k: float) -> None:
    """Stretch the client's own time constants by ``k`` (this process only)."""
    from recover.peers import client

    client.SLOT_HOLD *= k
    client.DEADLINE_GRACE *= k


async def _start_hosts(spec: dict, stack: contextlib.ExitStack) -> list[Host]:
    model = quote_model(spec["quote"])
    hosts = []
    for i in spec["hosts"]:
        ip = host_ip(i)
        relay = None
        if spec.get("real"):
            att, relay, pem = _real_attestor(spec, i, model, stack)
        else:
            k = spec["dilation"] if model.median > 0 else 0.0
            att = ModelAttestor(model, scale=k, seed=f"{i}", clock_rate=1 / spec["dilation"])
            pem = att.pem
        status = StatusSource(host_id(i), "rack-1", "boot", evidence_of("abnormal"), "storm")
        placeholder = parse([entry(host_id(i), 1, pem)])
        srv = Server(Responder(placeholder, att, status, _limits(spec["mode"], spec["dilation"])))
        await srv.start(ip, 0)
        hosts.append(Host(i, att, srv, ip, relay))
    return hosts


def _real_attestor(spec: dict, i: int, model: Latency, stack: contextlib.ExitStack) -> Any:
    """swtpm → tpmrelay (latency off while the AK is made, then the model) → Tpm."""
    from testing.swtpm import SwTpm
    from testing.tpmrelay import TpmRelay

    from recover.peers.attestor import TpmAttestor
    from recover.tpm import Tpm

    sw = stack.enter_context(SwTpm())
    relay = stack.enter_context(
        TpmRelay(sw.port, latency={"Quote": model}, faults=spec.get("faults", ()), seed=i)
    )
    tpm = stack.enter_context(Tpm.open(relay.tcti))
    pem = tpm.ensure_ak(0x81010002).decode()
    att = TpmAttestor(tpm, 0x81010002, "sha256:0,2,4,7,9", lock_pcr=15)
    att.pem = pem  # type: ignore[attr-defined]
    att.pcrs = tpm.pcr_read("sha256:0,2,4,7,9")  # type: ignore[attr-defined]
    relay.latency_scale = spec["dilation"] if model.median > 0 else 0.0
    relay.reset_counts()
    return att, relay, pem


async def _round(h: Host, spec: dict, peers: Any, known: set[str], start: float) -> dict:
    loop = asyncio.get_running_loop()
    late = loop.time() - start
    await asyncio.sleep(max(0.0, start - loop.time()))
    policy = Policy("50%")
    k = spec["dilation"]
    conv = None
    if spec["mode"].startswith("sampled"):
        res, conv = await _sampled(h, peers, known, policy, k)
    else:
        res = await query_all_async(
            peers,
            known,
            host_id(h.i),
            h.att,
            DEADLINE * k,
            TIMEOUT * k,
            RETRIES,
            EarlyStop(Reading.ABNORMAL, SINCE_RESET, len(peers), policy),
            version=2 if spec["mode"] == "after" else 1,
            source=h.ip,
        )
    v = decide_counts(
        Reading.ABNORMAL, SINCE_RESET, res.results, res.domain_size, policy, convergence=conv
    )
    return {
        "rounds": conv.rounds if conv is not None else 1,
        "host": h.i,
        "verdict_s": (loop.time() - start) / k,
        "late_s": max(0.0, late) / k,
        "kind": str(v.kind),
        "verified": res.verified,
        "outcomes": dict(Counter(str(r.outcome) for r in res.results)),
    }


async def _sampled(h: Host, peers: Any, known: set[str], policy: Policy, k: float) -> Any:
    """What the boot payload does (recover.boot.gather): above ``verdict.sample_above``
    peers it asks a uniform random sample (``verdict.sample_size``) in rounds
    (``recover.peers.rounds.converge_async``) and judges it with the sampling rule. The
    round pauses and ``verdict.wait`` are not dilated: with every host up, one round
    settles it (the ``rounds`` column says if not)."""
    from recover.core.verdict import Judge, Rule, sample_size
    from recover.peers.rounds import choose_sample, converge_async

    size = sample_size(len(peers), policy)
    judge = Judge(Reading.ABNORMAL, SINCE_RESET, Rule.of(len(peers), policy, size), policy)
    clock = time.monotonic
    return await converge_async(
        choose_sample(peers, size),
        known,
        host_id(h.i),
        h.att,
        judge,
        deadline=DEADLINE * k,
        timeout=TIMEOUT * k,
        retries=RETRIES,
        wait=DEADLINE * k,
        origin=clock(),  # this host's evidence was just read
        domain=len(peers),
        clock=clock,
        source=h.ip,
    )


async def _child_main() -> None:
    _raise_fd_limit()
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, "")

    threading.Thread(target=read_stdin, daemon=True).start()
    spec = json.loads(await lines.get())
    _dilate(spec["dilation"])
    from concurrent.futures import ThreadPoolExecutor

    # one TPM thread per host (its lock serialises it); the default pool has 6
    loop.set_default_executor(ThreadPoolExecutor(max_workers=2 * len(spec["hosts"]) + 8))
    with contextlib.ExitStack() as stack:
        hosts = await _start_hosts(spec, stack)
        out = [
            entry(host_id(h.i), h.server.port, h.att.pem, pcrs=getattr(h.att, "pcrs", None))
            for h in hosts
        ]
        for e, h in zip(out, hosts, strict=True):
            e["address"] = f"{h.ip}:{h.server.port}"
        print(json.dumps(out), flush=True)
        go = json.loads(await lines.get())
        inv = parse(go["inventory"])
        known = {p.id for p in inv}
        for h in hosts:
            h.server.responder.inventory = inv
        start = go["start"] - time.monotonic() + loop.time()
        results = await asyncio.gather(
            *(_round(h, spec, inv.domain_peers(host_id(h.i)), known, start) for h in hosts)
        )
        print(json.dumps(results), flush=True)
        await lines.get()  # "report": every host of every process has decided
        report = [
            {
                "host": h.i,
                "quotes": h.quotes,
                "batches": h.server.responder.batches,
                "busy": h.server.responder.busy,
                "joined": h.server.responder.joined,
                "cache_hits": h.server.responder.cache_hits,
                "injected": dict(h.relay.counts().injected_rc) if h.relay else {},
            }
            for h in hosts
        ]
        print(json.dumps(report), flush=True)
        if spec.get("real"):
            # Closing a Tpm while an executor thread still quotes with it corrupts
            # libtss2's memory: hold every host's TPM lock (queued quotes then never run).
            for h in hosts:
                h.att.lock.acquire(timeout=60)
    # TPM work still queued in executor threads (the "before" servers' backlog) would
    # hold the interpreter for minutes: this process is done.
    os._exit(0)


# --- the parent: one storm, many processes -------------------------------------------------


class Child:
    def __init__(self, spec: dict) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.storm", "--child"],
            cwd=Path(__file__).resolve().parents[1],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.send(spec)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")

    def send(self, obj: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def receive(self, timeout: float) -> Any:
        line = self.lines.get(timeout=timeout)
        if not line:
            raise RuntimeError(f"storm child {self.proc.pid} ended early")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # by its PID: a child we started
                self.proc.wait(timeout=10)


@dataclasses.dataclass
class Storm:
    n: int
    quote: str
    mode: str
    real: bool
    verdict_s: list[float]
    kinds: Counter[str]
    quotes: list[int]
    outcomes: Counter[str]
    batches: list[int]
    dilation: float
    late_s: float
    injected: Counter[str]
    wall_s: float
    rounds: int = 1  # the most rounds any host needed (mode "sampled")


def storm(
    n: int, quote: str, mode: str, per_proc: int, real: bool = False, dilation: float = 1.0
) -> Storm:
    procs = max(1, math.ceil(n / per_proc))
    groups = [list(range(n))[k::procs] for k in range(procs)]
    t0 = time.monotonic()
    children: list[Child] = []
    try:
        for g in groups:
            spec = {"hosts": g, "quote": quote, "mode": mode, "real": real, "dilation": dilation}
            if real:
                spec["faults"] = list(REAL_FAULTS)
            children.append(Child(spec))
        entries = [e for c in children for e in c.receive(timeout=300)]
        # everyone gets the inventory, then all ask at one instant
        start = time.monotonic() + 2.0 + n / 100
        for c in children:
            c.send({"inventory": entries, "start": start})
        results = [r for c in children for r in c.receive(timeout=120 + 4 * DEADLINE * dilation)]
        for c in children:
            c.send("report")
        report = [r for c in children for r in c.receive(timeout=60)]
    finally:
        for c in children:
            c.close()
    outcomes: Counter[str] = Counter()
    injected: Counter[str] = Counter()
    for r in results:
        outcomes.update(r["outcomes"])
    for r in report:
        injected.update(r["injected"])
    return Storm(
        n,
        quote,
        mode,
        real,
        [r["verdict_s"] for r in results],
        Counter(r["kind"] for r in results),
        [r["quotes"] for r in report],
        outcomes,
        [r["batches"] for r in report],
        dilation,
        max(r["late_s"] for r in results),
        injected,
        time.monotonic() - t0,
        max(r.get("rounds", 1) for r in results),
    )


def _quote_label(q: str) -> str:
    m = quote_model(q)
    if m.median == m.p95:
        return f"{m.median * 1000:g} ms"
    return f"{m.median * 1000:g}/{m.p95 * 1000:g} ms (median/p95)"


def row(s: Storm) -> str:
    kinds = ", ".join(f"{v} {k}" for k, v in sorted(s.kinds.items()))
    other = {k: v for k, v in s.outcomes.items() if k not in ("verified", "skipped")}
    unverified = ", ".join(f"{v} {k}" for k, v in sorted(other.items())) or "none"
    tpm = "swtpm + tpmrelay" if s.real else "model"
    return (
        f"| {s.n} | {_quote_label(s.quote)} | {tpm} | {s.dilation:g} | {s.mode} | "
        f"{statistics.median(s.verdict_s):.2f} / {max(s.verdict_s):.2f} | {kinds} | "
        f"{statistics.median(s.quotes):g} / {max(s.quotes)} | {unverified} |"
    )


HEADER = (
    "| hosts | quote | TPM | dilation | protocol | time to verdict median / max (s) | "
    "verdicts | quotes per host median / max | answers not verified (all hosts) |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--quotes", default="0,0.05,0.2,0.2/0.6", help="seconds; MEDIAN/P95")
    ap.add_argument("--modes", default="before,after")
    ap.add_argument("--per-proc", type=int, default=125, help="hosts per process")
    ap.add_argument("--real", type=int, default=0, help="also N hosts on swtpm + tpmrelay")
    ap.add_argument("--real-quotes", default="0.2/0.6")
    ap.add_argument(
        "--dilation",
        default="10:1,100:10,1000:100",
        help="SIZE:K,...: multiply every latency and timeout by K and divide the measured "
        "times by K (emulates hosts with K times the CPU this machine gives each)",
    )
    ap.add_argument(
        "--skip", default="", help="SIZE:MODE,...: leave these runs out (e.g. 1000:sampled-greedy)"
    )
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    if args.child:
        asyncio.run(_child_main())
        return 0
    os.environ.setdefault("TSS2_LOG", "all+none")
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    runs: list[Storm] = []
    plan = [
        (n, q, m, False)
        for n in map(int, args.sizes.split(","))
        for q in args.quotes.split(",")
        for m in args.modes.split(",")
        if f"{n}:{m}" not in args.skip.split(",")
    ]
    if args.real:
        for q in args.real_quotes.split(","):
            for m in args.modes.split(","):
                plan += [(args.real, q, m, False), (args.real, q, m, True)]
    dilation = {
        int(a): float(b) for a, _, b in (x.partition(":") for x in args.dilation.split(","))
    }
    print(HEADER, flush=True)
    for n, q, m, real in plan:
        k = dilation.get(n, max(1.0, n / 10))
        s = storm(n, q, m, args.per_proc, real, k)
        runs.append(s)
        inj = ", ".join(f"{v} {k}" for k, v in sorted(s.injected.items()))
        print(
            row(s) + f"  (wall {s.wall_s:.0f} s, late {s.late_s:.2f} s, rounds {s.rounds}, "
            f"injected: {inj})",
            flush=True,
        )
    sampled = all(m.startswith("sampled") for m in args.modes.split(","))
    if args.write_docs and sampled and "/" not in args.quotes:
        write_fixed_quote_docs(args, runs, load, time.monotonic() - t0)
    elif args.write_docs and sampled:
        write_sampled_docs(args, runs, load, time.monotonic() - t0)
    elif args.write_docs:
        write_docs(args, runs, load, time.monotonic() - t0)
    return 0


def _measured(
    title: str, args: argparse.Namespace, load: float, took: float, extra_flags: str
) -> str:
    """A section's heading, when and how it was measured, and the command that reproduces
    it (every storm section starts so); ``extra_flags``: the writer's own flags, e.g.
    `` --skip …``."""
    from bench.perfdoc import reproduce

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cmd = (
        f"--sizes {args.sizes} --quotes {args.quotes} --modes {args.modes} "
        f"--per-proc {args.per_proc} --dilation {args.dilation}" + extra_flags
    )
    return (
        f"{title}\n\n"
        f"Measured {now} on this machine ({os.cpu_count()} cores shared with other work, "
        f"load average {load:.1f} at the start; the whole run took {took:.0f} s). "
        "Reproduce:\n\n"
        f"    {reproduce('storm', cmd)}\n\n"
    )


SAMPLED_SECTION = "## Storm at 1000 hosts: the payload's sampling"


def write_sampled_docs(
    args: argparse.Namespace, runs: list[Storm], load: float, took: float
) -> None:
    """``--modes sampled-greedy,sampled``: its own section (the before/after table stays
    as measured)."""
    from bench.perfdoc import write_section

    skip = f" --skip {args.skip}" if args.skip else ""
    table = "\n".join([HEADER, *(row(s) for s in runs)])
    section = (
        _measured(SAMPLED_SECTION, args, load, took, skip)
        + "The storm above, with each host doing what the boot payload does in a domain "
        "larger than `verdict.sample_above` (64): it asks a uniform random sample of "
        "`verdict.sample_size` peers (75 of 999) in rounds (`recover.peers.rounds`, the "
        "payload's own code) and judges with the sampling rule at `verdict.sample_error` "
        "0.01 (docs/verdict.md), over protocol v2. Every host is also asked by about a "
        "sample's worth of others, so its TPM work does not grow with the domain. "
        "*sampled*: the server paces its answer quotes (`recover.peers.server."
        "next_quote_at`: the n-th answer quote of the last 10 s is followed by the next "
        "no sooner than min(0.2 s x n², 1.5 s) after its start); *sampled-greedy*: the "
        "same without the pace (each batch starts as soon as the TPM is free), as before "
        "this release. Dilation as above. Most rounds any host needed: "
        + ", ".join(f"N={s.n} {s.mode}: {s.rounds}" for s in runs)
        + ".\n\n"
        f"{table}\n"
    )
    write_section(SAMPLED_SECTION, section)
    print(f"wrote docs/performance.md section {SAMPLED_SECTION!r}")


FIXED_SECTION = "## Storm at 1000 hosts: fixed quote times"


def write_fixed_quote_docs(
    args: argparse.Namespace, runs: list[Storm], load: float, took: float
) -> None:
    """``--modes sampled`` with fixed quote times only (issue 10's grid): its own section,
    so the distribution's run above stays as measured."""
    from bench.perfdoc import write_section

    skip = f" --skip {args.skip}" if args.skip else ""
    table = "\n".join([HEADER, *(row(s) for s in runs)])
    section = (
        _measured(FIXED_SECTION, args, load, took, skip)
        + "The section above with every quote taking the same time (the issue's grid: 0, "
        "50 and 200 ms) instead of the 200/600 ms distribution. Each host asks a sample "
        "of 75 of its 999 peers, as the payload does. *sampled*: the server paces its "
        "answer quotes; *sampled-greedy*: without the pace, as before this release. "
        "Dilation as above. Most rounds any host needed: "
        + ", ".join(f"{_quote_label(s.quote)} {s.mode}: {s.rounds}" for s in runs)
        + ".\n\n"
        f"{table}\n"
    )
    write_section(FIXED_SECTION, section)
    print(f"wrote docs/performance.md section {FIXED_SECTION!r}")


def write_docs(args: argparse.Namespace, runs: list[Storm], load: float, took: float) -> None:
    from bench.perfdoc import write_section

    real = f" --real {args.real}" if args.real else ""
    table = "\n".join([HEADER, *(row(s) for s in runs)])
    injected = Counter[str]()
    for s in runs:
        injected.update(s.injected)
    section = (
        _measured("## Storm: the whole failure domain reboots at once", args, load, took, real)
        + "Every host runs the product's own status server and client (deadline 5 s, timeout "
        "1.5 s, retries 2, quorum 50%, stop when settled) on its own loopback address; all "
        "ask at one instant; every host's evidence says abnormal, so the right verdict is "
        "`correlated-failure` everywhere. The TPM is a per-host lock with the quote time "
        "of the *quote* column (testing.peersim.ModelAttestor, sampled from "
        "testing.tpmrelay's model; ReadClock and PCR_Read a few ms); quotes are counted by "
        "the attestor (rows *swtpm + tpmrelay*: real swtpms behind the relay, counted by "
        "the relay, with transient return codes injected: "
        + (", ".join(f"{v} {k}" for k, v in sorted(injected.items())) or "none")
        + "). *before*: protocol v1, one quote per request, no joining, no nonce cache; "
        "*after*: v2, one quote per batch. *Quotes per host* include the host's own "
        f"request quote. Hosts run as asyncio tasks, at most {args.per_proc} per process.\n\n"
        "**Dilation.** This machine has 2 cores shared with other work, and simulating N "
        "hosts costs N hosts' CPU (each answers and verifies up to N-1 requests: ECDSA, "
        "JSON, HTTP). Undilated, 100 simulated hosts starve each other of CPU and every "
        "request times out whatever the protocol, which measures this machine, not the "
        "protocol. With dilation K every modelled TPM latency, the deadline, the timeout, "
        "the server's time limits and the client's slot hold are multiplied by K and the "
        "measured times divided by K: it emulates hosts with K times the CPU this run "
        "gives each simulated host, while the TPM stays as slow as modelled. Rows with "
        "dilation 1 are undilated.\n\n"
        f"{table}\n\n"
        "N = 1000 is in the next section, as the payload runs it (above "
        "`verdict.sample_above` peers it asks a random sample). Every host asking all 999 "
        "(this table's modes) was not run: about 10x the CPU of N = 100 per host times 10x "
        "the hosts, hours at the dilation it needs on this machine; the command above with "
        "`--sizes 1000` runs it (`ulimit -n` 20000).\n\n"
        "Reading: *before*, every answer is a quote, serialised on the answering host's "
        "TPM, and a request that times out while the peer is still quoting is asked again "
        "and costs another quote; from 50 ms quotes on, a domain of 100 falls back to "
        "`undetermined`. *After*, a host quotes once per batch whatever the number of "
        "askers, retries join the pending answer, and every host decides "
        "`correlated-failure`. With a TPM that costs nothing (0 ms) batching can cost a "
        "little latency: a host answers one batch at a time, where v1 ran its free quotes "
        "side by side. The *swtpm + tpmrelay* rows (real TPM commands, the same latency "
        "model on the wire, transient codes injected and retried by the TPM layer) agree "
        "with the model rows of the same configuration.\n"
    )
    write_section("## Storm: the whole failure domain reboots at once", section)
    print("wrote docs/performance.md section 'Storm'")


if __name__ == "__main__":
    sys.exit(main())
