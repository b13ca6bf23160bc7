"""The HTTP API through a real uvicorn server on 127.0.0.1 and a real httpx client.

Cross-tenant policy (documented in tenantflow.server): a key of tenant A used on tenant B
gets 403 whatever the path names, decided by the authorizer without looking at any
instance; an instance that exists only in another tenant is a 404 with exactly the body of
a missing one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from apikit import admin, bearer, deploy, make_key, make_tenant, serve_in_thread, wait_status
from enginekit import ARTIFACTS, cli, component, open_engine

from tenantflow.auth import revoke_key
from tenantflow.client import ApiClient
from tenantflow.clock import ManualClock
from tenantflow.engine import INLINE_STATUS_STEPS
from tenantflow.errors import InstanceNotFound, QuotaExceeded
from tenantflow.limits import Limits
from tenantflow.models import InstanceStatus
from tenantflow.registry import digest_of
from tenantflow.server import create_standalone_app


@dataclass
class Api:
    url: str
    db: Path
    digest: str
    acme: httpx.Client  # tenant-developer of acme
    globex: httpx.Client  # tenant-developer of globex
    readonly: httpx.Client  # tenant-readonly of acme
    admin: httpx.Client  # platform-admin
    anonymous: httpx.Client


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    db = tmp_path_factory.mktemp("api") / "api.db"
    for tenant in ("acme", "globex"):
        make_tenant(db, tenant)
    keys = {
        "acme": make_key(db, "acme"),
        "globex": make_key(db, "globex"),
        "readonly": make_key(db, "acme", "tenant-readonly"),
        "admin": make_key(db, None, "platform-admin"),
    }
    app = create_standalone_app(db, artifact_dir=ARTIFACTS, workers=2)
    with serve_in_thread(app) as url:
        clients = {name: httpx.Client(base_url=url, headers=bearer(key), timeout=120) for name, key in keys.items()}
        anonymous = httpx.Client(base_url=url, timeout=30)
        digest = deploy(clients["acme"], "acme")["digest"]
        assert deploy(clients["globex"], "globex")["digest"] == digest
        yield Api(url, db, digest, clients["acme"], clients["globex"], clients["readonly"], clients["admin"], anonymous)
        for client in (*clients.values(), anonymous):
            client.close()


def error_of(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    return str(body["error"]["message"])


def create(client: httpx.Client, tenant: str, workflow: str, params: object = None, id: str | None = None) -> str:
    response = client.post(f"/v1/tenants/{tenant}/instances", json={"workflow": workflow, "params": params, "id": id})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_full_lifecycle_for_two_tenants(api: Api) -> None:
    # Instance ids are per tenant: both create "order-1", each runs its own.
    assert create(api.acme, "acme", "Echo", {"who": "acme"}, id="order-1") == "order-1"
    assert create(api.globex, "globex", "Echo", {"who": "globex"}, id="order-1") == "order-1"
    for tenant, client in (("acme", api.acme), ("globex", api.globex)):
        status = wait_status(client, tenant, "order-1")
        assert (status["tenant"], status["status"], status["output"]) == (tenant, "complete", {"echo": {"who": tenant}})
        assert status["digest"] == api.digest
        assert [(s["seq"], s["kind"], s["name"], s["status"]) for s in status["steps"]] == [(0, "step", "echo", "done")]
        logs = client.get(f"/v1/tenants/{tenant}/instances/order-1/logs").json()
        assert [(line["stream"], line["message"]) for line in logs["logs"]] == [("stdout", f"echo {{'who': '{tenant}'}}")]
        assert logs["next_cursor"] is None

    # Events, pause and resume.
    approval = create(api.acme, "acme", "Approval")
    assert wait_status(api.acme, "acme", approval, "waiting")["waiting_for"] == "approval"
    assert api.acme.post(f"/v1/tenants/acme/instances/{approval}/pause").json() == {"id": approval, "status": "paused"}
    assert api.acme.post(f"/v1/tenants/acme/instances/{approval}/resume").json()["status"] == "queued"
    wait_status(api.acme, "acme", approval, "waiting")
    sent = api.acme.post(f"/v1/tenants/acme/instances/{approval}/events/approval", json={"by": "ann"})
    assert (sent.status_code, sent.json()) == (202, {"id": approval, "type": "approval"})
    assert wait_status(api.acme, "acme", approval)["output"] == {"approved_by": {"by": "ann"}}

    # Terminate, restart (the journal starts over), delete.
    stuck = create(api.acme, "acme", "Approval", id="stuck")
    wait_status(api.acme, "acme", stuck, "waiting")
    assert api.acme.post("/v1/tenants/acme/instances/stuck/terminate").json()["status"] == "terminated"
    assert wait_status(api.acme, "acme", stuck)["status"] == "terminated"
    assert api.acme.post("/v1/tenants/acme/instances/stuck/restart").json()["status"] == "queued"
    restarted = wait_status(api.acme, "acme", stuck, "waiting")
    assert restarted["ended_at"] is None and [s["status"] for s in restarted["steps"]] == ["waiting"]
    assert api.acme.delete("/v1/tenants/acme/instances/stuck").status_code == 204
    error_of(api.acme.get("/v1/tenants/acme/instances/stuck"), 404, "not_found")

    # A failing workflow reports its error.
    failed = wait_status(api.globex, "globex", create(api.globex, "globex", "Fail"))
    assert failed["status"] == "errored" and failed["error"]["message"].endswith("card declined")

    # Batch create, then list with filters and cursor paging.
    batch = api.acme.post("/v1/tenants/acme/instances/batch", json={"instances": [{"workflow": "Echo", "params": i} for i in range(3)]})
    assert batch.status_code == 201, batch.text
    ids = batch.json()["ids"]
    for instance_id in ids:
        wait_status(api.acme, "acme", instance_id)
    seen, cursor = [], None
    while True:
        params: dict[str, str | int] = {"workflow": "Echo", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.acme.get("/v1/tenants/acme/instances", params=params).json()
        assert len(page["instances"]) <= 2
        seen += [item["id"] for item in page["instances"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [*reversed(ids), "order-1"]  # newest first; globex's order-1 is not listed
    completed = api.globex.get("/v1/tenants/globex/instances", params={"status": "complete"}).json()["instances"]
    assert [item["id"] for item in completed] == ["order-1"]

    # Workflows and versions.
    workflows = api.acme.get("/v1/tenants/acme/workflows").json()["workflows"]
    assert {w["name"] for w in workflows} == {"Approval", "Echo", "Fail", "Grind", "Nap"}
    assert all(w["current"] == api.digest and [v["digest"] for v in w["versions"]] == [api.digest] for w in workflows)


def test_every_error_status(api: Api) -> None:
    base = "/v1/tenants/acme"
    create(api.acme, "acme", "Echo", id="done-1")
    wait_status(api.acme, "acme", "done-1")
    # 400: malformed ids, bodies, queries, components.
    assert "instance_id" in error_of(api.acme.get(f"{base}/instances/-bad"), 400, "invalid_input")
    assert "JSON" in error_of(api.acme.post(f"{base}/instances", content=b"{nope", headers={"Content-Type": "application/json"}), 400, "invalid_input")
    assert "extra" in error_of(api.acme.post(f"{base}/instances", json={"workflow": "Echo", "colour": "red"}), 400, "invalid_input").lower()
    error_of(api.acme.post(f"{base}/instances", json={"params": {}}), 400, "invalid_input")
    error_of(api.acme.get(f"{base}/instances", params={"limit": 0}), 400, "invalid_input")
    error_of(api.acme.get(f"{base}/instances", params={"status": "sleeping"}), 400, "invalid_input")
    assert "cursor" in error_of(api.acme.get(f"{base}/instances", params={"cursor": "!!"}), 400, "invalid_input")
    assert "cursor" in error_of(api.acme.get(f"{base}/instances/done-1/logs", params={"cursor": "!!"}), 400, "invalid_input")
    for crafted in ({"pk": 10**20}, {"pk": -5}, {"pk": True}, {"pk": 1.5}, [1], {"pk": "1"}):  # decodes, yet no row id
        cursor = base64.urlsafe_b64encode(json.dumps(crafted).encode()).decode().rstrip("=")
        for route in ("instances", "instances/done-1/logs"):
            assert "invalid cursor" in error_of(api.acme.get(f"{base}/{route}", params={"cursor": cursor}), 400, "invalid_input")
    assert "steps_from" in error_of(api.acme.get(f"{base}/instances/done-1", params={"steps_from": 2**63}), 400, "invalid_input")
    error_of(api.acme.post(f"{base}/instances/done-1/events/no spaces", json=1), 400, "invalid_input")
    error_of(api.acme.post(f"{base}/components", content=b"", headers={"Content-Type": "application/wasm"}), 400, "invalid_input")
    assert "not a valid WebAssembly component" in error_of(
        api.acme.post(f"{base}/components", content=b"\0asm garbage", headers={"Content-Type": "application/wasm"}), 400, "component_error"
    )
    error_of(api.acme.get("/v1/tenants/NOT_A_TENANT/instances"), 400, "invalid_input")
    # 401 / 403
    response = api.anonymous.get(f"{base}/instances")
    error_of(response, 401, "unauthenticated")
    assert response.headers["WWW-Authenticate"] == "Bearer"
    error_of(api.readonly.post(f"{base}/instances/done-1/pause"), 403, "forbidden")
    # 404: missing instance, unknown workflow, unknown route.
    error_of(api.acme.get(f"{base}/instances/missing"), 404, "not_found")
    error_of(api.acme.post(f"{base}/instances", json={"workflow": "Nope"}), 404, "unknown_workflow")
    error_of(api.acme.get("/v1/nothing-here"), 404, "not_found")
    error_of(api.acme.put(f"{base}/instances"), 405, "method_not_allowed")
    # 409: duplicate id, wrong state.
    assert "already exists" in error_of(api.acme.post(f"{base}/instances", json={"workflow": "Echo", "id": "done-1"}), 409, "already_exists")
    batch = {"instances": [{"workflow": "Echo", "id": "fresh"}, {"workflow": "Echo", "id": "done-1"}]}
    error_of(api.acme.post(f"{base}/instances/batch", json=batch), 409, "already_exists")
    error_of(api.acme.get(f"{base}/instances/fresh"), 404, "not_found")  # the batch was all or nothing
    error_of(api.acme.post(f"{base}/instances/done-1/pause"), 409, "invalid_state")
    error_of(api.acme.post(f"{base}/instances/done-1/events/late", json=None), 409, "invalid_state")
    # 413: params and event payloads over the engine's limits (the body itself is under the API's).
    big = "x" * (1024 * 1024 + 1)
    error_of(api.acme.post(f"{base}/instances", json={"workflow": "Echo", "params": big}), 413, "payload_too_large")
    waiting = create(api.acme, "acme", "Approval")
    error_of(api.acme.post(f"{base}/instances/{waiting}/events/approval", json=big), 413, "payload_too_large")


def test_another_tenants_instance_looks_missing(api: Api) -> None:
    create(api.globex, "globex", "Approval", id="globex-only")
    wait_status(api.globex, "globex", "globex-only", "waiting")
    calls = [
        ("GET", "/instances/globex-only"), ("GET", "/instances/globex-only/logs"), ("POST", "/instances/globex-only/pause"),
        ("POST", "/instances/globex-only/resume"), ("POST", "/instances/globex-only/terminate"),
        ("POST", "/instances/globex-only/restart"), ("POST", "/instances/globex-only/events/approval"), ("DELETE", "/instances/globex-only"),
    ]
    existing = [api.acme.request(method, f"/v1/tenants/acme{path}") for method, path in calls]
    assert api.globex.get("/v1/tenants/globex/instances/globex-only").json()["status"] == "waiting"  # untouched
    api.globex.delete("/v1/tenants/globex/instances/globex-only")
    missing = [api.acme.request(method, f"/v1/tenants/acme{path}") for method, path in calls]
    for before, after in zip(existing, missing):
        error_of(before, 404, "not_found")
        assert before.content == after.content


def test_auth_failures(api: Api) -> None:
    path = "/v1/tenants/acme/instances"
    assert "missing" in error_of(api.anonymous.get(path), 401, "unauthenticated")
    bad_keys = ["nonsense", "tf_" + "0" * 12 + "_" + "A" * 43, make_key(api.db, "acme")[:-1] + "x"]
    for token in bad_keys:
        error_of(api.anonymous.get(path, headers=bearer(token)), 401, "unauthenticated")
    error_of(api.anonymous.get(path, headers={"Authorization": "Basic YWNtZTpzZWNyZXQ="}), 401, "unauthenticated")

    # Revocation applies from the next request.
    token = make_key(api.db, "acme")
    assert api.anonymous.get(path, headers=bearer(token)).status_code == 200
    admin(api.db, lambda now: revoke_key(token.split("_")[1], now))
    assert "revoked" in error_of(api.anonymous.get(path, headers=bearer(token)), 401, "unauthenticated")

    # Read-only keys read, and nothing else.
    create(api.acme, "acme", "Approval", id="ro-target")
    assert api.readonly.get(f"{path}/ro-target").status_code == 200
    assert api.readonly.get("/v1/tenants/acme/workflows").status_code == 200
    for method, suffix, body in [
        ("POST", "/ro-target/pause", None), ("POST", "/ro-target/terminate", None), ("DELETE", "/ro-target", None),
        ("POST", "/ro-target/events/approval", 1), ("POST", "", {"workflow": "Echo"}),
    ]:
        error_of(api.readonly.request(method, f"{path}{suffix}", json=body), 403, "forbidden")
    error_of(api.readonly.post("/v1/tenants/acme/components", content=b"\0asm", headers={"Content-Type": "application/wasm"}), 403, "forbidden")

    # A key of tenant A on tenant B: 403, the same whether or not the instance exists there.
    create(api.globex, "globex", "Approval", id="g-1")
    there = api.acme.get("/v1/tenants/globex/instances/g-1")
    absent = api.acme.get("/v1/tenants/globex/instances/never-was")
    error_of(there, 403, "forbidden")
    assert there.content == absent.content
    error_of(api.acme.post("/v1/tenants/globex/instances", json={"workflow": "Echo"}), 403, "forbidden")
    error_of(api.acme.get("/v1/tenants/nobody/instances"), 403, "forbidden")

    # Platform admins act on any tenant; only they read /metrics.
    assert api.admin.get("/v1/tenants/globex/instances/g-1").json()["tenant"] == "globex"
    assert api.admin.post("/v1/tenants/acme/instances/ro-target/terminate").json()["status"] == "terminated"
    assert api.admin.get("/metrics").status_code == 200
    error_of(api.acme.get("/metrics"), 403, "forbidden")
    error_of(api.anonymous.get("/metrics"), 401, "unauthenticated")


def test_a_long_history_reads_whole_and_in_order(api: Api) -> None:
    """Past INLINE_STATUS_STEPS the status is read, built and encoded on threads: the same
    document as a short one's, every step in order."""
    n = INLINE_STATUS_STEPS + 20
    body = wait_status(api.acme, "acme", create(api.acme, "acme", "Grind", {"n": n, "ms": 0}))
    response = api.acme.get(f"/v1/tenants/acme/instances/{body['id']}")
    assert response.headers["content-type"] == "application/json"
    assert response.json() == body and body["status"] == "complete" and body["output"] == list(range(n))
    assert [(s["seq"], s["name"], s["output"]) for s in body["steps"]] == [(i, "work", i) for i in range(n)]
    short = wait_status(api.acme, "acme", create(api.acme, "acme", "Grind", {"n": 2, "ms": 0}))
    assert set(short) == set(body) and set(short["steps"][0]) == set(body["steps"][0])
    assert InstanceStatus.model_validate(body).steps[-1].seq == n - 1
    # A page at a time, inline and on a thread alike; the rest of the document unchanged.
    url = f"/v1/tenants/acme/instances/{body['id']}"
    for limit in (50, INLINE_STATUS_STEPS + 1):
        steps, params = [], {"steps_limit": limit}
        while True:
            page = api.acme.get(url, params=params).json()
            assert {k: v for k, v in page.items() if k not in ("steps", "next_steps_from")} == {k: v for k, v in body.items() if k not in ("steps", "next_steps_from")}
            steps += page["steps"]
            if page["next_steps_from"] is None:
                break
            params = {"steps_limit": limit, "steps_from": page["next_steps_from"]}
        assert steps == body["steps"]
    assert api.acme.get(url, params={"steps_limit": 0}).json()["steps"] == []
    assert "steps_limit" in error_of(api.acme.get(url, params={"steps_limit": -1}), 400, "invalid_input")
    assert "steps_from" in error_of(api.acme.get(url, params={"steps_from": "x"}), 400, "invalid_input")
    error_of(api.acme.get(url, params={"steps_limit": 10_001}), 400, "invalid_input")


