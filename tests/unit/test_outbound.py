"""Where callbacks may go: the address checks, the allowlist, and pinning (no connection)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import httpx
import pytest

from tarea.dispatch import callbacks, outbound
from tarea.dispatch.outbound import NOTHING_ALLOWED, Allowlist, IPAddress
from tarea.errors import CallbackUrlNotAllowed, ConfigurationError, InvalidRequest

REFUSED = [
    "127.0.0.1",  # loopback
    "127.255.255.254",
    "::1",
    "169.254.169.254",  # cloud metadata (link-local)
    "fe80::1",
    "10.0.0.1",  # private
    "172.16.0.1",
    "172.17.0.1",  # the default Docker bridge
    "172.31.255.254",
    "192.168.1.1",
    "fc00::1",  # unique-local
    "fd12:3456::1",
    "0.0.0.0",  # unspecified
    "::",
    "224.0.0.1",  # multicast
    "ff02::1",
    "255.255.255.255",  # reserved
    "240.0.0.1",
    "100.100.100.200",  # shared (CGNAT) space: a cloud's metadata service
    "198.18.0.1",  # benchmarking
    "::ffff:169.254.169.254",  # IPv4-mapped
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "2002:a9fe:a9fe::1",  # 6to4 embedding 169.254.169.254
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def resolver(*answers: list[str]) -> tuple[outbound.Resolver, list[str]]:
    """A fake resolver answering each call with the next list (the last one repeats)."""
    asked: list[str] = []

    async def resolve(host: str) -> list[IPAddress]:
        asked.append(host)
        return [ip(a) for a in answers[min(len(asked), len(answers)) - 1]]

    return resolve, asked


def vet(url: str, allow: Allowlist, resolve: outbound.Resolver) -> IPAddress:
    return asyncio.run(outbound.vet(httpx.URL(url), allow, resolve))


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address: str) -> None:
    """Loopback, link-local, private, unique-local, reserved, multicast and the like are refused."""
    assert not outbound.is_public(ip(address))
    assert not NOTHING_ALLOWED.allows_address(ip(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    """A globally routable address needs no allowlist entry (IPv4-mapped ones unwrapped)."""
    assert outbound.is_public(ip(address))
    assert NOTHING_ALLOWED.allows_address(ip(address))


def test_the_allowlist_parses_hosts_suffixes_and_networks() -> None:
    """Entries are exact names (normalised), *.domain suffixes, addresses and CIDRs."""
    allow = Allowlist.parse(" Hooks.Internal. ,*.corp.example, 127.0.0.1,10.1.0.0/16,[::1],, ")
    assert allow.hosts == frozenset({"hooks.internal"})
    assert allow.suffixes == (".corp.example",)
    assert allow.networks == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.1.0.0/16"),
        ipaddress.ip_network("::1/128"),
    )
    assert Allowlist.parse("") == NOTHING_ALLOWED


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "http://hooks.example.com", "a b", "999.1.1.1"])
def test_a_malformed_allowlist_entry_is_a_configuration_error(entry: str) -> None:
    """An entry that is neither a name, *.domain, an address nor a CIDR stops the start-up."""
    with pytest.raises(ConfigurationError, match="TAREA_CALLBACK_ALLOW"):
        Allowlist.parse(f"127.0.0.1,{entry}")


def test_allowed_networks_open_exactly_their_addresses() -> None:
    """A CIDR opens its own addresses (mapped IPv6 forms too) and nothing next to them."""
    allow = Allowlist.parse("127.0.0.1,10.1.0.0/16")
    assert allow.allows_address(ip("127.0.0.1"))
    assert allow.allows_address(ip("::ffff:127.0.0.1"))
    assert allow.allows_address(ip("10.1.255.3"))
    assert not allow.allows_address(ip("127.0.0.2"))
    assert not allow.allows_address(ip("10.2.0.1"))
    assert not allow.allows_address(ip("169.254.169.254"))


def test_allowed_names_match_exactly_or_under_a_suffix() -> None:
    """A name entry matches that name in any case; *.domain matches names under it only."""
    allow = Allowlist.parse("hooks.internal,*.corp.example")
    assert allow.allows_host("HOOKS.internal.")
    assert allow.allows_host("a.b.corp.example")
    assert not allow.allows_host("corp.example")
    assert not allow.allows_host("evilcorp.example")
    assert not allow.allows_host("hooks.internal.evil.example")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://172.17.0.1/",
        "http://0.0.0.0/",
        "https://10.0.0.5/hook",
        "http://localhost:8000/hook",
        "http://LOCALHOST./hook",
        "http://api.localhost/hook",
    ],
)
def test_literal_addresses_and_localhost_are_refused_at_submit(url: str) -> None:
    """A URL whose host is a non-public literal address or localhost is refused at once."""
    with pytest.raises(CallbackUrlNotAllowed) as refused:
        outbound.check_url(url, NOTHING_ALLOWED)
    assert refused.value.code == "callback_url_not_allowed"
    assert refused.value.field == "callback_url"
    assert "TAREA_CALLBACK_ALLOW" in refused.value.message


def test_names_and_public_addresses_pass_the_submit_check() -> None:
    """A name is judged on each attempt, not at submit; a public literal passes at once."""
    outbound.check_url("https://hooks.example.com/x", NOTHING_ALLOWED)
    outbound.check_url("http://8.8.8.8/x", NOTHING_ALLOWED)


def test_the_allowlist_opens_literals_and_localhost_at_submit() -> None:
    """Allowed networks open literal addresses; localhost needs all its addresses, or its name."""
    outbound.check_url("http://127.0.0.1:9/hook", Allowlist.parse("127.0.0.0/8"))
    with pytest.raises(CallbackUrlNotAllowed, match="::1"):
        outbound.check_url("http://localhost:9/hook", Allowlist.parse("127.0.0.0/8"))
    outbound.check_url("http://localhost:9/hook", Allowlist.parse("127.0.0.0/8,::1"))
    outbound.check_url("http://localhost:9/hook", Allowlist.parse("localhost"))


def test_an_attempt_goes_to_the_first_address_once_all_are_vetted() -> None:
    """A name whose every address is public is sent to the first one the resolver gave."""
    resolve, asked = resolver(["93.184.216.34", "2606:2800:220:1::1"])
    assert vet("https://Hooks.Example.com/x", NOTHING_ALLOWED, resolve) == ip("93.184.216.34")
    assert asked == ["hooks.example.com"]


@pytest.mark.parametrize("bad", ["169.254.169.254", "127.0.0.1", "10.0.0.7", "fd00::7"])
def test_a_name_with_any_refused_address_is_refused(bad: str) -> None:
    """One non-public address among a name's addresses refuses the attempt, not shown to it."""
    resolve, _ = resolver(["93.184.216.34", bad])
    with pytest.raises(CallbackUrlNotAllowed) as refused:
        vet("https://hooks.example.com/x", NOTHING_ALLOWED, resolve)
    assert "resolves to a" in refused.value.message
    assert bad not in refused.value.message


