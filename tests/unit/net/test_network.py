"""Network choice: fake interface tables for the rules, the real table for the reads."""

from __future__ import annotations

import socket

import pytest

from jobstrap.errors import NetworkError
from jobstrap.net.network import (
    Interface,
    address_host,
    choose_address,
    choose_interface,
    describe_interfaces,
    list_interfaces,
    parse_preference,
    route_source_address,
)

LO = Interface("lo", ("127.0.0.1/8",), mtu=65536)
ETH0 = Interface("eth0", ("10.0.0.3/24",), mtu=1500)
IB0 = Interface("ib0", ("10.1.0.3/24",), mtu=2044)
HSN0 = Interface("hsn0", ("10.2.0.3/16",), mtu=9000)
ENP = Interface("enp1s0", ("192.168.5.3/24",))

COMPUTE_NODE = [LO, ETH0, IB0]
SLINGSHOT_NODE = [LO, ETH0, HSN0]
LOGIN_NODE = [LO, ETH0]


def no_route(_peer: str) -> str | None:
    return None


def test_auto_prefers_infiniband_over_ethernet() -> None:
    chosen = choose_interface(interfaces=[LO, ETH0, IB0], route=no_route)

    assert chosen.name == "ib0"


def test_auto_prefers_infiniband_over_slingshot_over_ethernet() -> None:
    assert choose_interface(interfaces=[ETH0, HSN0, IB0], route=no_route).name == "ib0"
    assert choose_interface(interfaces=[ETH0, HSN0], route=no_route).name == "hsn0"
    assert choose_interface(interfaces=[ENP, ETH0], route=no_route).name == "eth0"


def test_auto_prefers_an_ipoib_interface_whatever_its_name() -> None:
    ipoib = Interface("ibp65s0f0", ("10.1.0.3/24",), infiniband=True)
    odd = Interface("fabric0", ("10.9.0.3/24",), infiniband=True)

    assert choose_interface(interfaces=[ETH0, odd], route=no_route).name == "fabric0"
    assert choose_interface(interfaces=[ETH0, ipoib], route=no_route).name == "ibp65s0f0"


def test_auto_skips_interfaces_that_are_down_or_have_no_address() -> None:
    down = Interface("ib0", ("10.1.0.3/24",), is_up=False)
    bare = Interface("ib1", ())

    chosen = choose_interface(interfaces=[down, bare, ETH0], route=no_route)

    assert chosen.name == "eth0"


def test_auto_falls_back_to_any_other_interface_before_failing() -> None:
    bond = Interface("bond0", ("10.5.0.3/24",))

    assert choose_interface(interfaces=[LO, bond], route=no_route).name == "bond0"


def test_auto_never_chooses_loopback_for_a_multi_host_run() -> None:
    with pytest.raises(NetworkError) as error:
        choose_interface(interfaces=[LO], route=no_route, hostname="node2")

    message = str(error.value)
    assert "node2" in message
    assert "lo 127.0.0.1/8 (loopback)" in message


def test_auto_never_routes_to_loopback_for_a_remote_peer() -> None:
    chosen = choose_interface(
        interfaces=[LO, ETH0], peer="tls://172.16.0.1:8786", route=lambda _ip: "127.0.0.1"
    )

    assert chosen.name == "eth0"


def test_auto_chooses_loopback_when_every_rank_is_on_one_host() -> None:
    chosen = choose_interface(interfaces=[LO], allow_loopback=True, route=no_route)

    assert chosen.name == "lo"


def test_auto_still_prefers_a_real_interface_when_loopback_is_allowed() -> None:
    chosen = choose_interface(interfaces=[LO, ETH0], allow_loopback=True, route=no_route)

    assert chosen.name == "eth0"


def test_auto_chooses_loopback_to_reach_a_scheduler_on_loopback() -> None:
    chosen = choose_interface(interfaces=[LO, ETH0], peer="tcp://127.0.0.1:8786", route=no_route)

    assert chosen.name == "lo"


def test_auto_chooses_the_fastest_interface_on_the_peers_subnet() -> None:
    chosen = choose_interface(interfaces=COMPUTE_NODE, peer="tls://10.1.0.1:4000", route=no_route)

    assert chosen.name == "ib0"


def test_auto_follows_a_scheduler_that_is_only_on_ethernet() -> None:
    # A login-node scheduler without ib0: workers must listen where it can reach them.
    chosen = choose_interface(interfaces=COMPUTE_NODE, peer="tls://10.0.0.1:4000", route=no_route)

    assert chosen.name == "eth0"


def test_auto_uses_the_route_to_a_peer_on_no_local_subnet() -> None:
    seen: list[str] = []

    def route(peer_ip: str) -> str | None:
        seen.append(peer_ip)
        return "10.0.0.3"

    chosen = choose_interface(interfaces=COMPUTE_NODE, peer="tls://172.20.1.1:4000", route=route)

    assert chosen.name == "eth0"
    assert seen == ["172.20.1.1"]


def test_auto_falls_back_to_preference_when_the_peer_has_no_route() -> None:
    chosen = choose_interface(interfaces=COMPUTE_NODE, peer="172.20.1.1", route=no_route)

    assert chosen.name == "ib0"