def test_the_python_client_pages_and_waits_like_the_engine(api: Api) -> None:
    """`ApiClient`'s tenant: `wait` polls without the steps and answers with all of them;
    status and upgrade pages, log pages, a timeout naming the status it stopped at."""
    token = api.acme.headers["authorization"].split(" ", 1)[1]

    async def go() -> None:
        async with ApiClient(api.url, token) as client:
            acme = client.tenant("acme")
            iid = await acme.create("Grind", {"n": 5, "ms": 0})
            done = await acme.wait(iid, timeout=60)
            assert done.status == "complete" and [s.seq for s in done.steps] == [0, 1, 2, 3, 4]
            page = await acme.status(iid, steps_limit=2, steps_from=1)
            assert [s.seq for s in page.steps] == [1, 2] and page.next_steps_from == 3
            assert (await acme.status(iid, steps_from=4)).steps == done.steps[4:]
            approval = await acme.create("Approval")
            with pytest.raises(TimeoutError, match=r"is still (queued|running|waiting) after 0.3 s"):
                await acme.wait(approval, timeout=0.3)
            assert (await acme.wait(approval, statuses=frozenset({"waiting"}))).waiting_for == "approval"
            await acme.send_event(approval, "approval", "kim")
            assert (await acme.wait(approval)).output == {"approved_by": "kim"}
            logs = await acme.log_page(iid, limit=1)
            assert logs.logs == [] and logs.next_cursor is None
            assert await acme.upgrade("Grind", api.digest) == []  # every instance runs that code already
            with pytest.raises(InstanceNotFound):
                await acme.wait("nothing-here", timeout=1)

    asyncio.run(go())


