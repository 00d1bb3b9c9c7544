"""Network interfaces and the choice of the address Dask listens on.

HPC nodes usually have a slow management Ethernet and a fast fabric (InfiniBand
``ib*``, HPE Slingshot ``hsn*``). Dask picks neither on purpose, and a worker that
advertises an address its peers cannot reach makes a job hang until walltime. The
rules here, in order:

1. an explicit interface list (names or globs, first match wins) is obeyed, and a
   name that does not exist on this node fails fast with :class:`NetworkError`
   listing what the node has;
2. otherwise (``"auto"``) the preference list ``ib*``, ``hsn*``, ``eth*``, ``en*``
   decides. When the peer we must reach (the scheduler) is known, the first
   preferred interface whose subnet contains the peer wins, then the interface the
   kernel routes the peer through (a UDP ``connect`` to the peer itself: no packet
   is sent, and never to any other address), then plain preference order;
3. loopback is never chosen unless asked for explicitly, allowed because every
   rank is on one host, or the peer itself is a loopback address.

The selection (:func:`choose_interface`) is pure given an interface table, so tests
pass fake tables; :func:`list_interfaces` is the only part that reads the system.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from jobstrap.errors import NetworkError

__all__ = [
    "ARPHRD_INFINIBAND",
    "DEFAULT_PREFERENCE",
    "Interface",
    "address_host",
    "choose_address",
    "choose_interface",
    "describe_interfaces",
    "list_interfaces",
    "parse_preference",
    "route_source_address",
]

#: ``/sys/class/net/<if>/type`` of an IP-over-InfiniBand interface (if_arp.h).
ARPHRD_INFINIBAND = 32
_ARPHRD_LOOPBACK = 772

#: The order ``"auto"`` tries interfaces in: fabric first, Ethernet last. The
#: ``ib*`` entry also matches an IPoIB interface (ARP type 32) whatever its name.
DEFAULT_PREFERENCE: tuple[str, ...] = ("ib*", "hsn*", "eth*", "en*")

_SYS_CLASS_NET = Path("/sys/class/net")

RouteLookup = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Interface:
    """One network interface of this node.

    Parameters
    ----------
    name
        Kernel name, e.g. ``"ib0"``.
    ipv4
        IPv4 addresses, optionally with a prefix length (``"10.1.0.3/24"``); they
        are stored without it, the prefix lengths go to :attr:`prefixlens`.
    is_up
        Whether the link is up.
    mtu
        Maximum transmission unit (0 if unknown).
    infiniband
        IP over InfiniBand: ARP type 32, or a name starting with ``ib``.
    """

    name: str
    ipv4: tuple[str, ...] = ()
    is_up: bool = True
    mtu: int = 0
    infiniband: bool = False
    prefixlens: tuple[int, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        addresses: list[str] = []
        prefixes: list[int] = []
        given = list(self.prefixlens)
        for index, entry in enumerate(self.ipv4):
            iface = ipaddress.IPv4Interface(entry)
            addresses.append(str(iface.ip))
            if "/" in entry:
                prefixes.append(iface.network.prefixlen)
            elif index < len(given):
                prefixes.append(given[index])
            else:
                prefixes.append(32)  # unknown: only the address itself
        object.__setattr__(self, "ipv4", tuple(addresses))
        object.__setattr__(self, "prefixlens", tuple(prefixes))
        if self.name.startswith("ib") and not self.infiniband:
            object.__setattr__(self, "infiniband", True)

    @property
    def address(self) -> str | None:
        """The first IPv4 address, or ``None``."""
        return self.ipv4[0] if self.ipv4 else None

    @property
    def loopback(self) -> bool:
        """Whether this is the loopback interface."""
        if self.name == "lo":
            return True
        return bool(self.ipv4) and all(ipaddress.IPv4Address(a).is_loopback for a in self.ipv4)

    @property
    def kind(self) -> str:
        """``"infiniband"``, ``"slingshot"``, ``"ethernet"``, ``"loopback"`` or ``"other"``."""
        if self.loopback:
            return "loopback"
        if self.infiniband:
            return "infiniband"
        if self.name.startswith("hsn"):
            return "slingshot"
        if self.name.startswith(("eth", "en")):
            return "ethernet"
        return "other"

    @property
    def networks(self) -> tuple[ipaddress.IPv4Network, ...]:
        """The IPv4 networks this interface's addresses belong to."""
        return tuple(
            ipaddress.IPv4Interface(f"{a}/{p}").network
            for a, p in zip(self.ipv4, self.prefixlens, strict=True)
        )

    def reaches_directly(self, ip: str) -> bool:
        """Whether ``ip`` is in one of this interface's subnets."""
        try:
            target = ipaddress.IPv4Address(ip)
        except ValueError:
            return False
        return any(target in net for net in self.networks)

    def describe(self) -> str:
        """One short human description, e.g. ``"ib0 10.1.0.3/24 (infiniband)"``."""
        addresses = (
            ", ".join(f"{a}/{p}" for a, p in zip(self.ipv4, self.prefixlens, strict=True))
            or "no IPv4 address"
        )
        notes = [] if self.kind in {"ethernet", "other"} else [self.kind]
        if not self.is_up:
            notes.append("down")
        suffix = f" ({', '.join(notes)})" if notes else ""
        return f"{self.name} {addresses}{suffix}"


