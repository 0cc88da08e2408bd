"""The payload's wait for a route to its peers (recover/boot/network.py) and the retired
kernel option (recover.config.retired_kernel_options): pure, from /proc texts."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from recover import config
from recover.boot import network

ROUTE = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
    "eth0\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
    "eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    "lo\t0000007F\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n"
    "eth1\t0000A8C0\t00000000\t0000\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"  # not up
)
ROUTE_LINK_ONLY = ROUTE.splitlines()[0] + "\n" + ROUTE.splitlines()[2] + "\n"
IPV6 = (
    "fec00000000000000000000000000000 40 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n"
    "fe800000000000000000000000000000 40 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n"
    "00000000000000000000000000000001 80 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 00000000 00000002 00000000 80200001 lo\n"
)


def test_ipv4_routes_default_and_link() -> None:
    routes = network.parse_ipv4_routes(ROUTE)
    assert routes == [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("10.0.2.0/24")]


def test_ipv6_routes_skip_loopback_and_link_local() -> None:
    assert network.parse_ipv6_routes(IPV6) == [ipaddress.ip_network("fec0::/64")]


@pytest.mark.parametrize(
    ("hosts", "routes", "missing"),
    [
        (["10.0.2.101", "192.0.2.7"], ROUTE, []),  # the default route covers both
        (["10.0.2.101", "192.0.2.7"], ROUTE_LINK_ONLY, ["192.0.2.7"]),
        (["fec0::101"], ROUTE, ["fec0::101"]),  # an IPv4 default does not route IPv6
        (["peer-a.example"], "", ["peer-a.example"]),  # a name: needs some route
        (["peer-a.example"], ROUTE_LINK_ONLY, []),
    ],
)
def test_unrouted(hosts: list[str], routes: str, missing: list[str]) -> None:
    assert network.unrouted(hosts, network.parse_ipv4_routes(routes)) == missing


def test_unrouted_ipv6() -> None:
    routes = network.parse_ipv6_routes(IPV6)
    assert network.unrouted(["fec0::101", "2001:db8::1"], routes) == ["2001:db8::1"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_wait_returns_once_the_route_appears() -> None:
    clock = FakeClock()
    tables = iter(["", "", ROUTE_LINK_ONLY])  # DHCP answers on the third look

    def read() -> list[network.IPNetwork]:
        return network.parse_ipv4_routes(next(tables))

    assert (
        network.wait_for_routes(["10.0.2.101"], 15, read=read, clock=clock, sleep=clock.sleep) == []
    )
    assert clock.now == pytest.approx(2 * network.POLL_S)


def test_wait_is_bounded_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    caplog.set_level(logging.WARNING)
    left = network.wait_for_routes(
        ["10.0.2.101"], 3, read=lambda: [], clock=clock, sleep=clock.sleep
    )
    assert left == ["10.0.2.101"]
    assert 3 <= clock.now < 3 + 2 * network.POLL_S
    assert "no route to 1 of 1 peers" in caplog.text and "ip=" in caplog.text


def test_no_wait_when_zero() -> None:
    clock = FakeClock()
    assert network.wait_for_routes(
        ["10.0.2.101"], 0, read=lambda: [], clock=clock, sleep=clock.sleep
    )
    assert clock.now == 0


def test_retired_option_warns() -> None:
    assert config.retired_kernel_options("ro ip=dhcp quiet") == []
    for cmdline in ("rd.host_recover.net=10.0.2.15/24,10.0.2.2", "rd.host-recover.net"):
        (msg,) = config.retired_kernel_options(f"ro {cmdline} quiet")
        assert "no longer read" in msg and "ip=" in msg
    # and it is no setting: the kernel options parser ignores it
    assert config.parse_kernel_cmdline("rd.host_recover.net=10.0.2.15/24,10.0.2.2") == {}