def test_health_readiness_and_metrics(api: Api) -> None:
    assert api.anonymous.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = api.anonymous.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"engine_open": True, "database_writable": True, "scheduler_running": True}}
    wait_status(api.acme, "acme", create(api.acme, "acme", "Grind", {"n": 3, "ms": 1}))
    response = api.admin.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, float] = {}
    for line in response.text.splitlines():
        if line.startswith("#"):
            assert re.fullmatch(r"# (HELP|TYPE) tenantflow_\w+ .+", line), line
            continue
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    assert samples['tenantflow_instances{status="complete"}'] >= 1
    assert samples["tenantflow_step_duration_seconds_count"] >= 3
    assert samples['tenantflow_step_duration_seconds_bucket{le="+Inf"}'] == samples["tenantflow_step_duration_seconds_count"]
    assert samples["tenantflow_writer_commits_total"] > 0
    assert samples["tenantflow_isolate_cache_hits_total"] + samples["tenantflow_isolate_cache_misses_total"] > 0
    assert samples['tenantflow_invocations_total{status="complete"}'] >= 1


def test_request_bodies_over_the_limit_are_refused_before_reading(tmp_path: Path) -> None:
    app = create_standalone_app(tmp_path / "small.db", artifact_dir=ARTIFACTS, max_body_bytes=1024, max_component_bytes=2048)
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        declared = client.post("/v1/tenants/acme/instances", content=b"x" * 4096, headers={"Content-Type": "application/json"})
        assert "1 KiB" in error_of(declared, 413, "payload_too_large")

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies as it streams
            for _ in range(8):
                yield b"y" * 512

        error_of(client.post("/v1/tenants/acme/instances", content=chunks(), headers={"Content-Type": "application/json"}), 413, "payload_too_large")
        # Components get their own limit; under it, the request goes on to authentication.
        error_of(client.post("/v1/tenants/acme/components", content=b"z" * 1500), 401, "unauthenticated")
        error_of(client.post("/v1/tenants/acme/components", content=b"z" * 4096), 413, "payload_too_large")