def describe_interfaces(interfaces: Iterable[Interface]) -> str:
    """Describe a table on one line, e.g. ``"eth0 10.0.0.3/24; lo 127.0.0.1/8 (loopback)"``."""
    text = "; ".join(i.describe() for i in sorted(interfaces, key=lambda i: i.name))
    return text or "no interfaces"


def _read_sys(name: str, attribute: str) -> str | None:
    try:
        return (_SYS_CLASS_NET / name / attribute).read_text().strip()
    except OSError:
        return None


def list_interfaces() -> list[Interface]:
    """Read this node's interfaces (psutil plus ``/sys/class/net``).

    Returns
    -------
    list of Interface
        Sorted by name, including interfaces that are down or have no IPv4 address
        (they still appear in error messages).
    """
    import psutil  # deferred: importing jobstrap.net.network must stay cheap

    addrs = psutil.net_if_addrs()
    stats = psutil.net_if_stats()
    result: list[Interface] = []
    for name in sorted(set(addrs) | set(stats)):
        ipv4: list[str] = []
        for snic in addrs.get(name, []):
            if snic.family != socket.AF_INET:
                continue
            if snic.netmask:
                ipv4.append(f"{snic.address}/{snic.netmask}")
            else:
                ipv4.append(snic.address)
        stat = stats.get(name)
        arp_type = _read_sys(name, "type")
        result.append(
            Interface(
                name=name,
                ipv4=tuple(ipv4),
                is_up=bool(stat.isup) if stat else False,
                mtu=int(stat.mtu) if stat else 0,
                infiniband=arp_type == str(ARPHRD_INFINIBAND),
            )
        )
    return result


def route_source_address(peer_ip: str) -> str | None:
    """Return the local address the kernel would use to reach ``peer_ip``.

    A UDP socket ``connect`` only consults the routing table; no packet is sent.
    It is only ever pointed at the peer itself.
    """
    try:
        family = socket.AF_INET6 if ":" in peer_ip else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((peer_ip, 9))  # port 9 (discard); nothing is transmitted
            return str(sock.getsockname()[0])
    except OSError:
        return None


def address_host(address: str) -> str:
    """Return the host part of ``"tls://10.1.0.1:8786"``, ``"10.1.0.1:8786"`` or ``"node1"``."""
    rest = address.split("://", 1)[-1]
    if rest.startswith("["):  # [v6]:port
        return rest[1:].split("]", 1)[0]
    if rest.count(":") == 1:
        return rest.rsplit(":", 1)[0]
    return rest


def _resolve(host: str) -> str | None:
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        return socket.gethostbyname(host)
    except OSError:
        return None


def parse_preference(preference: Sequence[str] | str | None) -> tuple[str, ...] | None:
    """Normalise an interface request.

    Returns ``None`` for automatic choice (``None``, ``""``, ``"auto"``), else the
    tuple of names/globs from a comma-separated string or a sequence.
    """
    if preference is None:
        return None
    items = preference.split(",") if isinstance(preference, str) else list(preference)
    names = tuple(item.strip() for item in items if item and item.strip())
    if not names or names == ("auto",):
        return None
    return names


def _matches(pattern: str, iface: Interface) -> bool:
    if fnmatchcase(iface.name, pattern):
        return True
    # IPoIB interfaces are not always called ib*; the ib* preference means "InfiniBand".
    return pattern == "ib*" and iface.infiniband


def _ordered_matches(pattern: str, interfaces: Sequence[Interface]) -> list[Interface]:
    return sorted((i for i in interfaces if _matches(pattern, i)), key=lambda i: i.name)


