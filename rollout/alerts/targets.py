"""Where alerts may go: public addresses by default, inside the network only when opened.

Where this sits in the path of a rollout: a plan names its alert channels, and the controller
POSTs to them from inside its own network. Without a rule, anyone who may submit a plan could
make it POST to a loopback service, a private range or a cloud metadata address (and, before
answers were cut to a redacted excerpt, read the answer in the log). So a channel's URL is
checked twice: when a plan is submitted or its channels replaced (``refusal``, the API answers
422 naming ``alerts[i].url``), and again before every delivery, after DNS resolution
(``check_delivery``), so that a name re-pointed since submission (DNS rebinding) is refused
too; the HTTP client then connects only to the addresses that were checked
(``PinnedBackend``), never resolving the name a second time.

Refused by default: loopback, link-local (169.254.0.0/16, where cloud metadata answers),
known metadata addresses, private ranges (10/8, 172.16/12, 192.168/16, fc00::/7, 100.64/10),
and anything else that is not a public address. ``AlertSettings.allowed_hosts`` opens names,
addresses or networks (``alertmanager, 127.0.0.1, 10.2.0.0/16``; ``*`` opens everything), and
``AlertSettings.allow_private`` opens the private ranges (not loopback, link-local or
metadata). A name listed in ``allowed_hosts`` is trusted whatever it resolves to.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from rollout.alerts.errors import TargetRefused, TargetUnresolvable
from rollout.redaction import redact_url

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolve = Callable[[str, int], Awaitable[list[str]]]
"""``resolve(host, port)``: the addresses a name resolves to (``socket.gaierror`` if none)."""

# Cloud instance metadata outside link-local: AWS over IPv6, Alibaba Cloud.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("fd00:ec2::254", "100.100.100.200", "169.254.169.254")
)
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: not public either
_RESOLVE_TIMEOUT = 5.0


async def system_resolve(host: str, port: int) -> list[str]:
    """The system resolver, off the event loop."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def classify(address: IPAddress) -> tuple[str, bool] | None:
    """Why an address is not public, and whether ``allow_private`` opens it; None: public."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address", False
    if address.is_loopback:
        return "a loopback address", False
    if address.is_link_local:
        return "a link-local address (where cloud metadata answers)", False
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        return "a reserved address", False
    if address in _SHARED or address.is_private:
        return "a private address", True
    if not address.is_global:
        return "not a public address", False
    return None


@dataclass(frozen=True)
class TargetPolicy:
    """Which alert targets are allowed (see the module docstring)."""

    allowed_names: frozenset[str] = frozenset()
    allowed_networks: tuple[IPNetwork, ...] = ()
    allow_private: bool = False
    allow_all: bool = False
    resolve: Resolve = field(default=system_resolve, compare=False)

    @classmethod
    def parse(
        cls, allowed_hosts: str | Iterable[str] = "", *, allow_private: bool = False,
        resolve: Resolve = system_resolve,
    ) -> TargetPolicy:
        """From ``'name, 10.0.0.5, 10.2.0.0/16, *'``; ``ValueError`` names a bad item."""
        items = allowed_hosts.split(",") if isinstance(allowed_hosts, str) else allowed_hosts
        names: set[str] = set()
        networks: list[IPNetwork] = []
        allow_all = False
        for raw in items:
            item = raw.strip().lower().strip("[]")
            if not item:
                continue
            if item == "*":
                allow_all = True
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
                continue
            except ValueError:
                pass
            if "/" in item or ":" in item or " " in item:
                raise ValueError(f"allowed alert host {raw.strip()!r} is not a name, address "
                                 "or network")
            names.add(item.rstrip("."))
        return cls(frozenset(names), tuple(networks), allow_private, allow_all, resolve)

    def _address_refusal(self, address: IPAddress) -> str | None:
        if self.allow_all or any(address in network for network in self.allowed_networks):
            return None
        found = classify(address)
        if found is None:
            return None
        reason, private = found
        if private and self.allow_private:
            return None
        return reason

    async def addresses(self, url: str) -> tuple[str, int, list[str]]:
        """``(host, port, addresses)`` of an allowed URL; ``TargetRefused`` if any address it
        resolves to is not allowed, ``TargetUnresolvable`` if it does not resolve."""
        where = redact_url(url)
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").rstrip(".").lower()
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise TargetRefused(f"alert URL {where} cannot be read: {exc}") from exc
        if not host:
            raise TargetRefused(f"alert URL {where} has no host")
        literal = _address(host)
        if literal is not None:
            found = [str(literal)]
        elif self.allow_all or host in self.allowed_names:
            return host, port, []  # trusted by name: the client resolves it itself
        else:
            try:
                async with asyncio.timeout(_RESOLVE_TIMEOUT):
                    found = await self.resolve(host, port)
            except (UnicodeError, ValueError) as exc:
                # Not a name DNS can carry (IDNA refuses it): no waiting will change that.
                raise TargetRefused(f"alert URL {where} has no valid host name") from exc
            except (OSError, TimeoutError) as exc:
                raise TargetUnresolvable(f"alert host of {where} does not resolve: {exc}") \
                    from exc
            if not found:
                raise TargetUnresolvable(f"alert host of {where} does not resolve")
        for text in found:
            address = _address(text)
            reason = "not an IP address" if address is None else self._address_refusal(address)
            if reason is not None:
                shown = f" ({host} resolves to {text})" if literal is None else ""
                raise TargetRefused(
                    f"alert URL {where} points to {reason}{shown}; the controller sends alerts "
                    "there only when ROLLOUT_ALERTS_ALLOWED_HOSTS lists it (or "
                    "ROLLOUT_ALERTS_ALLOW_PRIVATE=true, for private ranges)"
                )
        return host, port, found

    def literal_refusal(self, url: str) -> str | None:
        """Why ``url`` is refused when its host is an address (no DNS), else None: the
        daemon checks its default channels with it at start, before any alert is due."""
        try:
            host = (urlsplit(url).hostname or "").rstrip(".").lower()
        except ValueError:
            return None
        address = _address(host)
        if address is None:
            return None
        reason = self._address_refusal(address)
        return None if reason is None else f"alert URL {redact_url(url)} points to {reason}"

    async def refusal(self, url: str) -> str | None:
        """At submission: why ``url`` is refused, or None. A name that does not resolve now is
        not refused (delivery checks it again)."""
        try:
            await self.addresses(url)
        except TargetRefused as exc:
            return str(exc)
        except TargetUnresolvable:
            return None
        return None


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses the policy allowed.

    Every new connection resolves the host once, checks every address, and connects to those
    addresses (in order) rather than letting the name be resolved again: between the check
    and the connection nothing can re-point it. TLS still verifies the certificate against
    the name, which httpcore passes to ``start_tls`` itself.
    """

    def __init__(self, policy: TargetPolicy, inner: httpcore.AsyncNetworkBackend) -> None:
        self.policy = policy
        self.inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 -- httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        shown = f"[{host}]" if ":" in host else host
        _, _, addresses = await self.policy.addresses(f"http://{shown}:{port}")
        last: Exception | None = None
        for address in addresses or [host]:
            try:
                return await self.inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None  # noqa: S101 -- the loop ran at least once
        raise last

    async def connect_unix_socket(
        self,
        path: str,  # noqa: ARG002
        timeout: float | None = None,  # noqa: ARG002, ASYNC109
        socket_options: Iterable[Any] | None = None,  # noqa: ARG002
    ) -> httpcore.AsyncNetworkStream:
        raise TargetRefused("alerts are not sent over unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def guarded_client(policy: TargetPolicy, *, timeout: float) -> httpx.AsyncClient:
    """The alert dispatcher's HTTP client: no redirects (a receiver cannot send the request
    elsewhere), connections only to addresses ``policy`` allows (``PinnedBackend``)."""
    transport = httpx.AsyncHTTPTransport()
    pool: Any = transport._pool  # httpx has no network_backend option
    pool._network_backend = PinnedBackend(policy, pool._network_backend)
    return httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False)
