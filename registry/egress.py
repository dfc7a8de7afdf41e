"""Outbound connections to URLs that tenants choose (webhooks): which addresses they may
reach, and an HTTP client that enforces it on the address each connection really reaches.

Checking a URL's DNS answer when it is subscribed is not enough: the answer can change before
a delivery (DNS rebinding), and an address can be spelled so that a naive check misses it. So:

* Every address is first **normalized** (:func:`normalize`): the zone id is dropped
  (``fe80::1%eth0``), and the IPv4 address embedded in an IPv4-mapped (``::ffff:a.b.c.d``),
  IPv4-compatible (``::a.b.c.d``), IPv4-translated (``::ffff:0:a.b.c.d``), NAT64
  (``64:ff9b::/96``, and each RFC 6052 prefix length of the local-use ``64:ff9b:1::/48``),
  6to4 (``2002::/16``) or Teredo (the client) address is taken out and judged as well.
* Then it is **classified** (:func:`reach`): link-local addresses and cloud metadata hosts are
  never reached; loopback, private, shared (100.64.0.0/10), reserved, multicast, unspecified
  and other non-global addresses only when the instance allows private targets
  (``LORAREG_WEBHOOK_ALLOW_PRIVATE``); everything else is public.
* At delivery, :func:`guarded_client` resolves the host itself, refuses before connecting when
  any of its addresses is forbidden (so no packet reaches a refused address), connects to the
  checked address literally, and checks the connected socket's peer address again before a
  byte is sent. It follows no redirects and uses no proxy from the environment (through a
  proxy, the address reached could not be checked).
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import httpcore
import httpx

from registry.errors import BadRequest

log = logging.getLogger("lorareg.egress")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port -> the addresses a connection may use (socket.getaddrinfo by default)
Resolver = Callable[[str, int], list[IPAddress]]

# Cloud metadata endpoints (169.254.169.254 is link-local too, listed for the reader).
METADATA_HOSTS = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "fd00:ec2::254", "100.100.100.200"))
SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
LOW32 = 0xFFFFFFFF


class Reach(enum.IntEnum):
    """How far from public an address is; a host is as far as its farthest address."""

    PUBLIC = 0
    PRIVATE = 1
    NEVER = 2


class ForbiddenAddress(Exception):
    """An address the policy refuses; the message names it and says why."""


def normalize(address: IPAddress) -> tuple[IPAddress, ...]:
    """The addresses a connection to ``address`` can end up at: the address without its zone
    id, or the IPv4 address it only spells differently, plus any IPv4 address a relay
    (NAT64 local-use, 6to4, Teredo) would forward to."""
    if isinstance(address, ipaddress.IPv4Address):
        return (address,)
    plain = ipaddress.IPv6Address(address.packed)  # drops the zone id
    if plain.ipv4_mapped is not None:
        return (plain.ipv4_mapped,)
    if _spells_ipv4(plain):
        return (ipaddress.IPv4Address(int(plain) & LOW32),)
    if plain in NAT64_LOCAL:
        return (plain, *_nat64_local(plain))
    if plain.sixtofour is not None:
        return (plain, plain.sixtofour)
    if plain.teredo is not None:
        return (plain, plain.teredo[1])
    return (plain,)


def _spells_ipv4(address: ipaddress.IPv6Address) -> bool:
    """IPv4-compatible, IPv4-translated or NAT64 well-known prefix: the low 32 bits are the
    IPv4 address (``::`` and ``::1`` are themselves, not 0.0.0.0 and 0.0.0.1)."""
    if int(address) <= 1:
        return False
    return any(address in net for net in (IPV4_COMPATIBLE, IPV4_TRANSLATED, NAT64))


def _nat64_local(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 address embedded for each RFC 6052 prefix length (48, 56, 64, 96) a
    local-use NAT64 prefix may have; ipaddress has no helper for this. Bits 64-71 (the
    "u" octet) never carry address bits, so they are cut out first."""
    value = int(address)
    without_u = (value >> 64 << 56) | (value & ((1 << 56) - 1))  # 120 bits
    found = [ipaddress.IPv4Address(value & LOW32)]
    for start in (48, 56, 64):
        found.append(ipaddress.IPv4Address((without_u >> (120 - start - 32)) & LOW32))
    return found


def reach(address: IPAddress) -> tuple[Reach, IPAddress]:
    """Classify ``address`` after normalizing it; also returns the address that decided."""
    worst, why = Reach.PUBLIC, address
    for each in normalize(address):
        if each.is_link_local or each in METADATA_HOSTS:
            return Reach.NEVER, each
        if worst is Reach.PUBLIC and _private(each):
            worst, why = Reach.PRIVATE, each
    return worst, why


