"""Where tool nodes may send HTTP requests: an agent graph posted to the daemon must not be a way to
reach the daemon's own network (its loopback services, the cloud metadata address, the private LAN).

A target is refused when any address its host resolves to is loopback, link-local, private,
reserved, multicast or unspecified, unless the host, the address or a network (CIDR) holding it is
in the allow-list. ``allow=None`` means no policy at all: the embedded runner (`hetagent run`) calls
whatever the spec names, as the user who wrote it could anyway; the daemon always passes a list
(its ``tool_allow`` setting, empty by default). Checked before every request, redirects included
(``check_target``, naming the URL), and again on the address each connection is opened to
(``checked_transport``): a DNS answer that changes between the two lookups (rebinding) cannot reach an
internal address. Through a proxy (HTTP(S)_PROXY), the connection checked is the proxy's."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

__all__ = ["EgressRefused", "SETTING", "check_target", "checked_transport"]

SETTING = "tool_allow (HETAGENT_TOOL_ALLOW)"

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class EgressRefused(ValueError):
    """A tool URL the server's egress policy refuses; the message names the URL and the setting."""


def _internal(addr: _Address) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return (
        addr.is_loopback
        or addr.is_link_local
        or addr.is_private
        or addr.is_reserved
        or addr.is_multicast
        or addr.is_unspecified
    )


def _allowed(host: str, addr: _Address, allow: list[str]) -> bool:
    for entry in allow:
        entry = entry.strip().lower()
        if entry == host:
            return True
        try:
            if addr in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue  # a host name that is not this one
    return False


def check_target(url: str, allow: list[str] | None) -> None:
    """Raise EgressRefused unless ``url`` may be called under ``allow`` (see the module docstring)."""
    if allow is None:
        return
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise EgressRefused(f"tool URL {url!r} refused: only http(s) URLs with a host may be called")
    _allowed_addresses(url, host, parts.port or (443 if parts.scheme == "https" else 80), allow)


def _allowed_addresses(what: str, host: str, port: int, allow: list[str]) -> list[_Address]:
    """The addresses ``host`` resolves to, in the resolver's order; EgressRefused if any is refused."""
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise EgressRefused(f"tool URL {what!r} refused: cannot resolve {host!r} ({exc})") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
    for addr in addresses:
        if _internal(addr) and not _allowed(host, addr, allow):
            raise EgressRefused(
                f"tool URL {what!r} refused: {host} resolves to {addr}, a loopback, link-local or private "
                f"address; to allow it add the host, the address or its network to the server setting {SETTING}"
            )
    return addresses


def checked_transport(allow: list[str]) -> Any:
    """An httpx transport whose connections go only to addresses ``allow`` permits: the host is resolved once
    at connect time, every answer checked, and the socket opened to a checked address (TLS still verifies
    the host name)."""
    import httpcore
    import httpx

    class _CheckedBackend(httpcore.SyncBackend):
        def connect_tcp(
            self,
            host: str,
            port: int,
            timeout: float | None = None,
            local_address: str | None = None,
            socket_options: Iterable[Any] | None = None,
        ) -> httpcore.NetworkStream:
            failed: Exception | None = None
            for addr in _allowed_addresses(f"{host}:{port}", host.lower(), port, allow):  # each, as the resolver
                try:  # orders them (``localhost``: ::1 then 127.0.0.1)
                    return super().connect_tcp(str(addr), port, timeout, local_address, socket_options)
                except httpcore.ConnectError as exc:
                    failed = exc
            assert failed is not None  # _allowed_addresses returns at least one address or raises
            raise failed

    transport = httpx.HTTPTransport()
    # the pool httpx built (its limits, keep-alive, TLS context kept), with the backend that opens its sockets
    # replaced: httpx has no parameter for it, and the pool reads the attribute for every new connection
    transport._pool._network_backend = _CheckedBackend()
    return transport
