"""Egress allow-lists: which URLs a tenant's guests may fetch.

An entry is `host`, `host:port`, `*.suffix` or `*.suffix:port` (IPv6 as `[::1]:8080`).
`*.example.com` matches any subdomain of example.com, not example.com itself. An entry
without a port allows any port on that host; with one, only that port (the scheme's
default port counts when the URL names none).

URLs are checked as the HTTP client will use them: parsed once with httpx (the same
parse the request then goes to), scheme http/https only, no user info, host lowercased,
IDNA-encoded and without its trailing dot. The checked URL object is the one requested,
so a check and a connection can never disagree about the host.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import Optional, Sequence

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
