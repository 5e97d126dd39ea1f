"""Which registry hosts a tenant's image may make the Docker engine contact.

An image reference names its registry (``127.0.0.1:8861/x:1`` names
``127.0.0.1:8861``), and pulling it makes the engine connect there from the
server's host: left open, any tenant could aim the engine at loopback, cloud
metadata (169.254.169.254) or the private network. So, when API keys are on
(tenants do not trust one another), a registry host written as an address, or
as ``localhost``, must be a public address (the policy of
:mod:`tarea.dispatch.outbound`, shared with callbacks) unless the operator
opens it in ``TAREA_IMAGE_ALLOW`` with a pattern that writes that host out
(``127.0.0.1:5000/*``, ``127.0.0.1:*``; a wildcard host such as ``*`` opens
no private host).

Names (``registry.example.com``, ``docker.io``) are not resolved here: the
engine resolves them itself, when it pulls.
"""

from __future__ import annotations

import ipaddress
import socket

from tarea.dispatch.outbound import (
    IPAddress,
    is_localhost,
    is_public,
    kind,
    known_addresses,
    normal_host,
)
from tarea.domain.images import ImageReference, matches_any
from tarea.errors import ImageNotAllowed


def registry_host(registry: str) -> str:
    """The host of a registry (``host[:port]``, ``[v6][:port]``): no port, no brackets."""
    if registry.startswith("["):
        return registry[1:].partition("]")[0]
    return registry.partition(":")[0]


def numeric_address(host: str) -> IPAddress | None:
    """The IPv4 address a numeric host such as ``127.1`` or ``0x7f000001`` stands for.

    Resolvers read these old forms (``inet_aton``) as addresses without any
    lookup, so they are judged as addresses too. None when ``host`` is not one.
    """
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def host_addresses(host: str) -> tuple[IPAddress, ...] | None:
    """The addresses ``host`` names without resolving it; None for a name."""
    known = known_addresses(host)
    if known is not None:
        return known
    numeric = numeric_address(host)
    return None if numeric is None else (numeric,)


def opened_by(reference: ImageReference, patterns: list[str]) -> bool:
    """Whether a pattern that writes out ``reference``'s registry host matches it.

    The pattern's host (before its first ``/``, port aside) must be the
    registry's host itself, without wildcards: ``127.0.0.1:*`` and
    ``127.0.0.1:5000/team/*`` open 127.0.0.1; ``*`` and ``127.0.0.*`` open nothing.
    """
    host = normal_host(registry_host(reference.registry))
    written = [p for p in patterns if normal_host(registry_host(p.partition("/")[0])) == host]
    return matches_any(reference, written)


def check_registry(reference: ImageReference, patterns: list[str]) -> None:
    """Refuse ``reference`` when its registry host is an address that is not public.

    Raises:
        ImageNotAllowed: the host is loopback, link-local, private, unique-local
            or otherwise not public, and no TAREA_IMAGE_ALLOW pattern names it.
    """
    host = registry_host(reference.registry)
    addresses = host_addresses(host)
    if addresses is None or opened_by(reference, patterns):
        return
    for address in addresses:
        if not is_public(address):
            raise ImageNotAllowed(_refusal(reference, host, address))


def _refusal(reference: ImageReference, host: str, address: IPAddress) -> str:
    """Why an image whose registry host is ``host`` (at ``address``) is refused."""
    what = f"stands for {address}, {kind(address)}" if is_localhost(host) else f"is {kind(address)}"
    return (
        f"image {str(reference)!r}: its registry host {host!r} {what}; images come only from "
        "public registries unless the server's TAREA_IMAGE_ALLOW names that registry"
    )


__all__ = ["check_registry", "host_addresses", "opened_by", "registry_host"]
