"""Host side of the `capabilities` interface: outbound HTTP and secrets, per tenant policy.

`fetch` reaches only hosts on the tenant's egress allow-list (see `egress` for the
patterns and URL normalization), and a host name only at its public addresses unless
the policy allows private networks (`egress.PublicOnlyBackend`). Redirects are followed
here, not by the HTTP client, so every hop is re-checked against the allow-list;
credentials (Authorization, Cookie) are dropped when a redirect changes origin. Limits
come from the tenant's `TenantPolicy`: a timeout for the whole exchange (redirects
included, and never past the running step's or invocation's CPU deadline), a
response-size cap enforced while streaming (the body is never buffered past the cap),
at most `http_max_redirects` hops, and a 1 MiB request body. The client ignores the host's
proxy variables and .netrc (`trust_env=False`) and asks for uncompressed bodies, so the cap
counts the bytes the guest gets.

A guest's exchange runs on a fetch thread while the guest's thread waits for it, checking
the invocation's signals: a terminate (or the engine stopping) leaves the guest at once
instead of when the exchange ends, and the deadline holds even where the client cannot
bound a call (a host name whose DNS never answers: the OS resolver has its own timeouts).
The abandoned exchange ends on its thread within its own timeout or the resolver's.

Durability: inside a step body a fetch is a plain side effect (the step's result is the
record, so a retried attempt fetches again). Outside a step the outcome (response or
error) is journaled as a durable call named `<METHOD> <url without query>` (the query
enters as a digest), so a replay returns the recorded answer instead of fetching again;
such a journaled body is also bounded by the journal's per-entry limit.

Secrets: `secret(name)` answers from `TenantPolicy.secrets`. Values are never journaled
or logged by the host; a name that is not granted is `SecretNotGranted`.

Every failure reaches the guest as `error-info` (which the SDK raises as
`CapabilityError`): EgressDenied, InvalidRequest, RequestTooLarge, ResponseTooLarge,
TooManyRedirects, TimeoutError, ConnectionError, SecretNotGranted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterator, Optional, Union

import httpcore
import httpx

from .egress import EgressError, NonPublicAddress, PublicOnlyBackend, Target, check_egress
from .executor import Invocation, Unwind, current_invocation, err, ok, record
from .limits import MiB, format_bytes, format_sizes, over_limit
from .policy import TenantPolicy

MAX_REQUEST_BODY_BYTES = MiB
MAX_REQUEST_HEADER_BYTES = 64 * 1024
# Exchanges in flight at once, each on a thread of its own. Generous, since an abandoned
# exchange holds its thread until its timeout; a fetch that waits for one counts that wait
# against its own deadline.
FETCH_THREADS = 256
SIGNAL_CHECK_S = 0.05  # how often a waiting guest thread looks at its invocation's signals
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}$")
# Set by the client from the URL and body; a guest choosing them could smuggle requests.
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer"})
_CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


class FetchFailed(Exception):
    """A fetch that ends in an error the guest sees (`name`, `message`)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


@dataclass(frozen=True)
class FetchRequest:
    method: str
    url: str
    headers: list[tuple[str, str]]
    body: Optional[bytes]
    timeout_ms: Optional[int]


@dataclass(frozen=True)
class FetchResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    url: str


Outcome = Union[FetchResponse, FetchFailed]


# ---- the exchange ------------------------------------------------------------------------

_client_lock = threading.Lock()
_shared_clients: dict[bool, httpx.Client] = {}
_LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=16)


def _client(private: bool) -> httpx.Client:
    """Pooled clients per process (thread-safe) that never follow redirects themselves: one
    that connects only to public addresses of host names, and one for tenants allowed
    private networks (kept apart: a pooled connection is reused by origin, so one tenant's
    connection to a private address must never serve another's request)."""
    with _client_lock:
        client = _shared_clients.get(private)
        if client is None:
            transport = httpx.HTTPTransport(limits=_LIMITS, trust_env=False)
            if not private:
                # httpx takes no network backend; its pool is rebuilt with the same settings.
                transport._pool = httpcore.ConnectionPool(
                    ssl_context=httpx.create_ssl_context(trust_env=False),
                    max_connections=_LIMITS.max_connections,
                    max_keepalive_connections=_LIMITS.max_keepalive_connections,
                    keepalive_expiry=_LIMITS.keepalive_expiry,
                    network_backend=PublicOnlyBackend(),
                )
            client = _shared_clients[private] = httpx.Client(
                transport=transport,
                trust_env=False,
                follow_redirects=False,
                headers={"user-agent": "tenantflow", "accept-encoding": "identity"},
            )
        return client