def _private(a: IPAddress) -> bool:
    site_local = isinstance(a, ipaddress.IPv6Address) and a.is_site_local  # not "private"
    return (a.is_loopback or a.is_private or a.is_reserved or a.is_multicast or site_local
            or a.is_unspecified or a in SHARED or not a.is_global)


def resolve(host: str, port: int) -> list[IPAddress]:
    """The host's addresses (an address literal is itself), in the resolver's order."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found = (ipaddress.ip_address(str(info[4][0])) for info in infos)
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class Guard:
    """Which addresses outbound connections may reach."""

    allow_private: bool = False
    resolve: Resolver = resolve

    def narrowed(self, allow_private: bool) -> Guard:
        """This guard, allowing private targets only if it did and ``allow_private``."""
        return replace(self, allow_private=self.allow_private and allow_private)

    def check(self, address: IPAddress) -> None:
        kind, why = reach(address)
        said = str(address) if why == address else f"{address} (that is {why})"
        if kind is Reach.NEVER:
            raise ForbiddenAddress(f"{said}: a link-local or cloud metadata address, which "
                                   "webhooks may never reach")
        if kind is Reach.PRIVATE and not self.allow_private:
            raise ForbiddenAddress(
                f"{said}: a private, loopback or otherwise non-public address; such targets "
                "need the instance setting LORAREG_WEBHOOK_ALLOW_PRIVATE and the webhook's "
                "allow_private")

    def addresses(self, host: str, port: int) -> list[IPAddress]:
        """The host's addresses, each checked; refused if any is forbidden."""
        found = self.resolve(host, port)
        if not found:
            raise ForbiddenAddress(f"{host} has no address")
        for address in found:
            self.check(address)
        return found

    def check_url(self, url: str) -> str:
        """Refuse ``url`` unless it is absolute http(s) and every address of its host may be
        reached now (a subscription-time check; delivery checks again at connect)."""
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:  # an unclosed "[", a port out of range
            parts, port = urlsplit(""), 0
        if parts.scheme not in ("http", "https") or not parts.hostname or not port:
            raise BadRequest(f"webhook URL {url!r} must be an absolute http(s) URL")
        try:
            self.addresses(parts.hostname, port)
        except (OSError, UnicodeError, ValueError) as exc:
            raise BadRequest(f"webhook host {parts.hostname!r} does not resolve") from exc
        except ForbiddenAddress as exc:
            raise BadRequest(f"webhook URL {url!r} refused: {parts.hostname} resolves to "
                             f"{exc}") from exc
        return url


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore's sync backend, connecting only to addresses the guard allows."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                    ) -> httpcore.NetworkStream:
        try:
            addresses = self._guard.addresses(host, port)
        except (OSError, UnicodeError, ValueError, ForbiddenAddress) as exc:
            raise httpcore.ConnectError(f"{host}:{port}: {exc}") from exc
        error = httpcore.ConnectError(f"{host}:{port}: no address")
        for address in addresses:  # the checked address itself: no second DNS answer
            try:
                stream = self._inner.connect_tcp(str(address), port, timeout, local_address,
                                                 socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = httpcore.ConnectError(f"{host}:{port} ({address}): {exc}")
                continue
            self._check_peer(stream, host, port)
            return stream
        raise error

    def _check_peer(self, stream: httpcore.NetworkStream, host: str, port: int) -> None:
        """Check the address the socket is connected to, before any byte is written."""
        sock: socket.socket = stream.get_extra_info("socket")
        try:
            self._guard.check(ipaddress.ip_address(sock.getpeername()[0]))
        except (OSError, ValueError, ForbiddenAddress) as exc:
            stream.close()
            raise httpcore.ConnectError(f"{host}:{port}: connected peer refused: {exc}") from exc

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def guarded_client(guard: Guard, timeout: httpx.Timeout) -> httpx.Client:
    """An httpx client whose every connection goes through ``guard``; no redirects, no
    proxies from the environment (SSL_CERT_FILE and SSL_CERT_DIR still apply)."""
    transport = httpx.HTTPTransport()
    # httpx takes no httpcore network backend, so its pool is replaced by one that connects
    # through the guard (tests/registry/test_webhook_targets.py fails if this stops working).
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        network_backend=GuardedBackend(guard))
    return httpx.Client(transport=transport, timeout=timeout, follow_redirects=False,
                        trust_env=False)
