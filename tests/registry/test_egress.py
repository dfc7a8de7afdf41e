"""The address guard of outbound connections (registry.egress): normalizing every address
family, classifying, and checking the address a connection really reaches."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from datetime import timedelta

import httpcore
import pytest
from sqlalchemy.orm import Session

from registry.egress import (
    ForbiddenAddress,
    Guard,
    GuardedBackend,
    IPAddress,
    Reach,
    normalize,
    reach,
)
from registry.services import webhooks
from tests.registry.test_webhooks import Receiver


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize(("address", "embedded"), [
    ("::ffff:169.254.169.254", "169.254.169.254"),
    ("::ffff:a9fe:a9fe", "169.254.169.254"),
    ("::a9fe:a9fe", "169.254.169.254"),
    ("::ffff:0:a9fe:a9fe", "169.254.169.254"),
    ("64:ff9b::a9fe:a9fe", "169.254.169.254"),
    ("64:ff9b:1:a9fe:a9:fe00::", "169.254.169.254"),  # local-use NAT64, /48
    ("64:ff9b:1:a9:fe:a9fe::", "169.254.169.254"),  # local-use NAT64, /56
    ("64:ff9b:1:0:a9:fea9:fe00:0", "169.254.169.254"),  # local-use NAT64, /64
    ("64:ff9b:1::a9fe:a9fe", "169.254.169.254"),  # local-use NAT64, /96
    ("2002:a9fe:a9fe::1", "169.254.169.254"),
    ("2001:0:4136:e378:8000:63bf:5601:5601", "169.254.169.254"),  # Teredo client
    ("fe80::1%eth0", "fe80::1"),
    ("::1", "::1"),
    ("10.0.0.1", "10.0.0.1"),
])
def test_normalize_finds_the_embedded_address(address: str, embedded: str) -> None:
    assert ip(embedded) in normalize(ip(address))


@pytest.mark.parametrize(("address", "kind"), [
    ("169.254.169.254", Reach.NEVER), ("::ffff:a9fe:a9fe", Reach.NEVER),
    ("fd00:ec2::254", Reach.NEVER), ("fd00:ec2::254%eth0", Reach.NEVER),
    ("100.100.100.200", Reach.NEVER), ("64:ff9b::6464:64c8", Reach.NEVER),
    ("fe80::1%2", Reach.NEVER), ("169.254.7.7", Reach.NEVER),
    ("127.0.0.1", Reach.PRIVATE), ("::1", Reach.PRIVATE), ("10.0.0.1", Reach.PRIVATE),
    ("100.64.0.1", Reach.PRIVATE), ("0.0.0.0", Reach.PRIVATE), ("::", Reach.PRIVATE),
    ("224.0.0.1", Reach.PRIVATE), ("ff02::1", Reach.PRIVATE), ("240.0.0.1", Reach.PRIVATE),
    ("fc00::1", Reach.PRIVATE), ("fec0::1", Reach.PRIVATE), ("64:ff9b::7f00:1", Reach.PRIVATE),
    ("64:ff9b:1::808:808", Reach.PRIVATE), ("::ffff:192.168.0.1", Reach.PRIVATE),
    ("8.8.8.8", Reach.PUBLIC), ("2606:4700::1111", Reach.PUBLIC),
    ("64:ff9b::808:808", Reach.PUBLIC), ("::ffff:8.8.8.8", Reach.PUBLIC),
])
def test_reach(address: str, kind: Reach) -> None:
    assert reach(ip(address))[0] is kind


def test_private_allowed_never_reaches_metadata() -> None:
    guard = Guard(allow_private=True)
    guard.check(ip("127.0.0.1"))
    for address in ("169.254.169.254", "::ffff:100.100.100.200", "fd00:ec2::254"):
        with pytest.raises(ForbiddenAddress, match="metadata"):
            guard.check(ip(address))


def test_one_forbidden_address_refuses_the_host() -> None:
    guard = Guard(resolve=lambda host, port: [ip("8.8.8.8"), ip("10.0.0.1")])
    with pytest.raises(Exception, match=r"10\.0\.0\.1"):
        guard.addresses("hooks.example.test", 80)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def test_dns_rebinding_between_subscription_and_delivery(
    session: Session, receiver: Receiver
) -> None:
    answers = iter(["93.184.216.34", "127.0.0.1"])  # at subscription, then at delivery

    def rebinding(host: str, port: int) -> list[IPAddress]:
        return [ip(next(answers))]

    guard = Guard(resolve=rebinding)
    url = receiver.url.replace("127.0.0.1", "hooks.example.test")
    hook = webhooks.create(session, "acme", url, ["ping"], created_by="t", guard=guard)
    webhooks.ping(session, hook)
    with webhooks.DeliveryClient(guard) as client:
        row = webhooks.deliver_one(session, client, max_attempts=3, backoff=timedelta(0))
    assert row is not None and row.last_error == "delivery failed"
    assert receiver.received == []


def test_connected_peer_is_checked_before_a_byte_is_sent(receiver: Receiver) -> None:
    """The resolver says public, but the connection lands on loopback (a transparent proxy,
    a NAT rule): refused on the socket's peer address; the receiver reads no request."""
    port = receiver.server.server_port

    class ToLoopback(httpcore.SyncBackend):
        def connect_tcp(self, host: str, port_: int, timeout: float | None = None,
                        local_address: str | None = None,
                        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                        ) -> httpcore.NetworkStream:
            return super().connect_tcp("127.0.0.1", port, timeout, local_address,
                                       socket_options)

    backend = GuardedBackend(Guard(resolve=lambda host, p: [ip("8.8.8.8")]))
    backend._inner = ToLoopback()
    with (httpcore.ConnectionPool(network_backend=backend) as pool,
          pytest.raises(httpcore.ConnectError, match="connected peer refused")):
        pool.request("POST", f"http://hooks.example.test:{port}/hook", content=b"{}")
    assert receiver.received == []
