"""The network for the peer query: wait, bounded, for a route to the peers.

dracut brings the network up from ``ip=`` (its network module, docs/boot.md#network) in
the background; the payload waits for it only when it is about to ask peers, so a clean
boot or a host alone never waits, and a network that never comes up costs at most
``peers.network_wait`` seconds before the query runs anyway (and finds the peers
unreachable: the verdict's business, not a hang).

"Up" means: the kernel has a route (its own interface's or a default one) to every peer
address that is an IP literal, read from /proc/net/route and /proc/net/ipv6_route (no
netlink, no subprocess). A host name counts as reachable once any non-loopback route
exists (it is resolved when asked).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

PROC_NET = "/proc/net"
RTF_UP = 0x0001
POLL_S = 0.05

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ipv4_routes(text: str) -> list[IPNetwork]:
    """The up routes of /proc/net/route (little-endian hex destination and mask), loopback
    interface excluded."""
    out: list[IPNetwork] = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 8 or f[0] == "lo" or not int(f[3], 16) & RTF_UP:
            continue
        dest = ipaddress.IPv4Address(int(f[1], 16).to_bytes(4, "little"))
        mask = ipaddress.IPv4Address(int(f[7], 16).to_bytes(4, "little"))
        out.append(ipaddress.IPv4Network(f"{dest}/{mask}", strict=False))
    return out


def parse_ipv6_routes(text: str) -> list[IPNetwork]:
    """The up routes of /proc/net/ipv6_route (dest, prefix length, ..., flags, device),
    loopback and link-local/multicast routes excluded (a peer is not on fe80::/64)."""
    out: list[IPNetwork] = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 10 or f[9] == "lo" or not int(f[8], 16) & RTF_UP:
            continue
        net = ipaddress.IPv6Network((bytes.fromhex(f[0]), int(f[1], 16)), strict=False)
        if net.is_link_local or net.is_multicast:
            continue
        out.append(net)
    return out


def read_routes(proc_net: str = PROC_NET) -> list[IPNetwork]:
    routes: list[IPNetwork] = []
    for name, parse in (("route", parse_ipv4_routes), ("ipv6_route", parse_ipv6_routes)):
        try:
            with open(os.path.join(proc_net, name)) as f:
                routes += parse(f.read())
        except OSError:  # no IPv6 in this kernel, or no /proc
            continue
    return routes


def unrouted(hosts: Iterable[str], routes: list[IPNetwork]) -> list[str]:
    """The hosts that no route covers (a host name: none while there is no route at all)."""
    out = []
    for host in hosts:
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            if not routes:
                out.append(host)
            continue
        if not any(addr.version == r.version and addr in r for r in routes):
            out.append(host)
    return out


def wait_for_routes(
    hosts: Iterable[str],
    wait: float,
    *,
    read: Callable[[], list[IPNetwork]] = read_routes,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Wait up to ``wait`` seconds until a route covers every host; returns the hosts
    still without one (empty: the network is up for the query)."""
    hosts = list(hosts)
    start = clock()
    missing = unrouted(hosts, read())
    while missing and clock() - start < wait:
        sleep(POLL_S)
        missing = unrouted(hosts, read())
    waited = clock() - start
    if missing:
        log.warning(
            "network: no route to %d of %d peers after %.1f s (%s): asking anyway; "
            "is ip= on the kernel command line? (docs/boot.md#network)",
            len(missing),
            len(hosts),
            waited,
            " ".join(missing[:4]),
        )
    elif waited >= POLL_S:
        log.info("network: a route to every peer after %.1f s", waited)
    return missing
