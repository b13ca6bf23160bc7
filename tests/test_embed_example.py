"""examples/embed_fastapi: a host FastAPI app with the engine in its lifespan, the API
mounted under /workflows and its own authorizer and loader, driven over real HTTP."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from apikit import bearer, deploy, serve_in_thread, wait_status
from enginekit import ARTIFACTS, REPO

EXAMPLE = REPO / "examples" / "embed_fastapi" / "app.py"


def load_example(monkeypatch: pytest.MonkeyPatch, db: Path) -> ModuleType:
    monkeypatch.setenv("TENANTFLOW_EXAMPLE_DB", str(db))
    monkeypatch.setenv("TENANTFLOW_EXAMPLE_ARTIFACTS", str(ARTIFACTS))
    spec = importlib.util.spec_from_file_location("embed_fastapi_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_embedding_example_serves_its_routes_and_the_mounted_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example = load_example(monkeypatch, tmp_path / "example.db")
    with serve_in_thread(example.app) as url:
        assert httpx.get(f"{url}/").json()["workflows_api"] == "/workflows/docs"
        with httpx.Client(base_url=f"{url}/workflows", headers=bearer("acme-admin-token"), timeout=120) as acme:
            deploy(acme, "acme")
            acme.post("/v1/tenants/acme/instances", json={"workflow": "Echo", "id": "hello", "params": "hi"}).raise_for_status()
            assert wait_status(acme, "acme", "hello")["output"] == {"echo": "hi"}

            viewer = bearer("acme-viewer-token")
            assert acme.get("/v1/tenants/acme/instances/hello", headers=viewer).status_code == 200
            paused = acme.post("/v1/tenants/acme/instances/hello/pause", headers=viewer)
            assert (paused.status_code, paused.json()["error"]["code"]) == (403, "forbidden")
            other = acme.get("/v1/tenants/acme/instances/hello", headers=bearer("globex-admin-token"))
            assert other.status_code == 403
            assert acme.get("/v1/tenants/acme/instances", headers=bearer("wrong")).status_code == 401
            assert acme.get("/metrics").status_code == 403  # this platform exposes no admin operations

            doc = acme.get("/openapi.json").json()
            assert doc["servers"] == [{"url": "/workflows"}]
            assert "/v1/tenants/{tenant}/instances" in doc["paths"]
        assert httpx.get(f"{url}/workflows/readyz").json()["status"] == "ready"
    assert not example.engine.is_open  # the host app's lifespan closed it