def check_request(request: FetchRequest) -> None:
    """Refuse a malformed request before any network activity."""
    if not _TOKEN.match(request.method):
        raise FetchFailed("InvalidRequest", f"invalid HTTP method {request.method[:64]!r}")
    size = 0
    for name, value in request.headers:
        if not _TOKEN.match(name):
            raise FetchFailed("InvalidRequest", f"invalid header name {name[:64]!r}")
        if "\r" in value or "\n" in value or "\0" in value:
            raise FetchFailed("InvalidRequest", f"header {name!r} has a line break or NUL in its value")
        if name.lower() in _RESERVED_HEADERS:
            raise FetchFailed("InvalidRequest", f"header {name!r} is set by the host from the URL and body; do not set it")
        size += len(name) + len(value.encode())
    if size > MAX_REQUEST_HEADER_BYTES:
        raise FetchFailed("RequestTooLarge", f"request headers are {over_limit(size, MAX_REQUEST_HEADER_BYTES)}")
    if request.body is not None and len(request.body) > MAX_REQUEST_BODY_BYTES:
        raise FetchFailed("RequestTooLarge", f"request body is {over_limit(len(request.body), MAX_REQUEST_BODY_BYTES)}")
    if request.timeout_ms is not None and request.timeout_ms <= 0:
        raise FetchFailed("InvalidRequest", f"timeout must be positive, got {request.timeout_ms} ms")


def perform_fetch(
    request: FetchRequest,
    policy: TenantPolicy,
    tenant: str,
    *,
    deadline: Optional[float] = None,
    max_body: Optional[int] = None,
    client: Optional[httpx.Client] = None,
) -> FetchResponse:
    """Run one exchange (following allowed redirects). `deadline` is a `time.monotonic()`
    bound on top of the request's and policy's timeout; `max_body` lowers the policy's
    response cap. Raises FetchFailed."""
    check_request(request)
    end, timeout_ms = _budget(request, policy, deadline)
    cap = policy.http_max_response_bytes if max_body is None else min(max_body, policy.http_max_response_bytes)
    try:
        target = check_egress(request.url, policy.egress, tenant)
    except EgressError as exc:
        raise FetchFailed(exc.name, exc.message) from None
    method, headers, body = request.method.upper(), list(request.headers), request.body
    http = client or _client(policy.egress_private)
    for hop in range(policy.http_max_redirects + 1):
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise FetchFailed("TimeoutError", f"fetch to {target.origin} timed out after {timeout_ms} ms")
        try:
            with http.stream(method, target.url, headers=headers, content=body, timeout=httpx.Timeout(remaining)) as response:
                location = response.headers.get("location") if response.status_code in REDIRECT_STATUSES else None
                if location is None:
                    data = _read_capped(response.iter_raw(), response, target, cap, end, timeout_ms)
                    return FetchResponse(response.status_code, list(response.headers.multi_items()), data, str(target.url))
        except httpx.TimeoutException:
            raise FetchFailed("TimeoutError", f"fetch to {target.origin} timed out after {timeout_ms} ms") from None
        except (httpx.InvalidURL, httpx.LocalProtocolError, httpx.UnsupportedProtocol) as exc:
            raise FetchFailed("InvalidRequest", f"fetch to {target.origin}: {exc}") from None
        except httpx.HTTPError as exc:
            if isinstance(exc.__cause__, NonPublicAddress):  # refused at connect time (egress.PublicOnlyBackend)
                raise FetchFailed("EgressDenied", f"fetch to {target.origin} is not allowed for tenant {tenant}: {exc.__cause__}") from None
            raise FetchFailed("ConnectionError", f"fetch to {target.origin} failed: {exc or type(exc).__name__}") from None
        if hop == policy.http_max_redirects:
            break
        try:
            following = check_egress(target.url.join(location), policy.egress, tenant)
        except (EgressError, httpx.InvalidURL) as exc:
            name, message = (exc.name, exc.message) if isinstance(exc, EgressError) else ("InvalidRequest", str(exc))
            raise FetchFailed(name, f"redirect from {target.origin} refused: {message}") from None
        method, headers, body = _redirected(response.status_code, method, headers, body, target, following)
        target = following
    raise FetchFailed("TooManyRedirects", f"fetch of {request.url[:200]!r} was redirected more than {policy.http_max_redirects} times")


