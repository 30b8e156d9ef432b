"""Where tool nodes may send HTTP requests: an agent graph posted to the daemon must not be a way to
reach the daemon's own network (its loopback services, the cloud metadata address, the private LAN).

A target is refused when any address its host resolves to is loopback, link-local, private,
reserved, multicast or unspecified, unless the host, the address or a network (CIDR) holding it is
in the allow-list. ``allow=None`` means no policy at all: the embedded runner (`hetagent run`) calls
whatever the spec names, as the user who wrote it could anyway; the daemon always passes a list
(its ``tool_allow`` setting, empty by default). Checked before every request, redirects included.

Not covered: a DNS answer that changes between this check and httpx's own lookup (rebinding)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

__all__ = ["EgressRefused", "SETTING", "check_target"]

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
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80))
        except (OSError, UnicodeError) as exc:
            raise EgressRefused(f"tool URL {url!r} refused: cannot resolve {host!r} ({exc})") from None
        addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
    for addr in sorted(addresses, key=str):
        if _internal(addr) and not _allowed(host, addr, allow):
            raise EgressRefused(
                f"tool URL {url!r} refused: {host} resolves to {addr}, a loopback, link-local or private "
                f"address; to allow it add the host, the address or its network to the server setting {SETTING}"
            )
