"""Where callbacks may go: public addresses, and what ``TAREA_CALLBACK_ALLOW`` opens.

A tenant names the callback URL, and the server POSTs to it from its own
network position. Left open, that lets any tenant make the server call cloud
metadata (169.254.169.254), anything listening on the host or the Docker
bridges, and the private network behind it. So by default a callback may go
only to a public address; the operator opens hosts and networks with
``TAREA_CALLBACK_ALLOW``.

The check runs twice: at submit, on what the URL alone says (a literal address,
or ``localhost``), and on every delivery attempt, on every address the host
name resolves to then. The attempt is then sent to one of those vetted
addresses (see :func:`tarea.dispatch.callbacks.pinned_request`), never to a
second resolution, so a name that answers differently the second time (DNS
rebinding) gets nowhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from tarea.errors import CallbackUrlNotAllowed, ConfigurationError, InvalidRequest

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Resolves a host name to its addresses (an ``OSError`` when it cannot).
Resolver = Callable[[str], Awaitable[list[IPAddress]]]

#: What ``localhost`` and its subdomains name, without asking anyone (RFC 6761).
LOCALHOST: tuple[IPAddress, ...] = (
    ipaddress.IPv4Address("127.0.0.1"),
    ipaddress.IPv6Address("::1"),
)

_HOST_NAME = re.compile(r"(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*")


def unwrap(address: IPAddress) -> IPAddress:
    """``address``, or the IPv4 address an IPv4-mapped IPv6 one (``::ffff:a.b.c.d``) carries."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_public(address: IPAddress) -> bool:
    """Whether ``address`` is one a callback may reach without being allowed.

    Refused: loopback, link-local (cloud metadata), private and unique-local
    (fc00::/7), reserved, multicast, unspecified, and whatever else is not
    globally reachable (e.g. 100.64.0.0/10, where some clouds keep their
    metadata service). The Docker bridges need no range of their own: the
    default bridge 172.17.0.0/16 and Docker's other default pools (the rest of
    172.16.0.0/12, 192.168.0.0/16, 10.0.0.0/8) are all ``is_private``.
    An IPv4-mapped IPv6 address is judged by its IPv4 address, and a 6to4 one
    by the IPv4 address it embeds as well.
    """
    address = unwrap(address)
    embedded = address.sixtofour if isinstance(address, ipaddress.IPv6Address) else None
    if embedded is not None and not is_public(embedded):
        return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_multicast
        or address.is_unspecified
    )


def kind(address: IPAddress) -> str:
    """What ``address`` is, as a refusal says it: "a loopback address", "a private address"..."""
    address = unwrap(address)
    checks = (
        ("a loopback address", address.is_loopback),
        ("a link-local address", address.is_link_local),
        ("the unspecified address", address.is_unspecified),
        ("a multicast address", address.is_multicast),
        ("a private address", address.is_private),
        ("a reserved address", address.is_reserved),
    )
    return next((words for words, true in checks if true), "a non-public address")


def normal_host(host: str) -> str:
    """``host`` as compared: lower case, without a trailing dot."""
    return host.lower().rstrip(".")


def literal_address(host: str) -> IPAddress | None:
    """The address ``host`` is written as, or None when it is a name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_localhost(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a name under it (always loopback, RFC 6761)."""
    name = normal_host(host)
    return name == "localhost" or name.endswith(".localhost")


def known_addresses(host: str) -> tuple[IPAddress, ...] | None:
    """The addresses ``host`` names without resolving it; None for a name to resolve."""
    address = literal_address(host)
    if address is not None:
        return (address,)
    if is_localhost(host):
        return LOCALHOST
    return None


