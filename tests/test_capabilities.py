"""Capabilities: egress allow-lists (URL normalization, redirects, caps) against a real
server on 127.0.0.1, secrets, and the guest SDK's side, from the pure functions up to
guests compiled from real source (with a bystander tenant running beside them)."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from enginekit import REPO, open_engine
from sandboxkit import BYSTANDER, LoopbackServer, check_bystander, start_bystander

from tenantflow.capabilities import (
    FetchFailed,
    FetchRequest,
    call_name,
    decode_outcome,
    encode_outcome,
    fetch_unless_cancelled,
    perform_fetch,
)
from tenantflow.clock import ManualClock
from tenantflow.egress import AllowEntry, EgressError, check_egress, is_public
from tenantflow.engine import Engine
from tenantflow.executor import Unwind
from tenantflow.limits import MiB
from tenantflow.policy import TenantPolicy

sys.path.insert(0, str(REPO / "guest_sdk" / "python"))

from tenantflow_guest import CapabilityError, Headers, Response, fetch, secret  # noqa: E402
from tenantflow_guest import _capabilities as guest_caps  # noqa: E402

TENANT = "egress"
TOKEN = "sk_test_51HxQ2c8F0abcdefghijklmnop"


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        yield srv


def policy_for(srv: LoopbackServer, **overrides: Any) -> TenantPolicy:
    fields: dict[str, Any] = {
        "egress": (srv.origin, "localhost"),
        "secrets": {"API_TOKEN": TOKEN},
        "http_timeout_ms": 5000,
        "http_max_response_bytes": 64 * 1024,
    }
    fields.update(overrides)
    return TenantPolicy(**fields)


def get(url: str, **kwargs: Any) -> FetchRequest:
    return FetchRequest(kwargs.pop("method", "GET"), url, kwargs.pop("headers", []), kwargs.pop("body", None), kwargs.pop("timeout_ms", None))


def failure(request: FetchRequest, policy: TenantPolicy) -> tuple[str, str]:
    with pytest.raises(FetchFailed) as info:
        perform_fetch(request, policy, TENANT)
    return info.value.name, info.value.message


# ---- allow-lists and URL normalization (no network) --------------------------------------


@pytest.mark.parametrize(
    ("entry", "host", "port", "wildcard"),
    [
        ("api.example.com", "api.example.com", None, False),
        ("API.Example.COM.", "api.example.com", None, False),
        ("api.example.com:8443", "api.example.com", 8443, False),
        ("*.example.com", "example.com", None, True),
        ("*.example.com:443", "example.com", 443, True),
        ("bücher.de", "xn--bcher-kva.de", None, False),
        ("127.0.0.1:8080", "127.0.0.1", 8080, False),
        ("[::1]:8080", "::1", 8080, False),
        ("::1", "::1", None, False),
    ],
)
def test_allow_list_entries_are_normalized(entry: str, host: str, port: Optional[int], wildcard: bool) -> None:
    parsed = AllowEntry.parse(entry)
    assert (parsed.host, parsed.port, parsed.wildcard) == (host, port, wildcard)


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("https://api.example.com", "not a host pattern"),
        ("api.example.com/v1", "not a host pattern"),
        ("user@api.example.com", "not a host pattern"),
        ("api.*.com", "'*' is only allowed as a leading '*.' label"),
        ("*.10.0.0.1", "needs a domain suffix"),
        ("api.example.com:0", "port must be a number from 1 to 65535"),
        ("api.example.com:http", "port must be a number from 1 to 65535"),
        ("", "empty entry"),
        ("bad_host name", "invalid host name"),
    ],
)
def test_bad_allow_list_entries_are_refused_precisely(entry: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("*", r"\*").replace(".", r"\.").replace("(", r"\(")):
        AllowEntry.parse(entry)


ALLOW = ("api.example.com", "*.corp.example", "pay.example.com:8443", "127.0.0.1:9000")


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com/v1/orders?x=1",
        "HTTPS://API.EXAMPLE.COM./v1",
        "http://api.example.com:8080/",  # no port in the entry: any port
        "https://eu.corp.example/",
        "https://a.b.corp.example/",
        "https://pay.example.com:8443/charge",
        "http://127.0.0.1:9000/hook",
    ],
)
def test_allowed_urls(url: str) -> None:
    check_egress(url, ALLOW, TENANT)


@pytest.mark.parametrize(
    ("url", "name", "why"),
    [
        ("https://evil.example/", "EgressDenied", "host not on the allow-list"),
        ("https://corp.example/", "EgressDenied", "host not on the allow-list"),  # *.suffix is subdomains only
        ("https://api.example.com.evil.example/", "EgressDenied", "host not on the allow-list"),
        ("https://evilapi.example.com/", "EgressDenied", "host not on the allow-list"),
        ("https://pay.example.com/", "EgressDenied", "port 443 is not allowed"),
        ("http://127.0.0.1:9001/", "EgressDenied", "port 9001 is not allowed"),
        ("http://2130706433:9000/", "EgressDenied", "host not on the allow-list"),  # 127.0.0.1 in disguise
        ("http://api.example.com@evil.example/", "InvalidRequest", "user info"),
        ("http://api.example.com\\@evil.example/", "InvalidRequest", "user info"),
        ("http://user:pw@api.example.com/", "InvalidRequest", "user info"),
        ("file:///etc/passwd", "InvalidRequest", "only http and https"),
        ("ftp://api.example.com/", "InvalidRequest", "only http and https"),
        ("/relative/path", "InvalidRequest", "only http and https"),
        ("http:///nohost", "InvalidRequest", "has no host"),
        ("http://%65vil.example/", "InvalidRequest", "invalid host name"),
    ],
)
def test_denied_and_invalid_urls(url: str, name: str, why: str) -> None:
    with pytest.raises(EgressError) as info:
        check_egress(url, ALLOW, TENANT)
    assert info.value.name == name and why in info.value.message
    if name == "EgressDenied":
        assert info.value.message.startswith("fetch to ") and f"is not allowed for tenant {TENANT}: " in info.value.message


def test_a_tenant_without_an_allow_list_may_fetch_nothing() -> None:
    with pytest.raises(EgressError, match="fetch to api.example.com is not allowed for tenant egress: the tenant has no egress allow-list"):
        check_egress("https://api.example.com/", (), TENANT)


def test_journaled_call_names_hide_queries_and_secrets() -> None:
    request = get(f"https://api.example.com/v1/{TOKEN}/orders?key={TOKEN}#frag")
    name = call_name(request, 256, {"API_TOKEN": TOKEN})
    assert TOKEN not in name and name.startswith("GET https://api.example.com/v1/[secret]/orders?#")
    assert name == call_name(request, 256, {"API_TOKEN": TOKEN})  # stable across replays
    assert len(call_name(get("https://api.example.com/" + "x" * 500), 256, {})) == 256
    failed = decode_outcome(encode_outcome(FetchFailed("TimeoutError", "slow")))
    assert isinstance(failed, FetchFailed) and (failed.name, failed.message) == ("TimeoutError", "slow")


# ---- the exchange against a real server --------------------------------------------------


def test_fetch_returns_status_headers_body_and_final_url(server: LoopbackServer) -> None:
    policy = policy_for(server)
    response = perform_fetch(get(server.url("/hello"), headers=[("X-Probe", "42")]), policy, TENANT)
    assert (response.status, response.body, response.url) == (200, b"hello from the test server", server.url("/hello"))
    assert ("x-echo", "42") in response.headers
    missing = perform_fetch(get(server.url("/nope")), policy, TENANT)
    assert missing.status == 404  # an HTTP error status is a response, not a failure
    redirected = perform_fetch(get(server.url("/redirect?to=/hello")), policy, TENANT)
    assert (redirected.status, redirected.url) == (200, server.url("/hello"))
    round_trip = decode_outcome(encode_outcome(redirected))
    assert round_trip == redirected


def test_post_body_and_headers_reach_the_server(server: LoopbackServer) -> None:
    response = perform_fetch(get(server.url("/echo"), method="POST", body=b'{"a":1}', headers=[("content-type", "application/json")]), policy_for(server), TENANT)
    echo = json.loads(response.body)
    assert (echo["method"], echo["body"], echo["headers"]["content-type"]) == ("POST", '{"a":1}', "application/json")
    assert echo["headers"]["user-agent"] == "tenantflow" and echo["headers"]["accept-encoding"] == "identity"


def test_every_redirect_hop_is_checked(server: LoopbackServer) -> None:
    policy = policy_for(server, egress=(server.origin,))
    name, message = failure(get(server.url(f"/redirect?to=http://localhost:{server.port}/hello")), policy)
    assert name == "EgressDenied"
    assert message.startswith(f"redirect from {server.origin} refused: fetch to localhost is not allowed for tenant {TENANT}")
    name, message = failure(get(server.url("/redirect?to=file:///etc/passwd")), policy)
    assert (name, "only http and https" in message) == ("InvalidRequest", True)
    assert failure(get(server.url("/loop")), policy_for(server, http_max_redirects=3)) == (
        "TooManyRedirects", f"fetch of {server.url('/loop')!r} was redirected more than 3 times",
    )


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True), ("2606:4700:4700::1111", True),
        ("127.0.0.1", False), ("10.1.2.3", False), ("192.168.0.10", False), ("172.16.5.4", False),
        ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
        ("::1", False), ("::ffff:127.0.0.1", False), ("::ffff:169.254.169.254", False), ("fe80::1%eth0", False),
        ("fd00::1", False), ("ff02::1", False),
    ],
)
def test_only_globally_routable_unicast_addresses_are_public(address: str, public: bool) -> None:
    assert is_public(address) is public


def test_an_allowed_name_must_resolve_to_a_public_address(server: LoopbackServer) -> None:
    # A tenant that controls the DNS of a name it may fetch could point it at the host's
    # loopback (or a private network, or the metadata service): checked at connect time.
    url = f"http://localhost:{server.port}/hello"
    name, message = failure(get(url), policy_for(server))
    assert name == "EgressDenied"
    assert message.startswith(f"fetch to localhost:{server.port} is not allowed for tenant {TENANT}: localhost resolves to ")
    assert "127.0.0.1" in message and "no public address" in message
    # ... also when a redirect from an allowed IP literal leads there.
    name, message = failure(get(server.url(f"/redirect?to={url}")), policy_for(server))
    assert name == "EgressDenied" and "no public address" in message
    # The platform may trust a tenant with its private networks; an IP literal the
    # allow-list names is connected to as it is (the operator chose that address).
    assert perform_fetch(get(url), policy_for(server, egress_private=True), TENANT).status == 200
    assert perform_fetch(get(server.url("/hello")), policy_for(server), TENANT).status == 200


def test_credentials_are_dropped_when_a_redirect_changes_origin(server: LoopbackServer) -> None:
    # 127.0.0.1:<port> and localhost are both allowed (localhost is loopback: private networks too)
    policy = policy_for(server, egress_private=True)
    headers = [("Authorization", "Bearer x"), ("Cookie", "a=b"), ("X-Keep", "yes")]
    same = json.loads(perform_fetch(get(server.url("/redirect?to=/echo"), headers=headers), policy, TENANT).body)
    assert same["headers"]["authorization"] == "Bearer x" and same["headers"]["cookie"] == "a=b"
    other = json.loads(perform_fetch(get(server.url(f"/redirect?to=http://localhost:{server.port}/echo"), headers=headers), policy, TENANT).body)
    assert "authorization" not in other["headers"] and "cookie" not in other["headers"] and other["headers"]["x-keep"] == "yes"
    see_other = json.loads(perform_fetch(get(server.url("/redirect?to=/echo&status=303"), method="POST", body=b"payload"), policy, TENANT).body)
    assert (see_other["method"], see_other["body"]) == ("GET", "")
    kept = json.loads(perform_fetch(get(server.url("/redirect?to=/echo&status=307"), method="POST", body=b"payload"), policy, TENANT).body)
    assert (kept["method"], kept["body"]) == ("POST", "payload")


def test_response_size_is_capped_while_streaming(server: LoopbackServer) -> None:
    policy = policy_for(server, http_max_response_bytes=64 * 1024)
    assert len(perform_fetch(get(server.url(f"/big?n={64 * 1024}")), policy, TENANT).body) == 64 * 1024
    assert failure(get(server.url(f"/big?n={64 * 1024 + 1}")), policy) == (
        "ResponseTooLarge", f"the response from {server.origin} is 65537 bytes (Content-Length); the limit is 65536 bytes",
    )
    name, message = failure(get(server.url(f"/big?n={2 * MiB}")), policy)
    assert (name, message) == ("ResponseTooLarge", f"the response from {server.origin} is 2 MiB (Content-Length); the limit is 64 KiB")
    name, message = failure(get(server.url(f"/stream?n={50 * MiB}")), policy)  # no Content-Length: counted while read
    assert (name, message) == ("ResponseTooLarge", f"the response from {server.origin} exceeds the limit of 64 KiB; stopped reading there")


def test_timeouts_and_connection_failures(server: LoopbackServer) -> None:
    policy = policy_for(server, http_timeout_ms=300)
    assert failure(get(server.url("/slow?ms=3000")), policy) == ("TimeoutError", f"fetch to {server.origin} timed out after 300 ms")
    # The request may ask for less than the policy, never more.
    quick = policy_for(server, http_timeout_ms=5000)
    assert failure(get(server.url("/slow?ms=3000"), timeout_ms=200), quick) == ("TimeoutError", f"fetch to {server.origin} timed out after 200 ms")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    name, message = failure(get(f"http://127.0.0.1:{closed}/"), policy_for(server, egress=(f"127.0.0.1:{closed}",)))
    assert name == "ConnectionError" and message.startswith(f"fetch to 127.0.0.1:{closed} failed: ")


@pytest.mark.parametrize(
    ("request_", "name", "message"),
    [
        (get("http://x/", body=b"x" * (MiB + 1)), "RequestTooLarge", "request body is 1048577 bytes; the limit is 1048576 bytes"),
        (get("http://x/", body=b"x" * (2 * MiB)), "RequestTooLarge", "request body is 2 MiB; the limit is 1 MiB"),
        (get("http://x/", method="GET /admin"), "InvalidRequest", "invalid HTTP method 'GET /admin'"),
        (get("http://x/", headers=[("Host", "evil.example")]), "InvalidRequest", "header 'Host' is set by the host from the URL and body; do not set it"),
        (get("http://x/", headers=[("Transfer-Encoding", "chunked")]), "InvalidRequest", "header 'Transfer-Encoding' is set by the host"),
        (get("http://x/", headers=[("X-Split", "a\r\nInjected: 1")]), "InvalidRequest", "header 'X-Split' has a line break or NUL in its value"),
        (get("http://x/", headers=[("Bad Name", "v")]), "InvalidRequest", "invalid header name 'Bad Name'"),
    ],
)
def test_malformed_requests_are_refused_before_any_network(request_: FetchRequest, name: str, message: str) -> None:
    with pytest.raises(FetchFailed) as info:
        perform_fetch(request_, TenantPolicy(egress=("x",)), TENANT)
    assert info.value.name == name and info.value.message.startswith(message)


# ---- the guest SDK's side (pure Python, a fake host) --------------------------------------


class FakeBackend:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def fetch(self, method: str, url: str, headers: list[tuple[str, str]], body: Optional[bytes], timeout_ms: Optional[int]) -> Response:
        self.calls.append((method, url, headers, body, timeout_ms))
        if "denied" in url:
            raise CapabilityError("EgressDenied", "fetch to denied.example is not allowed for tenant t: ...")
        return Response(200, Headers([("Content-Type", "application/json; charset=latin-1"), ("Set-Cookie", "a"), ("set-cookie", "b")]), '{"é": 1}'.encode("latin-1"), url)

    def secret(self, name: str) -> str:
        if name != "GRANTED":
            raise CapabilityError("SecretNotGranted", f"secret {name!r} is not granted to tenant t")
        return "value"


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    fake = FakeBackend()
    guest_caps._use_backend(fake)
    try:
        yield fake
    finally:
        guest_caps._use_backend(None)


def test_guest_fetch_encodes_bodies_and_parses_responses(backend: FakeBackend) -> None:
    r = fetch("https://api.example/x", method="post", body={"a": [1, 2]}, headers={"X-A": "1"}, timeout="5 seconds")
    assert backend.calls[-1] == ("POST", "https://api.example/x", [("X-A", "1"), ("content-type", "application/json")], b'{"a": [1, 2]}', 5000)
    assert r.ok and r.json() == {"é": 1} and r.text == '{"é": 1}'  # decoded with the declared charset
    assert r.headers["content-type"].startswith("application/json") and r.headers["SET-COOKIE"] == "a, b"
    assert r.headers.get_all("set-cookie") == ["a", "b"] and len(r.headers) == 2
    fetch("https://api.example/x", body="text", headers=[("Content-Type", "text/plain")])
    assert backend.calls[-1][2:4] == ([("Content-Type", "text/plain")], b"text")
    with pytest.raises(TypeError, match="body must be bytes, str, dict or list"):
        fetch("https://api.example/x", body=42)  # type: ignore[arg-type]


def test_guest_errors_are_catchable_capability_errors(backend: FakeBackend) -> None:
    with pytest.raises(CapabilityError) as info:
        fetch("https://denied.example/")
    assert info.value.name == "EgressDenied" and str(info.value).startswith("EgressDenied: fetch to denied.example")
    assert secret("GRANTED") == "value"
    with pytest.raises(CapabilityError, match="SecretNotGranted: secret 'OTHER' is not granted"):
        secret("OTHER")
    guest_caps._use_backend(None)
    with pytest.raises(CapabilityError, match="only available inside a tenantflow component"):
        fetch("https://api.example/")


# ---- guests compiled from real source ------------------------------------------------------

DEPLOY = {TENANT: "egress", BYSTANDER: "basics"}


async def run_guest(engine: Engine, workflow: str, params: dict[str, Any]) -> Any:
    """Run a guest of the egress tenant with a bystander of another tenant beside it."""
    iid = await engine.tenant(TENANT).create(workflow, params)
    bystander = await start_bystander(engine)
    status = await engine.tenant(TENANT).wait(iid, timeout=60)
    await check_bystander(engine, bystander)
    return status


async def test_guest_fetches_an_allowed_host_and_the_response_is_journaled(tmp_path: Path, server: LoopbackServer) -> None:
    async with open_engine(tmp_path / "flows.db", deploy=DEPLOY) as engine:
        engine.set_policy(TENANT, policy_for(server))
        url = server.url("/hello")
        status = await run_guest(engine, "Fetch", {"url": url, "headers": {"X-Probe": "guest"}})
        assert status.output == {"status": 200, "text": "hello from the test server", "url": url, "size": 26, "echo": "guest", "ok": True}
        assert [(s.name, s.status) for s in status.steps] == [(f"GET {url}", "done")]
        in_step = await run_guest(engine, "Fetch", {"url": url, "in_step": True})
        assert in_step.output["status"] == 200 and [s.name for s in in_step.steps] == ["call"]  # the step result is the record


async def test_guest_fetch_to_a_host_not_on_the_list_is_denied_and_catchable(tmp_path: Path, server: LoopbackServer) -> None:
    async with open_engine(tmp_path / "flows.db", deploy=DEPLOY) as engine:
        engine.set_policy(TENANT, policy_for(server, egress=(server.origin,)))
        status = await run_guest(engine, "Fetch", {"url": "https://example.com/"})
        assert status.output == {
            "error": "EgressDenied",
            "message": f"fetch to example.com is not allowed for tenant {TENANT}: host not on the allow-list ({server.origin})",
        }
        redirect = await run_guest(engine, "Fetch", {"url": server.url(f"/redirect?to=http://localhost:{server.port}/hello"), "in_step": True})
        assert redirect.output["error"] == "EgressDenied" and "redirect from" in redirect.output["message"]
        uncaught = await run_guest(engine, "FetchUncaught", {"url": "http://10.0.0.1/"})
        assert uncaught.status == "errored" and uncaught.error is not None
        assert (uncaught.error.name, uncaught.error.message.split(":")[0]) == ("CapabilityError", "EgressDenied")
        await engine.scheduler.quiesce()
        await engine.write(lambda conn: None)
        logs = [line.message for line in await engine.tenant(TENANT).logs(uncaught.id)]
        assert any(m.startswith("egress denied: fetch to 10.0.0.1") for m in logs)


async def test_a_tenant_without_a_policy_gets_nothing(tmp_path: Path, server: LoopbackServer) -> None:
    async with open_engine(tmp_path / "flows.db", deploy=DEPLOY) as engine:
        before = server.hits["/hello"]
        status = await run_guest(engine, "Fetch", {"url": server.url("/hello")})
        assert status.output["error"] == "EgressDenied" and status.output["message"].endswith("the tenant has no egress allow-list")
        assert (await run_guest(engine, "Secret", {"name": "API_TOKEN"})).output["error"] == "SecretNotGranted"
        assert server.hits["/hello"] == before  # refused before any connection


async def test_oversize_responses_are_capped_in_and_outside_steps(tmp_path: Path, server: LoopbackServer) -> None:
    async with open_engine(tmp_path / "flows.db", deploy=DEPLOY) as engine:
        engine.set_policy(TENANT, policy_for(server, http_max_response_bytes=4 * MiB))
        in_step = await run_guest(engine, "Fetch", {"url": server.url(f"/stream?n={50 * MiB}"), "in_step": True})
        assert in_step.output == {"error": "ResponseTooLarge", "message": f"the response from {server.origin} exceeds the limit of 4 MiB; stopped reading there"}
        fits = await run_guest(engine, "Fetch", {"url": server.url(f"/big?n={2 * MiB}"), "in_step": True})
        assert fits.output["size"] == 2 * MiB
        # Outside a step the response is journaled, so the journal's per-entry limit applies.
        journaled = await run_guest(engine, "Fetch", {"url": server.url(f"/big?n={2 * MiB}")})
        assert journaled.output["error"] == "ResponseTooLarge"
        assert journaled.output["message"].startswith(f"the response from {server.origin} is 2 MiB (Content-Length); the limit is 1 MiB; a fetch outside a step is journaled")


async def test_a_replay_answers_a_fetch_from_the_journal(tmp_path: Path, server: LoopbackServer) -> None:
    clock = ManualClock()
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy=DEPLOY) as engine:
        engine.set_policy(TENANT, policy_for(server))
        t = engine.tenant(TENANT)
        before = server.hits["/count"]
        iid = await t.create("FetchThenSleep", {"url": server.url("/count")})
        await engine.scheduler.quiesce()
        assert (await t.status(iid)).status == "waiting"
        clock.advance(60)
        status = await t.wait(iid)
        assert status.status == "complete" and status.output["text"] == str(before + 1)
        assert server.hits["/count"] == before + 1  # the replay did not fetch again
        assert [(s.kind, s.name) for s in status.steps] == [("fetch", f"GET {server.url('/count')}"), ("sleep", "nap")]


async def test_secrets_reach_only_tenants_granted_them_and_are_never_stored(tmp_path: Path, server: LoopbackServer) -> None:
    async with open_engine(tmp_path / "flows.db", deploy={**DEPLOY, "other": "egress"}) as engine:
        engine.set_policy(TENANT, policy_for(server))
        engine.set_policy("other", TenantPolicy(secrets={"SOMETHING_ELSE": "x"}))
        granted = await run_guest(engine, "Secret", {"name": "API_TOKEN"})
        assert granted.output == {"length": len(TOKEN), "starts": "sk_"}
        missing = await run_guest(engine, "Secret", {"name": "NOPE"})
        assert missing.output == {"error": "SecretNotGranted", "message": f"secret 'NOPE' is not granted to tenant {TENANT}"}
        other = engine.tenant("other")
        theirs = await other.wait(await other.create("Secret", {"name": "API_TOKEN"}))
        assert theirs.output["error"] == "SecretNotGranted"  # another tenant's grant is not this one's
        await engine.scheduler.quiesce()
        await engine.write(lambda conn: None)
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("flows.db*") if p.is_file())
    assert TOKEN.encode() not in stored


async def _until_hit(server: LoopbackServer, path: str, count: int) -> None:
    for _ in range(600):
        if server.hits[path] >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the server never saw {path}")


@pytest.mark.parametrize(("processes", "in_step"), [(0, True), (0, False), (1, True)])
async def test_terminate_reaches_a_guest_blocked_in_a_fetch(tmp_path: Path, server: LoopbackServer, processes: int, in_step: bool) -> None:
    """The exchange would take 30 s (inside a 60 s timeout): a terminate must not wait for it."""
    async with open_engine(tmp_path / "flows.db", deploy=DEPLOY, processes=processes) as engine:
        engine.set_policy(TENANT, policy_for(server, http_timeout_ms=60_000))
        t = engine.tenant(TENANT)
        before = server.hits["/slow"]
        iid = await t.create("Fetch", {"url": server.url("/slow?ms=30000"), "in_step": in_step})
        await _until_hit(server, "/slow", before + 1)
        assert await t.terminate(iid) == "terminated"
        await engine.scheduler.quiesce(timeout=10)  # the worker left the guest: nothing runs
        status = await t.status(iid)
        assert status.status == "terminated" and status.output is None
        assert [s.status for s in status.steps] in ([], ["running"])  # no fetch outcome was recorded
        bystander = await start_bystander(engine, ms=10)  # the engine goes on
        await check_bystander(engine, bystander)


def test_a_fetch_stuck_where_no_timeout_reaches_still_ends_at_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name whose DNS never answers (mocked: no resolver here can be made to hang) blocks
    the client past any timeout it has; the guest's wait ends at the deadline anyway."""
    release = threading.Event()
    real = socket.getaddrinfo

    def hanging(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "stuck.example":
            release.wait(30)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    policy = TenantPolicy(egress=("stuck.example",), http_timeout_ms=300)
    try:
        with pytest.raises(FetchFailed) as timed_out:
            fetch_unless_cancelled(get("http://stuck.example/"), policy, TENANT, lambda: False)
        assert (timed_out.value.name, timed_out.value.message) == ("TimeoutError", "fetch to stuck.example:80 timed out after 300 ms")
        with pytest.raises(Unwind) as left:
            fetch_unless_cancelled(get("http://stuck.example/", timeout_ms=60_000), TenantPolicy(egress=("stuck.example",)), TENANT, lambda: True)
        assert left.value.reason == "cancelled"
    finally:
        release.set()