def test_dns_rebinding_is_caught_on_the_next_attempt() -> None:
    """A name that turns into a metadata address after the first attempt is refused then."""
    resolve, asked = resolver(["93.184.216.34"], ["169.254.169.254"])
    allow = NOTHING_ALLOWED
    assert vet("http://rebind.example.com/", allow, resolve) == ip("93.184.216.34")
    with pytest.raises(CallbackUrlNotAllowed):
        vet("http://rebind.example.com/", allow, resolve)
    assert asked == ["rebind.example.com", "rebind.example.com"]


def test_an_allowed_name_may_resolve_anywhere() -> None:
    """A name the operator allowed is sent to what it resolves to, private or not."""
    resolve, _ = resolver(["10.0.0.7", "127.0.0.1"])
    allow = Allowlist.parse("hooks.internal")
    assert vet("http://hooks.internal/x", allow, resolve) == ip("10.0.0.7")


def test_literals_and_localhost_are_never_resolved() -> None:
    """A literal address or localhost is judged as written, without asking a resolver."""
    resolve, asked = resolver(["93.184.216.34"])
    allow = Allowlist.parse("127.0.0.1,::1")
    assert vet("http://127.0.0.1:9/", allow, resolve) == ip("127.0.0.1")
    assert vet("http://[::1]:9/", allow, resolve) == ip("::1")
    assert vet("http://localhost:9/", allow, resolve) == ip("127.0.0.1")
    assert asked == []


@pytest.mark.parametrize(
    ("url", "address", "sent_to", "host"),
    [
        (
            "https://Hooks.Example.com:8443/h?x=1",
            "93.184.216.34",
            "https://93.184.216.34:8443/h?x=1",
            "hooks.example.com:8443",
        ),
        (
            "http://hooks.example.com/h",
            "2606:2800:220:1::1",
            "http://[2606:2800:220:1::1]/h",
            "hooks.example.com",
        ),
    ],
)
def test_a_pinned_request_goes_to_the_address_under_the_name(
    url: str, address: str, sent_to: str, host: str
) -> None:
    """The request is sent to the vetted address; Host and, for https, SNI stay the name."""
    client = callbacks.new_client()
    request = callbacks.pinned_request(
        client, httpx.URL(url), ip(address), b"{}", {"X-Tarea-Signature": "s"}
    )
    assert str(request.url) == sent_to
    assert request.headers["Host"] == host
    assert request.headers["X-Tarea-Signature"] == "s"
    if url.startswith("https"):
        assert request.extensions["sni_hostname"] == "hooks.example.com"
    else:
        assert "sni_hostname" not in request.extensions
    assert request.extensions["timeout"] == httpx.Timeout(None).as_dict()
    asyncio.run(client.aclose())


def test_a_url_the_client_cannot_parse_is_an_invalid_request_at_submit() -> None:
    """A callback URL httpx cannot send is a 422 naming the field, never a 500."""
    with pytest.raises(InvalidRequest) as refused:
        outbound.check_url("http://[::1/hook", NOTHING_ALLOWED)
    assert refused.value.field == "callback_url"


def test_resolution_keeps_ip_addresses_once_in_the_resolvers_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The resolver's answers come back deduplicated, in order, IPv4 and IPv6 only."""
    infos = [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2606:2800:220:1::1", 0, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 0)),
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2606:2800:220:1::1", 0, 0, 0)),
        (socket.AF_UNIX, socket.SOCK_STREAM, 0, "", "/nowhere"),
    ]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: infos)
    addresses = asyncio.run(outbound.resolve("hooks.example.com"))
    assert addresses == [ip("2606:2800:220:1::1"), ip("93.184.216.34")]


def test_a_name_the_resolver_cannot_encode_is_an_os_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name the idna codec refuses fails like one that does not resolve (retried)."""

    def refuse(host: str, *args: object, **kwargs: object) -> None:
        raise UnicodeError("label empty or too long")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    with pytest.raises(OSError, match="not a name that can be resolved"):
        asyncio.run(outbound.resolve("a..b"))