@dataclass(frozen=True, slots=True)
class Allowlist:
    """What ``TAREA_CALLBACK_ALLOW`` opens beyond public addresses.

    ``hosts`` are exact names, ``suffixes`` come from ``*.name`` entries (any
    name under it), ``networks`` from CIDRs and single addresses. A callback to
    an allowed name may go to whatever that name resolves to.
    """

    hosts: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Allowlist:
        """The allowlist a comma-separated ``TAREA_CALLBACK_ALLOW`` value gives.

        Raises:
            ConfigurationError: an entry is neither a host name, ``*.name``, an
                address nor a CIDR.
        """
        hosts: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        for entry in filter(None, (e.strip() for e in text.split(","))):
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            name = normal_host(entry)
            if not _HOST_NAME.fullmatch(name) or re.fullmatch(r"[0-9.]+", name):
                raise ConfigurationError(
                    f"TAREA_CALLBACK_ALLOW entry {entry!r} is neither a host name, "
                    "*.domain, an address nor a CIDR"
                )
            if name.startswith("*."):
                suffixes.append(name[1:])
            else:
                hosts.add(name)
        return cls(frozenset(hosts), tuple(suffixes), tuple(networks))

    def allows_host(self, host: str) -> bool:
        """Whether the operator allowed the name ``host`` itself."""
        name = normal_host(host)
        return name in self.hosts or any(name.endswith(suffix) for suffix in self.suffixes)

    def allows_address(self, address: IPAddress) -> bool:
        """Whether a callback may go to ``address``: public, or in an allowed network."""
        address = unwrap(address)
        return is_public(address) or any(address in network for network in self.networks)


#: The allowlist of an empty ``TAREA_CALLBACK_ALLOW``: public addresses only.
NOTHING_ALLOWED = Allowlist()


def host_of(url: httpx.URL) -> str:
    """The host of ``url`` as sent to DNS and TLS: ASCII (punycode), no brackets."""
    return url.raw_host.decode("ascii")


def check_url(url: str, allow: Allowlist) -> None:
    """Refuse, at submit, a callback URL whose host alone says it is not allowed.

    A literal address and ``localhost`` are judged now; any other name is
    judged on every attempt, by what it resolves to then (:func:`vet`).

    Raises:
        CallbackUrlNotAllowed: the URL names an address that is not allowed.
        InvalidRequest: the URL is not one the server could call.
    """
    try:
        host = host_of(httpx.URL(url))
    except httpx.InvalidURL as exc:
        message = f"callback_url cannot be called: {exc}"
        raise InvalidRequest(message, field="callback_url") from None
    addresses = known_addresses(host)
    if addresses is None or allow.allows_host(host):
        return
    for address in addresses:
        if not allow.allows_address(address):
            raise CallbackUrlNotAllowed(_refusal(host, address), field="callback_url")


async def resolve(host: str) -> list[IPAddress]:
    """The addresses ``host`` resolves to, in the resolver's order, without repeats.

    Raises:
        OSError: the name does not resolve (``socket.gaierror``), cannot be
            (an empty or overlong label), or resolves to no IPv4 or IPv6 address.
    """
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except UnicodeError as exc:  # the idna codec refuses the name before any lookup
        raise OSError(f"{host!r} is not a name that can be resolved") from exc
    addresses: list[IPAddress] = []
    for family, _, _, _, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise OSError(f"{host!r} resolves to no IP address")
    return addresses


async def vet(url: httpx.URL, allow: Allowlist, resolver: Resolver = resolve) -> IPAddress:
    """The address to send a request for ``url`` to, once all its host's addresses pass.

    The host is resolved once, here; every address it has must be allowed
    (unless the operator allowed the name itself), and the first is the one to
    connect to.

    Raises:
        CallbackUrlNotAllowed: an address of the host is not allowed.
        OSError: the name does not resolve.
    """
    host = host_of(url)
    known = known_addresses(host)
    addresses = list(known) if known is not None else await resolver(host)
    if not allow.allows_host(host):
        for address in addresses:
            if not allow.allows_address(address):
                if known is None:
                    log.warning("callback host %r resolves to %s: refused", host, address)
                raise CallbackUrlNotAllowed(_refusal(host, address, resolved=known is None))
    return addresses[0]


def _refusal(host: str, address: IPAddress, *, resolved: bool = False) -> str:
    """Why a callback to ``host`` (at ``address``) is refused.

    An address ``host`` resolved to is not shown (it stays in the server's
    log): a tenant learns that the name is internal, not where it points.
    """
    if resolved:
        where = f"resolves to {kind(address)}"
    elif literal_address(host) is not None:
        where = f"is {kind(address)}"
    else:  # localhost
        where = f"stands for {address}, {kind(address)}"
    return (
        f"callback host {host!r} {where}; callbacks go only to public addresses "
        "unless the server's TAREA_CALLBACK_ALLOW allows it"
    )
