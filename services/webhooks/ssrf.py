"""Which receivers a webhook may point at: checked at registration and again at send time.

At send time (delivery.Sender, for every new connection) the host is resolved, every address it
resolves to is vetted, and the connection goes to a vetted address: a name that resolved to a public
address when it was registered and resolves to 127.0.0.1 now (DNS rebinding) is refused. TLS SNI and the
Host header still carry the name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV6_ULA = ipaddress.ip_network("fc00::/7")
IPV6_LINK_LOCAL = ipaddress.ip_network("fe80::/10")


class UrlRefused(Exception):
    """A receiver URL we will not call. `reason` is the typed error's detail."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Target:
    scheme: str
    host: str  # a name, or an address literal without brackets
    port: int


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def address_problem(ip: IP) -> str | None:
    """Why a receiver must not be at `ip` (loopback, private…), or None if it is a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            inner = address_problem(embedded)
            return f"ipv4_mapped_{inner}" if inner else None
        if ip in IPV6_ULA:
            return "unique_local"
        if ip in IPV6_LINK_LOCAL:
            return "link_local"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link_local"
    if isinstance(ip, ipaddress.IPv4Address) and ip in CGNAT:
        return "cgnat"
    if ip.is_multicast:
        return "multicast"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "reserved"
    return None


def allowed(ip: IP, allow: tuple[Network, ...]) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in allow)


def vet(ip: IP, allow: tuple[Network, ...]) -> None:
    if allowed(ip, allow):
        return
    if problem := address_problem(ip):
        raise UrlRefused(f"forbidden_address.{problem}", f"receivers may not be at {ip} ({problem})")


def parse_url(url: str, *, allow_http: bool) -> Target:
    if len(url) > 2048:
        raise UrlRefused("bad_url", "the url is longer than 2048 characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise UrlRefused("bad_url", f"the url is not valid: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise UrlRefused("bad_url", "the url must start with https://")
    if scheme == "http" and not allow_http:
        raise UrlRefused("insecure_url", "the url must use https")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("bad_url", "the url must not carry credentials")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UrlRefused("bad_url", "the url has no host")
    return Target(scheme, host, port or (443 if scheme == "https" else 80))


def literal(host: str) -> IP | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def resolve(host: str, port: int) -> list[IP]:
    """Every address `host` resolves to (an address literal resolves to itself)."""
    if (ip := literal(host)) is not None:
        return [ip]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UrlRefused("unresolvable_host", f"{host} does not resolve: {exc}") from None
    found: list[IP] = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in found:
            found.append(ip)
    if not found:
        raise UrlRefused("unresolvable_host", f"{host} resolves to no address")
    return found


async def vetted_addresses(host: str, port: int, allow: tuple[Network, ...]) -> list[IP]:
    """Resolve and vet: refused if ANY address is forbidden (a name must not mix public and private)."""
    addresses = await resolve(host, port)
    for ip in addresses:
        vet(ip, allow)
    return addresses


async def check_url(url: str, *, allow_http: bool, allow: tuple[Network, ...]) -> Target:
    """The registration check: scheme, shape, and where the host points now."""
    target = parse_url(url, allow_http=allow_http)
    await vetted_addresses(target.host, target.port, allow)
    return target
