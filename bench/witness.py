"""The witness at fleet scale (issue 13): a 10,000-host domain's witness read + verdict
with a real etcd on this machine, and the write load of 10,000 hosts heartbeating at
the default interval.

Simulated hosts: each has its own software ECDSA P-256 key standing in for its TPM AK
(testing/peersim.SoftwareAttestor: real TPMS_ATTEST structures, the product's verifier).
For the write load the heartbeat records are signed once in advance (a precomputed
signature per host: the bench measures etcd and the wire, not the TPM); each simulated
heartbeat does what the agent does: lease keepalive, a revision read, one put.

    .venv/bin/python -m bench.witness --hosts 10000 --seconds 20 --write-docs
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import statistics
import sys
import time
from typing import Any

from testing.etcd import Etcd, cpu_seconds
from testing.peersim import SoftwareAttestor, entry

from recover import config  # noqa
from recover.core import witness as core  # noqa
from recover.core.evidence import Reading  # noqa
from recover.core.inventory import parse  # noqa
from recover.core.protocol import PeerResult  # noqa
from recover.core.verdict import Policy, decide_counts  # noqa
from recover.peers.witness import EtcdClient, read_domain  # noqa

PREFIX = "/bench"
DOMAIN = "rack-big"
INTERVAL = 30.0  # witness.interval's default
CONCURRENCY = 32


def status(host: str, att: SoftwareAttestor, rev_read: int, span: int) -> dict[str, Any]:
    c = att.clock()
    return {
        "version": 1,
        "host_id": host,
        "failure_domain": DOMAIN,
        "boot_id": "0123456789abcdef0123456789abcdef",
        "role": "agent",
        "summary": "clean",
        "orderly": True,
        "since_reset_s": 86400.0,
        "since_reset_source": "tpm",
        "clock": {k: c[k] for k in ("clock", "reset_count", "restart_count")},
        "seq": 2880,
        "rev_read": rev_read,
        "prev_rev": max(1, rev_read - span),
        "interval_s": INTERVAL,
        "time": time.time(),
        "decision": {
            "boot_id": "0123456789abcdef",
            "time": time.time(),
            "action": "normal",
            "kind": "clean",
            "exit_code": 0,
            "error": None,
            "reasons": ["local evidence: clean", "the previous shutdown was orderly"],
        },
    }


async def populate(client: EtcdClient, hosts: list[str], atts: dict[str, SoftwareAttestor]) -> int:
    """Every host's last heartbeat, as its agent writes it (read, quote, put); no alive
    keys: every host has stopped (the power outage)."""
    sem = asyncio.Semaphore(CONCURRENCY)
    # One put per host per interval; the store must have advanced that far already (a
    # fresh etcd starts at revision 1): filler writes stand in for the previous interval.
    span = max(len(hosts), 2 * CONCURRENCY)
    for i in range(max(0, span - await client.revision(PREFIX))):
        await client.put(f"/bench-filler/{i % 64}", b"x")

    async def one(h: str) -> None:
        async with sem:
            key = core.heartbeat_key(PREFIX, DOMAIN, h)
            rev = await client.revision(key)
            st = status(h, atts[h], rev, span)
            await client.put(key, core.make_record(st, atts[h].quote(core.qualifying_data(st))))

    await asyncio.gather(*(one(h) for h in hosts))
    return await client.revision(PREFIX)


def read_and_decide(cfg: Any, inv: Any, me: str, n: int) -> tuple[float, float, Any, Any]:
    t0 = time.perf_counter()
    v = read_domain(cfg, inv, me)
    t1 = time.perf_counter()
    results = [PeerResult(p, _unreachable()) for p in v.classes]
    verdict = decide_counts(Reading.ABNORMAL, 30.0, results, n, Policy("50%"), v.classes)
    t2 = time.perf_counter()
    return (t1 - t0) * 1000, (t2 - t1) * 1000, v, verdict


def _unreachable() -> Any:
    from recover.core.protocol import Outcome

    return Outcome.UNREACHABLE


def read_bench(etcd: Etcd, n: int, runs: int) -> list[tuple[str, int, float, float, int]]:
    """(label, peers, read ms, verdict ms, classified same) for a 2-peer baseline and n."""
    rows = []
    for size, label in ((3, "baseline: 2 peers"), (n, f"{n - 1} peers")):
        hosts = [f"h{i:05d}" for i in range(size)]
        atts = {h: SoftwareAttestor() for h in hosts}
        global DOMAIN
        DOMAIN = f"rack-{size}"
        inv = parse([entry(h, 7469, atts[h].pem, DOMAIN) for h in hosts])
        client = EtcdClient(etcd.endpoints_setting, timeout=60)
        asyncio.run(populate(client, hosts, atts))
        cfg = config.load(
            None,
            {
                "witness.endpoints": etcd.endpoints_setting,
                "witness.prefix": PREFIX,
                "witness.deadline": "60",
            },
            env={},
            read_files=False,
        )
        read_and_decide(cfg, inv, hosts[0], size - 1)  # warm-up
        reads, decides = [], []
        v = verdict = None
        for _ in range(runs):
            r, d, v, verdict = read_and_decide(cfg, inv, hosts[0], size - 1)
            reads.append(r)
            decides.append(d)
        assert v is not None and verdict is not None and not v.error, v
        same = sum(1 for c in v.classes.values() if c is core.WitnessClass.SAME)
        assert same == size - 1, v.to_json()["peers"]
        assert str(verdict.kind) == "correlated-failure", verdict.reasons
        rows.append((label, size - 1, statistics.median(reads), statistics.median(decides), same))
    return rows


async def write_load(etcd: Etcd, n: int, seconds: float) -> dict[str, float]:
    """n hosts heartbeating at INTERVAL for ``seconds``: keepalive + revision read + put."""
    hosts = [f"w{i:05d}" for i in range(n)]
    att = SoftwareAttestor()
    client = EtcdClient(etcd.endpoints_setting, timeout=30)
    sem = asyncio.Semaphore(CONCURRENCY)
    leases: dict[str, str] = {}

    async def grant(h: str) -> None:
        async with sem:
            leases[h] = await client.grant(int(INTERVAL * 3))
            await client.put(core.alive_key(PREFIX, "rack-w", h), h.encode(), lease=leases[h])

    await asyncio.gather(*(grant(h) for h in hosts))
    # One signed record per host, made in advance (the bench's stand-in for the quote).
    st = status("w00000", att, 1, n)
    record = core.make_record(st, att.quote(core.qualifying_data(st)))
    rate = n / INTERVAL
    total = int(rate * seconds)
    done = 0
    lag: list[float] = []
    loop = asyncio.get_running_loop()
    sent0 = client.bytes_sent
    cpu0 = cpu_seconds(etcd.members[0].pid)
    me0 = time.process_time()
    t0 = loop.time()

    async def beat(i: int) -> None:
        nonlocal done
        h = hosts[i % n]
        due = t0 + i / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
        async with sem:
            lag.append(loop.time() - due)
            await client.keepalive(leases[h])
            await client.revision(PREFIX)
            await client.put(core.heartbeat_key(PREFIX, "rack-w", h), record)
            done += 1

    await asyncio.gather(*(beat(i) for i in range(total)))
    wall = loop.time() - t0
    return {
        "target_per_s": rate,
        "done_per_s": done / wall,
        "value_bytes_per_s": (client.bytes_sent - sent0) / wall,
        "record_bytes": len(record),
        "etcd_cores": (cpu_seconds(etcd.members[0].pid) - cpu0) / wall,
        "client_cores": (time.process_time() - me0) / wall,
        "lag_p50_ms": statistics.median(lag) * 1000,
        "lag_max_ms": max(lag) * 1000,
        "wall_s": wall,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    with Etcd(1) as etcd:
        t0 = time.perf_counter()
        reads = read_bench(etcd, args.hosts, args.runs)
        print(f"populated and read in {time.perf_counter() - t0:.0f} s")
        wl = asyncio.run(write_load(etcd, args.hosts, args.seconds))
    base = reads[0][2] + reads[0][3]
    lines = [
        "| run | peers | witnessed same | range read + verify ms | verdict ms | vs 2 peers |",
        "|---|---|---|---|---|---|",
    ]
    for label, n, r, d, same in reads:
        lines.append(f"| {label} | {n} | {same} | {r:.1f} | {d:.1f} | {(r + d) / base:.0f}x |")
    table = "\n".join(lines)
    wtable = (
        "| hosts | interval s | heartbeats/s target | achieved | record bytes | value bytes/s "
        "| etcd CPU (cores) | load generator CPU (cores) | schedule lag p50 / max ms |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        f"| {args.hosts} | {INTERVAL:g} | {wl['target_per_s']:.0f} | {wl['done_per_s']:.0f} | "
        f"{wl['record_bytes']:.0f} | {wl['value_bytes_per_s'] / 1024:.0f} KiB/s | "
        f"{wl['etcd_cores']:.2f} | {wl['client_cores']:.2f} | "
        f"{wl['lag_p50_ms']:.0f} / {wl['lag_max_ms']:.0f} |"
    )
    print(table)
    print(wtable)
    if args.write_docs:
        from bench.perfdoc import reproduce, write_section

        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        section = (
            "## Witness (etcd)\n\n"
            f"Measured {now} on this machine ({os.cpu_count()} cores, load average {load:.1f} "
            "at the start: other work shares the cores), one etcd 3.4.23 member "
            "(Debian's etcd-server) on loopback with its data directory on local disk. "
            "Reproduce:\n\n"
            f"    {reproduce('witness', f'--hosts {args.hosts} --seconds {args.seconds:g} --runs {args.runs} --write-docs')}"
            "\n\n"
            "**Read + verdict.** A domain whose hosts all stopped: every host's last "
            "heartbeat is in etcd (written as the agent writes it: revision read, "
            "software-signed quote over the status, put), no lease is alive. The payload "
            "path (`recover.peers.witness.read_domain`: ONE range request over the domain's "
            "prefix through the JSON gateway, base64 and JSON decoding, every record's "
            "quote verified against the inventory, classification) and then the verdict "
            f"with every peer unreachable; median of {args.runs} runs after a warm-up; the "
            "baseline is a domain of two peers in the same run.\n\n"
            f"{table}\n\n"
            "**Write load.** Each simulated host does what the agent does every "
            "`witness.interval`: a lease keepalive, a revision read (count-only range), "
            "one put of its record. The record is signed once in advance (a precomputed "
            "software signature stands in for the TPM quote: this measures etcd and the "
            "wire). Heartbeats are scheduled evenly at hosts / interval per second for "
            f"{args.seconds:g} s from one asyncio process ({CONCURRENCY} requests in "
            "flight, one TCP connection per request as the product's client does). "
            "*Achieved* below target, or a growing schedule lag, means this machine (etcd "
            "and the load generator share its 2 cores) could not keep up; etcd CPU is "
            "its user+system time over the run's wall time.\n\n"
            f"{wtable}\n\n"
            "Value bytes are the records alone; on the wire each put is base64 in JSON "
            "(about 4/3 of that plus ~200 bytes of HTTP and JSON), and etcd's WAL writes "
            "each put once per member.\n\n"
            "**What the figures say.** The read is CPU-bound in the reader, not in etcd "
            "(about 0.4 ms of each record's cost is the ECDSA P-256 verification on this "
            "machine); compare the per-record cost with `witness.deadline` (3 s by "
            "default): a domain too large for it is decided without the witness. The "
            "analysis of the figures is in docs/witness.md (Scale).\n"
        )
        write_section("## Witness (etcd)", section)
        print("wrote docs/performance.md section 'Witness (etcd)'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
