"""Capabilities the platform grants a tenant: outbound HTTP and secrets.

    from tenantflow_guest import CapabilityError, fetch, secret

    resp = fetch("https://api.example.com/orders", headers={"authorization": f"Bearer {secret('API_TOKEN')}"})
    orders = resp.json()

The host checks every call against the tenant's policy (egress allow-list, granted
secrets, timeouts and size caps) and answers a denial or failure with an error, raised
here as `CapabilityError` (catchable). Outside a step the host journals a fetch's
outcome, so replays see what the first run saw; inside `step.do` the step's result is
the record (a retried attempt fetches again).
"""

from __future__ import annotations

import json as _json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Union

from ._durations import to_ms

# componentize-py snapshots the interpreter at build time: the bindings must be imported
# now, at module import, to exist at run time. Outside a component (SDK unit tests) they
# do not exist; a backend is then installed with `_use_backend`.
try:
    from componentize_py_types import Err as _Err
    from wit_world.imports import capabilities as _wit
except ImportError:  # pragma: no cover - depends on where the SDK is imported
    _Err = None  # type: ignore[assignment,misc]
    _wit = None  # type: ignore[assignment]


class CapabilityError(Exception):
    """The host refused or could not complete a capability call.

    `name` says why: EgressDenied, InvalidRequest, RequestTooLarge, ResponseTooLarge,
    TooManyRedirects, TimeoutError, ConnectionError, SecretNotGranted."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


class Headers(Mapping[str, str]):
    """Response headers: case-insensitive, in the order received; repeated ones kept."""

    def __init__(self, items: Sequence[tuple[str, str]]) -> None:
        self._items = [(str(k), str(v)) for k, v in items]

    def __getitem__(self, name: str) -> str:
        values = self.get_all(name)
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    def get_all(self, name: str) -> list[str]:
        lower = name.lower()
        return [v for k, v in self._items if k.lower() == lower]

    def __iter__(self) -> Iterator[str]:
        seen: dict[str, None] = {}
        for k, _ in self._items:
            seen.setdefault(k.lower(), None)
        return iter(seen)

    def __len__(self) -> int:
        return len({k.lower() for k, _ in self._items})

    def raw(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


@dataclass(frozen=True)
class Response:
    status: int
    headers: Headers
    body: bytes
    url: str  # after redirects

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def text(self) -> str:
        return self.body.decode(self._charset(), errors="replace")

    def json(self) -> Any:
        return _json.loads(self.body.decode(self._charset()))

    def raise_for_status(self) -> "Response":
        if not self.ok:
            raise CapabilityError("HTTPStatusError", f"{self.url} answered {self.status}")
        return self

    def _charset(self) -> str:
        content_type = self.headers.get("content-type", "")
        for part in content_type.split(";")[1:]:
            key, _, value = part.strip().partition("=")
            if key.lower() == "charset" and value:
                try:
                    "".encode(value.strip('"'))
                    return value.strip('"')
                except LookupError:
                    break
        return "utf-8"


class _Backend(Protocol):
    def fetch(self, method: str, url: str, headers: list[tuple[str, str]], body: Optional[bytes], timeout_ms: Optional[int]) -> Response: ...

    def secret(self, name: str) -> str: ...


def _no_replay() -> None:
    pass


class _WitBackend:
    # Set by the runtime to the host's `sync`: a capability call may be a durable call,
    # so a replay answered in the guest must end before it (see WitHost.sync).
    before_call = staticmethod(_no_replay)

    def fetch(self, method: str, url: str, headers: list[tuple[str, str]], body: Optional[bytes], timeout_ms: Optional[int]) -> Response:
        self.before_call()
        try:
            r = _wit.fetch(_wit.HttpRequest(method, url, headers, body, timeout_ms))
        except _Err as exc:
            raise CapabilityError(exc.value.name, exc.value.message) from None
        return Response(r.status, Headers(r.headers), bytes(r.body), r.url)

    def secret(self, name: str) -> str:
        self.before_call()
        try:
            return str(_wit.secret(name))
        except _Err as exc:
            raise CapabilityError(exc.value.name, exc.value.message) from None


_backend: Optional[_Backend] = _WitBackend() if _wit is not None else None


def _use_backend(backend: Optional[_Backend]) -> None:
    """Install a backend (SDK tests outside a component)."""
    global _backend
    _backend = backend


def _get_backend() -> _Backend:
    if _backend is None:
        raise CapabilityError("Unavailable", "capabilities are only available inside a tenantflow component")
    return _backend


Body = Union[bytes, bytearray, memoryview, str, dict, list, None]


def _headers(headers: Union[Mapping[str, str], Sequence[tuple[str, str]], None]) -> list[tuple[str, str]]:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    out = []
    for item in items:
        name, value = item
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"header names and values must be strings, got {name!r}: {value!r}")
        out.append((name, value))
    return out


def fetch(
    url: str,
    method: str = "GET",
    headers: Union[Mapping[str, str], Sequence[tuple[str, str]], None] = None,
    body: Body = None,
    timeout: Any = None,
) -> Response:
    """An HTTP request to a host on the tenant's allow-list.

    `body` may be bytes, str (sent as UTF-8) or a dict/list (sent as JSON, with a JSON
    content type unless one is given). `timeout` is a duration ("5 seconds", ms or a
    timedelta), capped by the host's policy. Any status is a `Response`; denials,
    timeouts, oversize bodies and network failures raise `CapabilityError`."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a string, got {type(url).__name__}")
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    pairs = _headers(headers)
    data: Optional[bytes]
    if body is None:
        data = None
    elif isinstance(body, (bytes, bytearray, memoryview)):
        data = bytes(body)
    elif isinstance(body, str):
        data = body.encode()
    elif isinstance(body, (dict, list)):
        data = _json.dumps(body, allow_nan=False).encode()
        if not any(k.lower() == "content-type" for k, _ in pairs):
            pairs.append(("content-type", "application/json"))
    else:
        raise TypeError(f"body must be bytes, str, dict or list, got {type(body).__name__}")
    timeout_ms = None if timeout is None else to_ms(timeout, "timeout")
    return _get_backend().fetch(method.upper(), url, pairs, data, timeout_ms)


def secret(name: str) -> str:
    """The value of a secret granted to this tenant; `CapabilityError` if not granted."""
    if not isinstance(name, str):
        raise TypeError(f"secret name must be a string, got {type(name).__name__}")
    return _get_backend().secret(name)
