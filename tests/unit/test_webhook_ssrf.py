"""The SSRF guard: webhook URLs never reach loopback, private or metadata addresses."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from jobs.webhooks.delivery import deliver_once
from jobs.webhooks.ssrf import ParsedTarget, check_url, is_public_address, resolve_and_validate
from visionqueue.core.errors import Unavailable, Unprocessable

FORBIDDEN_LITERALS = [
    "127.0.0.1",
    "127.8.9.10",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "[::1]",
    "[::]",
    "[::ffff:10.0.0.1]",
    "[::ffff:127.0.0.1]",
    "[fd00::1]",
    "[fe80::1]",
    "[ff02::1]",
    "[64:ff9b::a00:1]",  # NAT64 of 10.0.0.1
    "[2002:a00:1::1]",  # 6to4 of 10.0.0.1
]


def stub_resolver(*addresses: str) -> Callable[..., list[tuple[Any, ...]]]:
    """Answer every lookup with these addresses, in order, like getaddrinfo."""

    def resolve(host: str, port: int, family: int = 0, type: int = 0) -> list[tuple[Any, ...]]:
        answers: list[tuple[Any, ...]] = []
        for address in addresses:
            if ":" in address:
                answers.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0)))
            else:
                answers.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)))
        return answers

    return resolve


def failing_resolver(host: str, port: int, family: int = 0, type: int = 0) -> list[Any]:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def forbidden(url: str, allowed: Sequence[str] = ()) -> None:
    with pytest.raises(Unprocessable) as info:
        check_url(url, list(allowed))
    assert info.value.code == "forbidden_webhook_url"
    assert info.value.status == 422


def invalid(url: str) -> None:
    with pytest.raises(Unprocessable) as info:
        check_url(url, [])
    assert info.value.code == "invalid_webhook_url"


@pytest.mark.parametrize("host", FORBIDDEN_LITERALS)
def test_literal_internal_addresses_are_refused_at_submission(host: str) -> None:
    forbidden(f"http://{host}/hook")
    forbidden(f"https://{host}:8443/hook")


def test_public_literal_is_accepted_without_connecting() -> None:
    target = check_url("https://93.184.216.34/hooks?x=1#frag", [])
    assert target == ParsedTarget("https", "93.184.216.34", 443, "/hooks?x=1")


def test_hostname_url_is_split_for_the_connection() -> None:
    target = check_url("HTTPS://Hooks.Example.COM:8443/a/b?c=d", [])
    assert target == ParsedTarget("https", "hooks.example.com", 8443, "/a/b?c=d")
    assert target.host_header == "hooks.example.com:8443"
    assert check_url("http://hooks.example.com", []).target == "/"


def test_idn_hosts_are_checked_in_their_ascii_form() -> None:
    assert check_url("https://bücher.example/x", []).host == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/x",
        "gopher://example.com:70/_x",
        "javascript:alert(1)",
        "example.com/hook",
        "http:///hook",
        "http://",
        "http://user:pw@example.com/",
        "http://user@example.com/",
        "http://example.com:0/",
        "http://example.com:65536/",
        "http://example.com:99999/",
        "http://exa mple.com/",
        "http://example.com/\r\nX-Injected: 1",
        "http://example.com\\@127.0.0.1/",
        "http://127.1/",  # inet_aton shorthand for 127.0.0.1
        "http://2130706433/",  # 127.0.0.1 as one number
        "http://0x7f.0.0.1/",
        "http://0177.0.0.1/",
        "http://[fe80::1%25eth0]/",
        "http://-bad-.example.com/",
        "http://example.com/" + "a" * 2048,
        "",
    ],
)
def test_malformed_or_unsupported_urls_are_refused(url: str) -> None:
    invalid(url)


@pytest.mark.parametrize(
    "url",
    ["http://localhost:8000/", "http://api.localhost/", "http://redis/", "http://x.internal/"],
)
def test_internal_names_are_refused_at_submission(url: str) -> None:
    forbidden(url)


def test_allow_list_exempts_exactly_the_listed_hosts() -> None:
    assert check_url("http://127.0.0.1:9000/h", ["127.0.0.1"]).host == "127.0.0.1"
    assert check_url("http://localhost:9000/h", ["localhost"]).port == 9000
    assert check_url("http://[::1]:9000/h", ["::1"]).host == "::1"
    forbidden("http://127.0.0.2:9000/h", ["127.0.0.1"])
    forbidden("http://10.0.0.1/h", ["127.0.0.1", "localhost"])


def test_resolution_to_a_private_address_is_refused() -> None:
    with pytest.raises(Unprocessable) as info:
        resolve_and_validate("hooks.example.com", 443, [], stub_resolver("10.1.2.3"))
    assert info.value.code == "forbidden_webhook_url"


@pytest.mark.parametrize(
    "second", ["10.1.2.3", "127.0.0.1", "169.254.169.254", "::1", "fd12::1", "::ffff:192.168.0.1"]
)
def test_one_private_address_among_public_ones_is_enough_to_refuse(second: str) -> None:
    resolver = stub_resolver("93.184.216.34", second)
    with pytest.raises(Unprocessable):
        resolve_and_validate("hooks.example.com", 443, [], resolver)


def test_public_addresses_are_returned_in_resolver_order_without_duplicates() -> None:
    resolver = stub_resolver("93.184.216.34", "2606:2800:220:1::1", "93.184.216.34")
    addresses = resolve_and_validate("hooks.example.com", 443, [], resolver)
    assert addresses == ["93.184.216.34", "2606:2800:220:1::1"]


def test_mapped_addresses_are_reported_as_ipv4() -> None:
    resolver = stub_resolver("::ffff:93.184.216.34")
    assert resolve_and_validate("hooks.example.com", 443, [], resolver) == ["93.184.216.34"]


def test_resolution_asks_for_both_address_families() -> None:
    calls: list[tuple[Any, ...]] = []

    def recording(host: str, port: int, family: int = 0, type: int = 0) -> list[Any]:
        calls.append((host, port, family, type))
        return stub_resolver("93.184.216.34")(host, port)

    resolve_and_validate("Hooks.Example.com.", 8443, [], recording)
    assert calls == [("hooks.example.com", 8443, socket.AF_UNSPEC, socket.SOCK_STREAM)]


def test_literal_hosts_are_checked_without_a_lookup() -> None:
    assert resolve_and_validate("93.184.216.34", 80, [], failing_resolver) == ["93.184.216.34"]
    with pytest.raises(Unprocessable):
        resolve_and_validate("[::ffff:10.0.0.1]", 80, [], failing_resolver)


def test_allow_listed_hostname_may_resolve_to_loopback() -> None:
    resolver = stub_resolver("127.0.0.1", "::1")
    assert resolve_and_validate("localhost", 80, ["localhost"], resolver) == ["127.0.0.1", "::1"]


def test_allow_listed_ip_does_not_exempt_other_addresses_of_a_name() -> None:
    resolver = stub_resolver("127.0.0.1", "::1")
    with pytest.raises(Unprocessable):
        resolve_and_validate("localhost", 80, ["127.0.0.1"], resolver)
    only_v4 = stub_resolver("127.0.0.1")
    assert resolve_and_validate("localhost", 80, ["127.0.0.1"], only_v4) == ["127.0.0.1"]


def test_lookup_failure_is_a_transient_error() -> None:
    with pytest.raises(Unavailable) as info:
        resolve_and_validate("nowhere.example.com", 443, [], failing_resolver)
    assert info.value.code == "webhook_dns_error"


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
        ("2002:808:808::1", True),  # 6to4 of 8.8.8.8
        ("192.0.2.1", False),
        ("198.18.0.1", False),
        ("239.255.255.250", False),
        ("::", False),
        ("::127.0.0.1", False),  # deprecated IPv4-compatible
        ("2001:db8::1", False),
        ("2001::1", False),  # Teredo
        ("fec0::1", False),
        ("64:ff9b::7f00:1", False),
        ("2002:7f00:1::", False),
    ],
)
def test_address_classification(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


def test_delivery_to_a_private_resolution_stops_before_connecting() -> None:
    result = deliver_once(
        "https://hooks.example.com/h", b"{}", {}, 1.0, [], stub_resolver("10.1.2.3")
    )
    assert (result.error, result.permanent, result.status_code) == ("forbidden_address", True, None)
    literal = deliver_once("http://169.254.169.254/latest/meta-data/", b"{}", {}, 1.0, [])
    assert (literal.error, literal.permanent) == ("forbidden_address", True)


def test_delivery_to_an_invalid_url_is_permanent_and_dns_failure_is_not() -> None:
    invalid_url = deliver_once("ftp://example.com/", b"{}", {}, 1.0, [])
    assert (invalid_url.error, invalid_url.permanent) == ("invalid_url", True)
    dns = deliver_once("https://nowhere.example.com/", b"{}", {}, 1.0, [], failing_resolver)
    assert (dns.error, dns.permanent, dns.succeeded) == ("dns_error", False, False)
