"""Peer fan-out (issue 5): time to verdict for N simulated peers vs one peer's round trip.

The peers run in one child process (testing/peersim.py: the product's own agent Server and
Responder, software-signed TPMS_ATTEST quotes); the client is recover.peers.query_all
and the product's verifier. Everything is on loopback; the machine's cores are shared by
the client and the peer process, so figures are an upper bound on a fleet's cost.

    .venv/bin/python -m bench.peers --sizes 10,100,1000 --runs 5 --write-docs
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

from testing.peersim import Fleet, SimPeer, SoftwareAttestor, entry

from recover.core.evidence import Reading  # noqa
from recover.core.protocol import Outcome, PeerResults  # noqa
from recover.core.verdict import EarlyStop, Policy, decide_counts  # noqa
from recover.peers.client import query_all  # noqa

ME = "bench-self"
DEADLINE = 1.0  # seconds, for the dead-peer run (the product default is 5)


def run(
    n: int, runs: int, dead_every: int = 0, early: bool = False
) -> tuple[float, float, PeerResults]:
    """(median wall ms, median requester CPU ms, last results)."""
    att = SoftwareAttestor()
    me = entry(ME, 9, att.pem)
    sims = [
        SimPeer(f"p{i:04d}", behaviour="silent" if dead_every and i % dead_every == 0 else "ok")
        for i in range(n)
    ]
    pol = Policy("50%")

    times: list[float] = []
    cpu: list[float] = []
    res: PeerResults | None = None
    with Fleet(sims, [me]) as fleet:
        inv = fleet.inventory(me)
        query_all(inv, ME, att, deadline=5, timeout=2, retries=0)  # warm-up
        for _ in range(runs):
            t0, c0 = time.perf_counter(), time.process_time()
            res = query_all(
                inv,
                ME,
                att,
                deadline=DEADLINE if dead_every else 10.0,
                timeout=DEADLINE if dead_every else 5.0,
                retries=0,
                stop_early=EarlyStop(Reading.ABNORMAL, 20.0, n, pol) if early else None,
            )
            decide_counts(Reading.ABNORMAL, 20.0, res.results, res.domain_size, pol)
            times.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
    assert res is not None
    return statistics.median(times), statistics.median(cpu), res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    load = os.getloadavg()[0]
    base, base_cpu, one = run(1, max(args.runs, 20))
    assert one.verified == 1, one
    rows = [("1 peer (baseline: one round trip + verdict)", 1, base, base_cpu, one)]
    for n in sizes:
        ms, c, res = run(n, args.runs)
        assert res.verified == n, res.to_json()["counts"]
        rows.append((f"{n} peers, all answers", n, ms, c, res))
        ms, c, res = run(n, args.runs, early=True)
        rows.append((f"{n} peers, stop when settled (quorum 50%)", n, ms, c, res))
    big = max(sizes)
    ms, c, res = run(big, max(1, args.runs // 2), dead_every=10)
    rows.append((f"{big} peers, a tenth silent, deadline {DEADLINE:g} s", big, ms, c, res))
    ms, c, res = run(big, max(1, args.runs // 2), dead_every=10, early=True)
    rows.append((f"{big} peers, a tenth silent, stop when settled", big, ms, c, res))

    lines = [
        "| run | peers | verified | timeout/skipped | median ms | vs 1 peer | requester CPU ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, n, ms, c, r in rows:
        lines.append(
            f"| {label} | {n} | {r.verified} | "
            f"{r.count(Outcome.TIMEOUT)}/{r.count(Outcome.SKIPPED)} | {ms:.1f} | "
            f"{ms / base:.1f}x | {c:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.write_docs:
        from bench.perfdoc import reproduce, write_section

        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        section = (
            "## Peer fan-out\n\n"
            f"Measured {now} on this machine ({os.cpu_count()} cores, load average {load:.1f} "
            "at the start: other work shares the cores), loopback, simulated "
            "peers in one child process (the product's agent server with software-signed "
            "TPMS_ATTEST quotes; the product's client and verifier), median of "
            f"{args.runs} runs after a warm-up (baseline: 20). Every query carries one "
            "requester quote that every peer verifies, and every reply is verified "
            "(ECDSA P-256) before it counts. Reproduce:\n\n"
            f"    {reproduce('peers', f'--sizes {args.sizes} --runs {args.runs} --write-docs')}"
            "\n\n"
            f"{table}\n\n"
            "In-flight requests are capped at 64 (a request waiting over 250 ms gives its "
            "slot back). The requester and the peer process share the machine's cores, so "
            "wall times include all peers' CPU (each verifies the request's quote and signs "
            "its reply), which a fleet spreads over its hosts; *requester CPU* is this "
            "host's own cost (about 0.1 ms of it per reply is the ECDSA verification). "
            "With a tenth of the peers silent the query returns at the deadline with every "
            "live peer counted; stopping when the verdict is settled returns as soon as the "
            "quorum is reached, so a silent tenth costs nothing.\n"
        )
        write_section("## Peer fan-out", section)
        print("wrote docs/performance.md section 'Peer fan-out'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
