"""Egress allow-lists: which URLs a tenant's guests may fetch.

An entry is `host`, `host:port`, `*.suffix` or `*.suffix:port` (IPv6 as `[::1]:8080`).
`*.example.com` matches any subdomain of example.com, not example.com itself. An entry
without a port allows any port on that host; with one, only that port (the scheme's
default port counts when the URL names none).

URLs are checked as the HTTP client will use them: parsed once with httpx (the same
parse the request then goes to), scheme http/https only, no user info, host lowercased,
IDNA-encoded and without its trailing dot. The checked URL object is the one requested,
so a check and a connection can never disagree about the host.

An allowed host name must also resolve to a public address, checked when the connection
is made (`PublicOnlyBackend`: the address checked is the one connected to, so a name
that is re-pointed between a check and a connect gains nothing). Otherwise a tenant who
controls the DNS of a name it may fetch could point it at the host's loopback, a private
network or the cloud's metadata service. A host given as an IP literal is what the
allow-list named itself and is connected to as it is; `TenantPolicy.egress_private`
lifts the rule for a tenant the platform trusts with its private networks.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import httpcore
import httpx
import idna

DEFAULT_PORTS = {"http": 80, "https": 443}
_LABELS = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*$")


class EgressError(Exception):
    """A URL or allow-list entry is refused; `name` is the error name the guest sees."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


def normalize_host(host: str) -> str:
    """Canonical form of a host name or IP literal; ValueError if it is neither."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        pass
    if host.endswith("."):  # the fully qualified form names the same host
        host = host[:-1]
    if not host:
        raise ValueError("empty host name")
    try:
        ascii_host = idna.encode(host, uts46=True).decode("ascii").lower()
    except idna.IDNAError as exc:
        raise ValueError(f"invalid host name {host!r}: {exc}") from None
    if not _LABELS.match(ascii_host):
        raise ValueError(f"invalid host name {host!r}")
    return ascii_host


@dataclass(frozen=True)
class AllowEntry:
    host: str  # normalized; for a wildcard, the suffix without "*."
    wildcard: bool
    port: Optional[int]

    @classmethod
    def parse(cls, entry: str) -> "AllowEntry":
        text = entry.strip()
        if not text:
            raise ValueError("empty entry")
        if "://" in text or "/" in text or "@" in text:
            raise ValueError(f"{entry!r} is not a host pattern: use 'host', 'host:port' or '*.suffix' (no scheme, path or user)")
        wildcard = text.startswith("*.")
        if wildcard:
            text = text[2:]
        if "*" in text:
            raise ValueError(f"{entry!r}: '*' is only allowed as a leading '*.' label")
        host, port = _split_port(text, entry)
        try:
            normalized = normalize_host(host)
        except ValueError as exc:
            raise ValueError(f"{entry!r}: {exc}") from None
        if wildcard and _is_ip(normalized):
            raise ValueError(f"{entry!r}: a wildcard needs a domain suffix, not an IP address")
        return cls(normalized, wildcard, port)

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = f"*.{host}" if self.wildcard else host
        return text if self.port is None else f"{text}:{self.port}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _split_port(text: str, entry: str) -> tuple[str, Optional[int]]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{entry!r}: unclosed '[' in an IPv6 address")
        host, rest = text[: end + 1], text[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"{entry!r}: unexpected {rest!r} after the IPv6 address")
        return host, _port(rest[1:], entry)
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, _port(port, entry)
    if ":" in text:  # a bare IPv6 address
        return text, None
    return text, None


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{entry!r}: port must be a number from 1 to 65535, got {text!r}")
    return int(text)


@functools.lru_cache(maxsize=512)
def parse_allow_list(entries: tuple[str, ...]) -> tuple[AllowEntry, ...]:
    """Parsed entries (cached: policies are immutable and checked on every fetch)."""
    return tuple(AllowEntry.parse(e) for e in entries)


@dataclass(frozen=True)
class Target:
    url: httpx.URL
    host: str  # normalized
    port: int  # effective (the scheme's default when the URL names none)

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_target(url: "str | httpx.URL") -> Target:
    """Parse and normalize a URL for checking; EgressError("InvalidRequest") if unusable."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise EgressError("InvalidRequest", f"invalid URL {str(url)[:200]!r}: {exc}") from None
    if parsed.scheme not in DEFAULT_PORTS:
        raise EgressError("InvalidRequest", f"only http and https URLs can be fetched, not {parsed.scheme or 'a relative URL'!r}")
    if parsed.userinfo:
        raise EgressError("InvalidRequest", "URLs with user info (user:password@) are not allowed; send an Authorization header instead")
    raw = parsed.raw_host.decode("ascii", "replace")
    if not raw:
        raise EgressError("InvalidRequest", f"URL {str(parsed)[:200]!r} has no host")
    try:
        host = normalize_host(raw)
    except ValueError as exc:
        raise EgressError("InvalidRequest", f"URL {str(parsed)[:200]!r}: {exc}") from None
    port = parsed.port if parsed.port is not None else DEFAULT_PORTS[parsed.scheme]
    if not 0 < port < 65536:
        raise EgressError("InvalidRequest", f"URL {str(parsed)[:200]!r}: invalid port {port}")
    return Target(parsed, host, port)


def check_egress(url: "str | httpx.URL", allow: Sequence[str], tenant: str) -> Target:
    """The parsed target if `tenant` may fetch `url`; EgressError otherwise."""
    target = parse_target(url)
    try:
        entries = parse_allow_list(tuple(allow))
    except ValueError as exc:
        raise EgressError("EgressDenied", f"fetch to {target.host} is not allowed for tenant {tenant}: its egress allow-list is invalid ({exc})") from None
    if any(e.matches(target.host, target.port) for e in entries):
        return target
    if not entries:
        why = "the tenant has no egress allow-list"
    elif any(e.matches(target.host, e.port or target.port) for e in entries):
        why = f"port {target.port} is not allowed (allowed: {', '.join(map(str, entries))})"
    else:
        why = f"host not on the allow-list ({', '.join(map(str, entries))})"
    raise EgressError("EgressDenied", f"fetch to {target.host} is not allowed for tenant {tenant}: {why}")


def is_public(address: str) -> bool:
    """Whether `address` (an IP literal) is globally routable unicast: not loopback, private,
    link-local (the cloud metadata service), shared (CGNAT), reserved or multicast, nor an
    IPv6 form of one (IPv4-mapped)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id names a local link
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class NonPublicAddress(httpcore.ConnectError):
    """A host name resolved to no public address (see the module's docstring)."""


class PublicOnlyBackend(httpcore.NetworkBackend):
    """httpcore's sockets, connected only to public addresses of a host name (an IP literal
    host is connected to as given: the allow-list named it)."""

    def __init__(self, inner: Optional[httpcore.NetworkBackend] = None) -> None:
        self._inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self, host: str, port: int, timeout: Optional[float] = None, local_address: Optional[str] = None,
        socket_options: Optional[Iterable[Any]] = None,
    ) -> httpcore.NetworkStream:
        if _is_ip(host):
            return self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
        public = [address for address in addresses if is_public(address)]
        if not public:
            raise NonPublicAddress(
                f"{host} resolves to {', '.join(addresses)}: no public address, and the tenant's policy does not allow private networks"
            )
        failure: Optional[httpcore.ConnectError] = None
        for address in public:
            try:
                return self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                failure = exc
        assert failure is not None
        raise failure

    def connect_unix_socket(self, path: str, timeout: Optional[float] = None, socket_options: Optional[Iterable[Any]] = None) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("guest fetches do not use unix sockets")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)
