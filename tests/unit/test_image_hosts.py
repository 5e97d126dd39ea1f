"""Which registry hosts an image may name: the pure check, never a connection."""

from __future__ import annotations

import pytest

from tarea.domain.images import parse_reference
from tarea.errors import ImageNotAllowed
from tarea.image_hosts import check_registry, host_addresses, opened_by, registry_host

REFUSED = [
    "127.0.0.1:8861/x:1",  # loopback
    "127.0.0.1/x",
    "127.1:5000/x",  # inet_aton's short form of 127.0.0.1
    "0x7f000001:5000/x",  # and its hexadecimal one
    "2130706433:5000/x",  # and its decimal one
    "localhost:5000/x",
    "localhost/x",
    "LOCALHOST/x",
    "registry.localhost:5000/x",
    "[::1]:5000/x",
    "[::ffff:7f00:1]:5000/x",  # IPv4-mapped loopback
    "169.254.169.254/latest/meta-data:1",  # cloud metadata (link-local)
    "[fe80::1]:5000/x",
    "10.0.0.1:5000/team/x:1",  # private
    "172.17.0.1:5000/x",  # the default Docker bridge
    "192.168.1.1/x",
    "[fd12:3456::1]:5000/x",  # unique-local
    "0.0.0.0:5000/x",  # unspecified
    "100.64.0.1/x",  # shared address space (not global)
    "240.0.0.1/x",  # reserved
]

ALLOWED = [
    "tasks_image:latest",  # Docker Hub
    "library/python:3.12",
    "docker.io/library/python:3.12",
    "registry.example.com/team/x:1",  # names are the engine's to resolve
    "registry.example.com:5000/x",
    "8.8.8.8:5000/x",  # a public address
    "[2001:4860:4860::8888]:5000/x",
]


@pytest.mark.parametrize("image", REFUSED)
def test_non_public_registry_hosts_are_refused(image: str) -> None:
    """A registry written as a non-public address or as localhost is refused, saying why."""
    with pytest.raises(ImageNotAllowed) as caught:
        check_registry(parse_reference(image), [])
    assert "TAREA_IMAGE_ALLOW" in str(caught.value)
    assert caught.value.code == "image_not_allowed"


@pytest.mark.parametrize("image", ALLOWED)
def test_public_addresses_and_names_pass(image: str) -> None:
    """Docker Hub, registry names and public addresses pass the check."""
    check_registry(parse_reference(image), [])


@pytest.mark.parametrize(
    "pattern",
    ["127.0.0.1:8861/*", "127.0.0.1:*", "127.0.0.1:8861/x:1", "127.0.0.1:8861/x:*"],
)
def test_a_pattern_that_writes_the_host_out_opens_it(pattern: str) -> None:
    """TAREA_IMAGE_ALLOW opens a loopback registry with a pattern naming that host."""
    reference = parse_reference("127.0.0.1:8861/x:1")
    assert opened_by(reference, [pattern])
    check_registry(reference, ["tasks_image:*", pattern])


@pytest.mark.parametrize(
    "pattern", ["*", "*/x:1", "127.0.0.*", "127.0.0.?:8861/*", "10.0.0.1:*", "127.0.0.1:9/*"]
)
def test_a_wildcard_or_another_host_opens_nothing(pattern: str) -> None:
    """A pattern whose host is a wildcard, or another host, leaves the refusal standing."""
    reference = parse_reference("127.0.0.1:8861/x:1")
    assert not opened_by(reference, [pattern])
    with pytest.raises(ImageNotAllowed):
        check_registry(reference, [pattern])


def test_registry_host_drops_port_and_brackets() -> None:
    """The host of a registry is written without its port or IPv6 brackets."""
    assert registry_host("127.0.0.1:8861") == "127.0.0.1"
    assert registry_host("[::1]:5000") == "::1"
    assert registry_host("[::1]") == "::1"
    assert registry_host("docker.io") == "docker.io"
    assert registry_host("[broken") == "broken"


def test_names_are_not_resolved() -> None:
    """A registry name gives no addresses: nothing is looked up here."""
    assert host_addresses("registry.example.com") is None
    assert host_addresses("docker.io") is None
    assert [str(a) for a in host_addresses("127.1") or ()] == ["127.0.0.1"]