def _budget(request: FetchRequest, policy: TenantPolicy, deadline: Optional[float]) -> tuple[float, int]:
    """When the exchange must be over (`time.monotonic()`), and that budget in ms for messages."""
    timeout_ms = min(request.timeout_ms or policy.http_timeout_ms, policy.http_timeout_ms)
    end = time.monotonic() + timeout_ms / 1000
    if deadline is not None and deadline < end:
        end, timeout_ms = deadline, max(0, int((deadline - time.monotonic()) * 1000))
    return end, timeout_ms


_fetch_slots = threading.BoundedSemaphore(FETCH_THREADS)


def _on_fetch_thread(exchange: Callable[[], FetchResponse]) -> "Future[FetchResponse]":
    """Run `exchange` on a daemon thread of its own (a slot must be held): an abandoned
    exchange must not hold up the process's exit, as a pool's worker would."""
    future: Future[FetchResponse] = Future()

    def run() -> None:
        try:
            if future.set_running_or_notify_cancel():
                future.set_result(exchange())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting guest thread
            future.set_exception(exc)
        finally:
            _fetch_slots.release()

    try:
        threading.Thread(target=run, name="tenantflow-fetch", daemon=True).start()
    except BaseException:  # no thread (a resource limit): the slot is not taken after all
        _fetch_slots.release()
        raise
    return future


def fetch_unless_cancelled(
    request: FetchRequest,
    policy: TenantPolicy,
    tenant: str,
    cancelled: Callable[[], bool],
    *,
    deadline: Optional[float] = None,
    max_body: Optional[int] = None,
) -> FetchResponse:
    """`perform_fetch` on a fetch thread, waited for here until it ends, its deadline
    passes (TimeoutError, even when the exchange is stuck where no timeout reaches) or
    `cancelled()` turns true (Unwind("cancelled"): the exchange is abandoned to its thread)."""
    check_request(request)
    end, timeout_ms = _budget(request, policy, deadline)
    # A little past `end`: the exchange's own timeout reports first, naming what timed out.
    give_up = end + 0.25
    future: Optional[Future[FetchResponse]] = None
    while True:
        if cancelled():
            raise Unwind("cancelled")
        remaining = give_up - time.monotonic()
        if remaining <= 0:
            raise FetchFailed("TimeoutError", f"fetch to {_origin(request.url, policy, tenant)} timed out after {timeout_ms} ms")
        wait = min(SIGNAL_CHECK_S, remaining)
        if future is None:  # waiting for a thread counts against the deadline
            if _fetch_slots.acquire(timeout=wait):
                future = _on_fetch_thread(partial(perform_fetch, request, policy, tenant, deadline=end, max_body=max_body))
            continue
        try:
            return future.result(timeout=wait)
        except FutureTimeout:
            continue


def _origin(url: str, policy: TenantPolicy, tenant: str) -> str:
    try:
        return check_egress(url, policy.egress, tenant).origin
    except EgressError:
        return url[:200]