def _preference_order(table: Sequence[Interface]) -> list[Interface]:
    """Every interface, best first: preference list, then the rest by name, loopback last."""
    ordered: list[Interface] = []
    for pattern in DEFAULT_PREFERENCE:
        ordered.extend(i for i in _ordered_matches(pattern, table) if i not in ordered)
    rest = sorted((i for i in table if i not in ordered), key=lambda i: (i.loopback, i.name))
    return ordered + rest


def _usable(iface: Interface, allow_loopback: bool) -> bool:
    return iface.is_up and bool(iface.ipv4) and (allow_loopback or not iface.loopback)


def _hostname() -> str:
    return socket.gethostname()


def choose_interface(
    preference: Sequence[str] | str | None = "auto",
    *,
    interfaces: Sequence[Interface] | None = None,
    peer: str | None = None,
    allow_loopback: bool = False,
    route: RouteLookup | None = None,
    hostname: str | None = None,
) -> Interface:
    """Choose the interface to listen on.

    Parameters
    ----------
    preference
        ``"auto"`` (default), or interface names/globs in order of preference, as a
        sequence or a comma-separated string (``"ib0,eth0"``, ``"hsn*"``).
    interfaces
        The interface table; defaults to :func:`list_interfaces`.
    peer
        An address this node must reach (usually the scheduler's), in any of the
        forms ``"tls://10.1.0.1:8786"``, ``"10.1.0.1"``, ``"head"``. Used only by
        ``"auto"``.
    allow_loopback
        Allow loopback in automatic choice, for runs where every rank is on one
        host. Explicitly requested loopback (``"lo"``) is always allowed.
    route
        Route lookup (peer IP -> local source IP); defaults to
        :func:`route_source_address`. Tests pass a fake.
    hostname
        Name of this node in error messages; defaults to ``socket.gethostname()``.

    Returns
    -------
    Interface
        An interface that is up and has an IPv4 address.

    Raises
    ------
    NetworkError
        When no requested interface is usable, or no interface at all is; the
        message names this node and lists its interfaces and addresses.
    """
    table = list(list_interfaces() if interfaces is None else interfaces)
    names = parse_preference(preference)
    node = hostname or _hostname()

    if names is not None:
        return _choose_explicit(names, table, node)

    peer_ip = _resolve(address_host(peer)) if peer else None
    if peer_ip is not None and ipaddress.ip_address(peer_ip).is_loopback:
        # The peer is on this very host, so loopback reaches it.
        allow_loopback = True

    ordered = _preference_order(table)
    if peer_ip is not None:
        for iface in ordered:
            if _usable(iface, allow_loopback) and iface.reaches_directly(peer_ip):
                return iface
        source = (route or route_source_address)(peer_ip)
        if source is not None:
            for iface in ordered:
                if source in iface.ipv4 and _usable(iface, allow_loopback):
                    return iface

    for iface in ordered:
        if _usable(iface, allow_loopback):
            return iface
    reason = "no usable network interface (up, with an IPv4 address, not loopback)"
    if peer:
        reason += f" to reach {peer}"
    raise NetworkError(f"{node}: {reason}; interfaces here: {describe_interfaces(table)}")


def _choose_explicit(names: Sequence[str], table: Sequence[Interface], node: str) -> Interface:
    problems: list[str] = []
    for pattern in names:
        matches = (
            _ordered_matches(pattern, table)
            if any(c in pattern for c in "*?[")
            else [i for i in table if i.name == pattern]
        )
        if not matches:
            problems.append(f"{pattern!r} not found")
            continue
        for iface in matches:
            if _usable(iface, allow_loopback=True):
                return iface
        for iface in matches:
            if not iface.is_up:
                problems.append(f"{iface.name} is down")
            elif not iface.ipv4:
                problems.append(f"{iface.name} has no IPv4 address")
    requested = ",".join(names)
    raise NetworkError(
        f"{node}: requested interface {requested} is not usable here "
        f"({'; '.join(problems)}); interfaces here: {describe_interfaces(table)}"
    )


def choose_address(
    preference: Sequence[str] | str | None = "auto", *, peer: str | None = None, **more: Any
) -> str:
    """Return the IPv4 address of :func:`choose_interface`'s choice.

    Takes :func:`choose_interface`'s parameters (``allow_loopback``, ``interfaces``,
    ...), forwarded as they are.
    """
    iface = choose_interface(preference, peer=peer, **more)
    assert iface.address is not None  # _usable guarantees an address
    return iface.address
