"""Refuse webhook URLs that reach into our own network (the SSRF guard).

Two stages: ``check_url`` validates the syntax when a job is submitted (literal IPs are
checked right away), and ``resolve_and_validate`` resolves the host at delivery time and
refuses it if ANY address is not globally routable. Delivery then connects to exactly those
addresses, so a DNS answer cannot change between the check and the connection.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from visionqueue.core.errors import Unavailable, Unprocessable

MAX_URL_LENGTH = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int, int, int], Sequence[tuple[Any, Any, Any, Any, tuple[Any, ...]]]]

# Spelled out rather than trusting ``is_global`` alone: its tables differ between Python
# patch releases, and it calls multicast addresses global.
_FORBIDDEN_V4 = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata (169.254.169.254)
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, includes broadcast 255.255.255.255
    )
)
_FORBIDDEN_V6 = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "::/96",  # unspecified, loopback, deprecated IPv4-compatible
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard
        "2001::/23",  # IETF protocol assignments, Teredo
        "2001:db8::/32",  # documentation
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LOCAL_SUFFIXES = ("localhost", "local", "internal", "localdomain", "home.arpa")
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


@dataclass(frozen=True)
class ParsedTarget:
    """A syntactically valid webhook URL, split into what a connection needs."""

    scheme: str
    host: str  # lower-case ASCII (IDNA), IPv6 without brackets
    port: int
    target: str  # path and query: the request line's target

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host_header}{self.target}"


def is_public_address(ip: IPAddress) -> bool:
    """Tell whether an address is globally routable, looking inside v6 wrappers of v4."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public_address(ip.ipv4_mapped)
        if ip in _NAT64:
            return is_public_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None:
            return is_public_address(ip.sixtofour)
        if any(ip in net for net in _FORBIDDEN_V6):
            return False
    elif any(ip in net for net in _FORBIDDEN_V4):
        return False
    return ip.is_global and not (
        ip.is_multicast
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_unspecified
    )


def check_url(url: str, allowed_hosts: Iterable[str]) -> ParsedTarget:
    """Validate a webhook URL's syntax and any literal IP; raise ``Unprocessable`` if unfit."""
    if not isinstance(url, str) or not url:
        raise _invalid("webhook URL must be a non-empty string")
    if len(url) > MAX_URL_LENGTH:
        raise _invalid(f"webhook URL must be at most {MAX_URL_LENGTH} characters")
    # Whitespace, control characters and backslashes are where URL parsers disagree.
    if any(ch.isspace() or not ch.isprintable() for ch in url) or "\\" in url:
        raise _invalid("webhook URL must not contain whitespace, control characters or '\\'")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError, UnicodeError):
        raise _invalid("webhook URL is not a valid URL") from None
    scheme = parsed.scheme
    if scheme not in DEFAULT_PORTS:
        raise _invalid("webhook URL must use http or https")
    if parsed.userinfo:
        raise _invalid("webhook URL must not contain credentials (user@host)")
    try:
        host = parsed.raw_host.decode("ascii").lower()
    except UnicodeDecodeError:
        raise _invalid("webhook URL host is not valid") from None
    if not host:
        raise _invalid("webhook URL must have a host")
    port = parsed.port if parsed.port is not None else DEFAULT_PORTS[scheme]
    if not 1 <= port <= 65535:
        raise _invalid("webhook URL port must be between 1 and 65535")
    target = ParsedTarget(scheme, host, port, parsed.raw_path.decode("ascii") or "/")

    allowed = _normalise_hosts(allowed_hosts)
    literal = _literal_ip(host)
    if literal is None:
        _check_hostname(host)
    if _normalise_host(host) in allowed:
        return target
    if literal is not None:
        if not is_public_address(literal):
            raise _forbidden()
    elif _is_local_name(host):
        raise _forbidden()
    return target


def resolve_and_validate(
    host: str,
    port: int,
    allowed_hosts: Iterable[str],
    resolver: Resolver = socket.getaddrinfo,
) -> list[str]:
    """Resolve A and AAAA records once; refuse the host if any address is not public."""
    name = _normalise_host(host)
    allowed = _normalise_hosts(allowed_hosts)
    literal = _literal_ip(name)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        addresses = _resolve(name, port, resolver)
    addresses = [_unwrap_mapped(ip) for ip in addresses]
    if name not in allowed:
        for ip in addresses:
            if str(ip) not in allowed and not is_public_address(ip):
                raise _forbidden()
    return list(dict.fromkeys(str(ip) for ip in addresses))


def _resolve(name: str, port: int, resolver: Resolver) -> list[IPAddress]:
    try:
        # Family 0 (AF_UNSPEC) asks for A and AAAA records alike.
        infos = resolver(name, port, 0, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise Unavailable("webhook host did not resolve", code="webhook_dns_error") from None
    addresses: list[IPAddress] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        try:
            addresses.append(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
        except ValueError:
            raise _forbidden() from None
    if not addresses:
        raise Unavailable("webhook host did not resolve", code="webhook_dns_error")
    return addresses


def _check_hostname(host: str) -> None:
    name = host.rstrip(".")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise _invalid("webhook URL host is not a valid hostname")
    # A numeric last label makes the WHATWG URL standard (and inet_aton) read the host as
    # IPv4 (127.1, 0x7f.1, 2130706433); only the canonical dotted quad is accepted.
    if _NUMERIC_LABEL.match(labels[-1]):
        raise _invalid("webhook URL IPv4 address must be a dotted quad like 192.0.2.10")


def _is_local_name(host: str) -> bool:
    name = host.rstrip(".")
    if "." not in name:
        return True  # single-label names resolve through search domains to internal hosts
    return any(name == suffix or name.endswith("." + suffix) for suffix in _LOCAL_SUFFIXES)


def _literal_ip(host: str) -> IPAddress | None:
    if "%" in host:
        return None  # zone ids are refused by the hostname check
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _unwrap_mapped(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _normalise_host(host: str) -> str:
    name = host.strip().strip("[]").rstrip(".").lower()
    literal = _literal_ip(name)
    return str(_unwrap_mapped(literal)) if literal is not None else name


def _normalise_hosts(hosts: Iterable[str]) -> frozenset[str]:
    return frozenset(_normalise_host(host) for host in hosts if host.strip())


def _invalid(message: str) -> Unprocessable:
    return Unprocessable(message, code="invalid_webhook_url")


def _forbidden() -> Unprocessable:
    return Unprocessable(
        "webhook URL must not point to a loopback, private, link-local or reserved address",
        code="forbidden_webhook_url",
    )