def _read_capped(chunks: Iterator[bytes], response: httpx.Response, target: Target, cap: int, end: float, timeout_ms: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        shown, limit = format_sizes(int(declared), cap)
        raise FetchFailed("ResponseTooLarge", f"the response from {target.origin} is {shown} (Content-Length); the limit is {limit}")
    parts: list[bytes] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > cap:
            raise FetchFailed("ResponseTooLarge", f"the response from {target.origin} exceeds the limit of {format_bytes(cap)}; stopped reading there")
        parts.append(chunk)
        if time.monotonic() > end:
            raise FetchFailed("TimeoutError", f"fetch to {target.origin} timed out after {timeout_ms} ms")
    return b"".join(parts)


def _redirected(
    status: int, method: str, headers: list[tuple[str, str]], body: Optional[bytes], source: Target, target: Target
) -> tuple[str, list[tuple[str, str]], Optional[bytes]]:
    """The next hop's request, as browsers (and httpx) build it."""
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method, body = "GET", None
        headers = [(k, v) for k, v in headers if k.lower() not in ("content-type", "content-encoding")]
    same_origin = (source.url.scheme, source.host, source.port) == (target.url.scheme, target.host, target.port)
    upgraded = source.url.scheme == "http" and target.url.scheme == "https" and source.host == target.host
    if not same_origin and not upgraded:
        headers = [(k, v) for k, v in headers if k.lower() not in _CREDENTIAL_HEADERS]
    return method, headers, body


# ---- journal form of an outcome ----------------------------------------------------------


def encode_outcome(outcome: Outcome) -> str:
    if isinstance(outcome, FetchFailed):
        return json.dumps({"err": {"name": outcome.name, "message": outcome.message}})
    return json.dumps(
        {
            "ok": {
                "status": outcome.status,
                "headers": outcome.headers,
                "body": base64.b64encode(outcome.body).decode("ascii"),
                "url": outcome.url,
            }
        }
    )


def decode_outcome(text: str) -> Outcome:
    data = json.loads(text)
    if "err" in data:
        return FetchFailed(data["err"]["name"], data["err"]["message"])
    r = data["ok"]
    return FetchResponse(r["status"], [(k, v) for k, v in r["headers"]], base64.b64decode(r["body"]), r["url"])


def call_name(request: FetchRequest, limit: int, secrets: dict[str, str]) -> str:
    """The durable call's name: method and URL, the query (which often carries keys)
    reduced to a digest, known secret values redacted."""
    base, sep, query = request.url.partition("?")
    base = base.split("#", 1)[0]
    name = f"{request.method.upper()} {base}"
    if sep:
        name += "?#" + hashlib.sha256(query.encode()).hexdigest()[:12]
    for value in secrets.values():
        if len(value) >= 4:
            name = name.replace(value, "[secret]")
    if len(name) > limit:
        name = name[: limit - 13] + "~" + hashlib.sha256(name.encode()).hexdigest()[:12]
    return name


# ---- host imports ------------------------------------------------------------------------


def _request_from_wit(request: Any) -> FetchRequest:
    body = request.body
    return FetchRequest(
        method=str(request.method),
        url=str(request.url),
        headers=[(str(k), str(v)) for k, v in request.headers],
        body=bytes(body) if body is not None else None,
        timeout_ms=request.timeout,
    )


def _to_wit(outcome: Outcome) -> Any:
    if isinstance(outcome, FetchFailed):
        return err(outcome.name, outcome.message, tagged=True)
    return ok(record(status=outcome.status, headers=outcome.headers, body=outcome.body, url=outcome.url), tagged=True)


def _attempt(inv: Invocation, request: FetchRequest, max_body: Optional[int]) -> Outcome:
    deadline_ms = inv.deadline_ms
    if inv.in_step:
        deadline_ms = min(deadline_ms, inv.step_deadline)
    deadline = time.monotonic() + (deadline_ms - inv.now_wall()) / 1000  # same clock, seconds
    control = inv.control
    try:
        return fetch_unless_cancelled(request, inv.policy, inv.row.tenant, lambda: control.cancelled, deadline=deadline, max_body=max_body)
    except FetchFailed as failed:
        if failed.name == "EgressDenied":
            inv.log("host", f"egress denied: {failed.message}")
        elif failed.name == "ResponseTooLarge" and max_body is not None and max_body < inv.policy.http_max_response_bytes:
            failed.message += "; a fetch outside a step is journaled and bounded like a step result: fetch inside step.do for larger bodies"
        return failed
    except Unwind:  # terminated meanwhile: leave the guest
        raise
    except Exception as exc:  # noqa: BLE001 - a client bug must not take the invocation down
        return FetchFailed("ConnectionError", f"fetch failed: {type(exc).__name__}: {exc}")


def _fetch(_: Any, wit_request: Any) -> Any:
    inv = current_invocation()
    request = _request_from_wit(wit_request)
    if inv.in_step:
        return _to_wit(_attempt(inv, request, None))
    limits = inv.x.limits
    name = call_name(request, limits.max_step_name_chars, inv.policy.secrets)
    answer = inv.durable_call("fetch", name, lambda: encode_outcome(_attempt(inv, request, limits.max_step_result_bytes)))
    return _to_wit(decode_outcome(answer))


def _secret(_: Any, name: str) -> Any:
    inv = current_invocation()
    value = inv.policy.secrets.get(name)
    if value is None:
        return err("SecretNotGranted", f"secret {name[:100]!r} is not granted to tenant {inv.row.tenant}", tagged=False)
    return ok(value, tagged=False)


HOST_FUNCTIONS: dict[str, Callable[..., Any]] = {"fetch": _fetch, "secret": _secret}