def test_explicit_interface_is_obeyed_over_preference() -> None:
    chosen = choose_interface("eth0", interfaces=COMPUTE_NODE)

    assert chosen.name == "eth0"


def test_explicit_list_takes_the_first_that_exists() -> None:
    assert choose_interface("ib0,eth0", interfaces=LOGIN_NODE).name == "eth0"
    assert choose_interface(["ib0", "eth0"], interfaces=COMPUTE_NODE).name == "ib0"


def test_explicit_glob_matches_in_name_order() -> None:
    ib1 = Interface("ib1", ("10.3.0.3/24",))

    assert choose_interface("ib*", interfaces=[ETH0, ib1, IB0]).name == "ib0"


def test_explicit_missing_interface_fails_listing_the_nodes_interfaces() -> None:
    with pytest.raises(NetworkError) as error:
        choose_interface("ib0", interfaces=LOGIN_NODE, hostname="login1")

    message = str(error.value)
    assert message.startswith("login1: requested interface ib0")
    assert "'ib0' not found" in message
    assert "eth0 10.0.0.3/24" in message
    assert "lo 127.0.0.1/8 (loopback)" in message


def test_explicit_interface_that_is_down_says_so() -> None:
    down = Interface("ib0", ("10.1.0.3/24",), is_up=False)

    with pytest.raises(NetworkError, match="ib0 is down"):
        choose_interface("ib0", interfaces=[ETH0, down])


def test_explicit_interface_without_ipv4_says_so() -> None:
    with pytest.raises(NetworkError, match="ib0 has no IPv4 address"):
        choose_interface("ib0", interfaces=[ETH0, Interface("ib0", ())])


def test_explicit_loopback_is_allowed() -> None:
    assert choose_interface("lo", interfaces=COMPUTE_NODE).name == "lo"


def test_choose_address_returns_the_first_ipv4_address() -> None:
    two = Interface("ib0", ("10.1.0.3/24", "10.1.1.3/24"))

    assert choose_address("ib0", interfaces=[two]) == "10.1.0.3"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, None),
        ("", None),
        ("auto", None),
        ("ib0", ("ib0",)),
        ("ib0, eth0", ("ib0", "eth0")),
        (["hsn*", "eth0"], ("hsn*", "eth0")),
    ],
)
def test_parse_preference_normalises_requests(
    given: str | list[str] | None, expected: tuple[str, ...] | None
) -> None:
    assert parse_preference(given) == expected


@pytest.mark.parametrize(
    ("address", "host"),
    [
        ("tls://10.1.0.1:8786", "10.1.0.1"),
        ("tcp://node1:8786", "node1"),
        ("10.1.0.1:8786", "10.1.0.1"),
        ("node1", "node1"),
        ("tcp://[fd00::2]:8786", "fd00::2"),
    ],
)
def test_address_host_extracts_the_host(address: str, host: str) -> None:
    assert address_host(address) == host


def test_interface_kinds_are_named() -> None:
    kinds = {i.name: i.kind for i in [LO, ETH0, IB0, HSN0, Interface("bond0", ())]}

    assert kinds == {
        "lo": "loopback",
        "eth0": "ethernet",
        "ib0": "infiniband",
        "hsn0": "slingshot",
        "bond0": "other",
    }


def test_describe_lists_interfaces_sorted_with_notes() -> None:
    text = describe_interfaces([IB0, Interface("ifb0", (), is_up=False), LO])

    assert text == (
        "ib0 10.1.0.3/24 (infiniband); ifb0 no IPv4 address (down); lo 127.0.0.1/8 (loopback)"
    )


def test_list_interfaces_reads_this_hosts_loopback() -> None:
    table = {i.name: i for i in list_interfaces()}

    assert "lo" in table
    assert table["lo"].loopback
    assert "127.0.0.1" in table["lo"].ipv4
    assert table["lo"].prefixlens[table["lo"].ipv4.index("127.0.0.1")] == 8


def test_list_interfaces_matches_the_kernels_address_list() -> None:
    import psutil

    expected = {
        (name, snic.address)
        for name, snics in psutil.net_if_addrs().items()
        for snic in snics
        if snic.family == socket.AF_INET
    }

    listed = {(i.name, a) for i in list_interfaces() for a in i.ipv4}

    assert listed == expected


def test_route_source_address_finds_loopback_for_loopback() -> None:
    assert route_source_address("127.0.0.1") == "127.0.0.1"


def test_route_source_address_names_a_local_address_for_a_local_peer() -> None:
    real = [i for i in list_interfaces() if i.is_up and i.ipv4 and not i.loopback]
    if not real:
        pytest.skip("this host has no non-loopback IPv4 interface")
    own = real[0].ipv4[0]

    source = route_source_address(own)

    assert source is not None
    assert source in {a for i in list_interfaces() for a in i.ipv4}


def test_real_auto_choice_on_this_host_is_not_loopback_when_a_real_interface_exists() -> None:
    table = list_interfaces()
    if not any(i.is_up and i.ipv4 and not i.loopback for i in table):
        pytest.skip("this host has no non-loopback IPv4 interface")

    chosen = choose_interface(interfaces=table)

    assert not chosen.loopback