def test_a_tenant_over_its_quota_gets_429(tmp_path: Path) -> None:
    db = tmp_path / "quota.db"
    make_tenant(db, "acme")
    key = make_key(db, "acme")
    app = create_standalone_app(db, artifact_dir=ARTIFACTS, workers=2, limits=Limits(max_unfinished_instances_per_tenant=1))
    with serve_in_thread(app) as url, httpx.Client(base_url=url, headers=bearer(key), timeout=60) as client:
        deploy(client, "acme")
        create(client, "acme", "Approval", id="waits")
        wait_status(client, "acme", "waits", "waiting")
        message = error_of(client.post("/v1/tenants/acme/instances", json={"workflow": "Echo"}), 429, "quota_exceeded")
        assert message == "tenant 'acme' has 1 unfinished instances; 1 more would pass its quota of 1"
        error_of(client.post("/v1/tenants/acme/instances/batch", json={"instances": [{"workflow": "Echo"}]}), 429, "quota_exceeded")

        async def over_the_client() -> None:
            async with ApiClient(url, key) as remote:
                with pytest.raises(QuotaExceeded, match="quota of 1"):
                    await remote.tenant("acme").create("Echo")

        asyncio.run(over_the_client())
        assert client.post("/v1/tenants/acme/instances/waits/terminate").status_code == 200
        create(client, "acme", "Echo", id="fits-again")


def test_openapi_document_declares_every_route_and_its_errors(api: Api) -> None:
    doc = api.anonymous.get("/openapi.json").json()
    operations = {(method.upper(), path): op for path, ops in doc["paths"].items() for method, op in ops.items()}
    tenant_routes = [key for key in operations if key[1].startswith("/v1/tenants/{tenant}")]
    assert len(tenant_routes) == 14
    for key in tenant_routes:
        responses = operations[key]["responses"]
        assert {"400", "401", "403"} <= set(responses), key
        assert "422" not in responses
        assert responses["401"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
        assert operations[key]["security"] == [{"HTTPBearer": []}]
    assert "404" in operations[("GET", "/v1/tenants/{tenant}/instances/{instance_id}")]["responses"]
    assert "409" in operations[("POST", "/v1/tenants/{tenant}/instances/{instance_id}/pause")]["responses"]
    assert "application/wasm" in operations[("POST", "/v1/tenants/{tenant}/components")]["requestBody"]["content"]
    assert "404" in operations[("POST", "/v1/tenants/{tenant}/workflows/{workflow}/upgrade")]["responses"]
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_upgrade_over_http_and_the_remote_cli(tmp_path: Path) -> None:
    """In-flight instances move to a registered version through the API (and `instances
    upgrade --url`): dry run, divergence refused, apply; only with a key that may control."""
    db = tmp_path / "upgrade.db"
    for tenant in ("t", "other"):
        make_tenant(db, tenant)
    developer, readonly, stranger = make_key(db, "t"), make_key(db, "t", "tenant-readonly"), make_key(db, "other")

    async def prepare() -> tuple[str, str, str]:
        clock = ManualClock()  # the pipeline sleeps a minute before it waits for approval
        async with open_engine(db, clock=clock, deploy={"t": "flow_v1"}) as engine:
            t = engine.tenant("t")
            for iid in ("p1", "p2"):
                await t.create("pipeline", {"commit": iid}, id=iid)
            await engine.scheduler.quiesce()
            clock.advance(60)
            await engine.scheduler.quiesce()
            assert {(await t.status(i)).waiting_for for i in ("p1", "p2")} == {"go"}
            v3 = (await t.register(component("flow_v3").read_bytes())).digest
            return (await t.status("p1")).digest, digest_of(component("flow_v2").read_bytes()), v3

    v1, v2, v3 = asyncio.run(prepare())
    path = "/v1/tenants/t/workflows/pipeline/upgrade"
    with serve_in_thread(create_standalone_app(db, artifact_dir=ARTIFACTS, workers=2)) as url:
        with httpx.Client(base_url=url, headers=bearer(developer), timeout=120) as client:
            assert error_of(client.post(path, json={"digest": v2}), 404, "unknown_workflow") == f"component {v2[:12]} is not registered"
            registered = client.post("/v1/tenants/t/components", params={"current": "false"}, content=component("flow_v2").read_bytes(),
                                     headers={"Content-Type": "application/wasm"})
            assert registered.status_code == 201 and registered.json()["digest"] == v2, registered.text
            [pipeline] = client.get("/v1/tenants/t/workflows").json()["workflows"]
            assert pipeline["current"] == v1 and [v["digest"] for v in pipeline["versions"]] == [v1]  # registered, not deployed
            other = httpx.post(f"{url}/v1/tenants/other/instances", json={"workflow": "pipeline", "digest": v2}, headers=bearer(stranger))
            error_of(other, 404, "unknown_workflow")  # t's version is not other's
            diverged = client.post(path, json={"digest": v3, "apply": True})
            assert diverged.status_code == 200, diverged.text
            assert [(r["id"], r["result"]) for r in diverged.json()["results"]] == [("p1", "diverged"), ("p2", "diverged")]
            assert "position 0" in diverged.json()["results"][0]["divergence"]
            dry = client.post(path, json={"digest": v2, "instance_ids": ["p1"]}).json()["results"]
            assert [(r["id"], r["result"], r["from_digest"], r["to_digest"]) for r in dry] == [("p1", "compatible", v1, v2)]
            assert client.get("/v1/tenants/t/instances/p1").json()["digest"] == v1  # a dry run changes nothing
            first = client.post(path, json={"digest": v2, "limit": 1}).json()  # a page of one, then the rest
            assert [r["id"] for r in first["results"]] == ["p1"] and first["next_cursor"]
            rest = client.post(path, json={"digest": v2, "limit": 1, "cursor": first["next_cursor"]}).json()
            assert [r["id"] for r in rest["results"]] == ["p2"] and rest["next_cursor"] is None
            assert diverged.json()["next_cursor"] is None
            error_of(client.post(path, json={"digest": v2, "limit": 0}), 400, "invalid_input")
            error_of(client.post(path, json={"digest": v2, "limit": 1001}), 400, "invalid_input")
            assert "cursor" in error_of(client.post(path, json={"digest": v2, "cursor": "!!"}), 400, "invalid_input")

            assert error_of(client.post(path, json={"digest": "sha256:nope"}), 400, "invalid_input")
            assert error_of(client.post(path, json={"digest": v2, "force": True}), 400, "invalid_input")
            assert error_of(client.post(path, json={"digest": "0" * 64}), 404, "unknown_workflow") == f"component {'0' * 12} is not registered"
            for key in (readonly, stranger):
                error_of(httpx.post(url + path, json={"digest": v2}, headers=bearer(key)), 403, "forbidden")

            upgraded = cli("instances", "upgrade", "-w", "pipeline", "--to", f"sha256:{v2}", "--id", "p1", "--apply",
                             "--url", url, "--api-key", developer, "--tenant", "t")
            assert f"p1: upgraded ({v1[:12]} -> {v2[:12]})" in upgraded.stdout
            refused = cli("instances", "upgrade", "-w", "pipeline", "--to", str(component("flow_v2")), "--url", url, "--tenant", "t", check=False)
            assert refused.returncode == 1 and "with --url, --to takes the digest" in refused.stderr

            assert client.get("/v1/tenants/t/instances/p1").json()["digest"] == v2
            assert client.get("/v1/tenants/t/instances/p2").json()["digest"] == v1  # not named: untouched
            assert client.post("/v1/tenants/t/instances/p1/events/go", json={"env": "prod"}).status_code == 202
            assert wait_status(client, "t", "p1")["output"]["version"] == 2


def test_tenants_and_keys_are_administered_over_http_by_platform_admins_only(api: Api) -> None:
    created = api.admin.post("/v1/tenants", json={"name": "initech"})
    assert created.status_code == 201 and created.json()["name"] == "initech", created.text
    assert error_of(api.admin.post("/v1/tenants", json={"name": "initech"}), 409, "already_exists") == "tenant 'initech' already exists"
    error_of(api.admin.post("/v1/tenants", json={"name": "Not A Name"}), 400, "invalid_input")
    assert {"acme", "globex", "initech"} <= {t["name"] for t in api.admin.get("/v1/tenants").json()["tenants"]}

    issued = api.admin.post("/v1/keys", json={"tenant": "initech", "role": "tenant-developer", "description": "ci"})
    assert issued.status_code == 201, issued.text
    key, token = issued.json()["key"], issued.json()["token"]
    assert (key["tenant"], key["role"], key["description"], key["revoked_at"]) == ("initech", "tenant-developer", "ci", None)
    assert token.startswith(f"tf_{key['id']}_")
    assert httpx.get(f"{api.url}/v1/tenants/initech/instances", headers=bearer(token)).status_code == 200
    error_of(httpx.get(f"{api.url}/v1/tenants/acme/instances", headers=bearer(token)), 403, "forbidden")
    listed = api.admin.get("/v1/keys", params={"tenant": "initech"}).json()["keys"]
    assert [(k["id"], k["revoked_at"]) for k in listed] == [(key["id"], None)]
    assert "token" not in listed[0] and all("token" not in k for k in api.admin.get("/v1/keys").json()["keys"])

    revoked = api.admin.post(f"/v1/keys/{key['id']}/revoke").json()
    assert revoked["id"] == key["id"] and revoked["revoked_at"] is not None
    assert "revoked" in error_of(httpx.get(f"{api.url}/v1/tenants/initech/instances", headers=bearer(token)), 401, "unauthenticated")
    assert error_of(api.admin.post("/v1/keys/0123456789ab/revoke"), 404, "not_found") == "no API key '0123456789ab'"
    error_of(api.admin.post("/v1/keys", json={"tenant": "nobody-here", "role": "tenant-readonly"}), 400, "invalid_input")
    error_of(api.admin.post("/v1/keys", json={"tenant": "initech", "role": "platform-admin"}), 400, "invalid_input")
    error_of(api.admin.post("/v1/keys", json={"role": "root"}), 400, "invalid_input")

    # Nobody else administers: tenant keys get 403, no key 401, on every admin route.
    for client, status, code in ((api.acme, 403, "forbidden"), (api.readonly, 403, "forbidden"), (api.anonymous, 401, "unauthenticated")):
        for method, path, body in (("POST", "/v1/tenants", {"name": "rogue"}), ("GET", "/v1/tenants", None), ("POST", "/v1/keys", {"tenant": "acme"}),
                                   ("GET", "/v1/keys", None), ("POST", f"/v1/keys/{key['id']}/revoke", None)):
            error_of(client.request(method, path, json=body), status, code)
    assert "rogue" not in {t["name"] for t in api.admin.get("/v1/tenants").json()["tenants"]}


def test_a_platform_admin_deletes_a_tenant_over_http(api: Api) -> None:
    assert api.admin.post("/v1/tenants", json={"name": "hooli"}).status_code == 201
    token = api.admin.post("/v1/keys", json={"tenant": "hooli", "role": "tenant-developer"}).json()["token"]
    hooli = httpx.Client(base_url=api.url, headers=bearer(token), timeout=120)
    with hooli:
        assert deploy(hooli, "hooli")["digest"] == api.digest  # the same code as acme's
        napping = create(hooli, "hooli", "Nap", {"duration": "1 hour"})
        wait_status(hooli, "hooli", napping, "waiting")
        done = create(hooli, "hooli", "Echo", {"x": 1})
        wait_status(hooli, "hooli", done)
        [listed] = [t for t in api.admin.get("/v1/tenants").json()["tenants"] if t["name"] == "hooli"]
        assert (listed["unfinished_instances"], listed["quota"]) == (1, 1_000_000)  # the nap; the echo is complete
        for client, status, code in ((api.acme, 403, "forbidden"), (hooli, 403, "forbidden"), (api.anonymous, 401, "unauthenticated")):
            error_of(client.delete("/v1/tenants/hooli"), status, code)
        acme_before = api.acme.get("/v1/tenants/acme/instances").json()

        deleted = api.admin.delete("/v1/tenants/hooli")
        assert deleted.status_code == 200, deleted.text
        body = deleted.json()
        assert body == {"name": "hooli", "instances": 2, "deployments": body["deployments"], "api_keys": 1, "components": 0}
        assert body["deployments"] >= 1  # one per workflow the component defines
        assert error_of(hooli.get("/v1/tenants/hooli/instances"), 401, "unauthenticated") == "invalid or revoked API key"
        assert "hooli" not in {t["name"] for t in api.admin.get("/v1/tenants").json()["tenants"]}
        assert error_of(api.admin.delete("/v1/tenants/hooli"), 404, "not_found") == "tenant 'hooli' not found"
        error_of(api.admin.delete("/v1/tenants/Not-A-Name"), 400, "invalid_input")
        # Acme runs the same component: its instances and its code are untouched.
        assert api.acme.get("/v1/tenants/acme/instances").json() == acme_before
        echo = create(api.acme, "acme", "Echo", {"x": 1})
        assert wait_status(api.acme, "acme", echo)["status"] == "complete"


def test_the_admin_cli_runs_against_a_server(api: Api) -> None:
    admin_key = make_key(api.db, None, "platform-admin")
    remote = ("--url", api.url, "--api-key", admin_key)
    assert cli("tenants", "create", "umbrella", *remote).stdout.strip() == "tenant umbrella created"
    listed = cli("tenants", "list", *remote).stdout
    assert re.search(r"^umbrella\tcreated \S+ \S+\t0 unfinished \(quota 1,000,000\)$", listed, re.M), listed
    issued = json.loads(cli("keys", "issue", "--tenant", "umbrella", "--role", "tenant-readonly", *remote, "--json").stdout)
    assert httpx.get(f"{api.url}/v1/tenants/umbrella/instances", headers=bearer(issued["token"])).status_code == 200
    listed = json.loads(cli("keys", "list", "--tenant", "umbrella", *remote, "--json").stdout)
    assert [(k["id"], k["role"], k["revoked_at"]) for k in listed] == [(issued["id"], "tenant-readonly", None)]
    assert cli("keys", "revoke", issued["id"], *remote).stdout.strip() == f"key {issued['id']} revoked"
    unconfirmed = cli("tenants", "delete", "umbrella", *remote, check=False, input="n\n")
    assert unconfirmed.returncode == 1 and "delete tenant 'umbrella'" in unconfirmed.stderr
    assert "umbrella\tcreated " in cli("tenants", "list", *remote).stdout
    deleted = json.loads(cli("tenants", "delete", "umbrella", "--yes", *remote, "--json").stdout)
    assert deleted == {"name": "umbrella", "instances": 0, "deployments": 0, "api_keys": 1, "components": 0}
    assert "umbrella" not in cli("tenants", "list", *remote).stdout
    missing = cli("tenants", "delete", "umbrella", "--yes", *remote, check=False)
    assert missing.returncode == 1 and "tenant 'umbrella' not found" in missing.stderr
    refused = cli("tenants", "create", "other", "--url", api.url, "--api-key", make_key(api.db, "acme"), check=False)
    assert refused.returncode == 1 and "may not admin" in refused.stderr
