"""An existing FastAPI application that embeds tenantflow.

The host app owns the process: it opens the engine in its own lifespan, mounts the
tenantflow API under /workflows next to its own routes, and brings its own authorizer
(a static token table here; an SSO session or a JWT check in a real platform) and its
own loader (where tenant code comes from on a cache miss).

Run it:  TENANTFLOW_EXAMPLE_DB=/tmp/example.db uvicorn app:app --app-dir examples/embed_fastapi
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Optional

from fastapi import FastAPI

from tenantflow.auth import Action, Principal, Role
from tenantflow.engine import Engine
from tenantflow.errors import Forbidden, Unauthenticated
from tenantflow.loader import RegistryLoader
from tenantflow.server import create_app

# token -> (tenant, may deploy?). A platform would look these up in its own user store.
TOKENS: dict[str, tuple[str, bool]] = {
    "acme-admin-token": ("acme", True),
    "acme-viewer-token": ("acme", False),
    "globex-admin-token": ("globex", True),
}


class StaticTokenAuthorizer:
    """Tenant users act on their own tenant; viewers only read; nobody reads /metrics."""

    async def authenticate(self, token: Optional[str]) -> Principal:
        if token not in TOKENS:
            raise Unauthenticated("unknown token")
        tenant, can_deploy = TOKENS[token]
        return Principal(subject=f"{tenant}-user", role=Role.TENANT_DEVELOPER if can_deploy else Role.TENANT_READONLY, tenant=tenant)

    async def authorize(self, principal: Principal, action: Action, tenant: str, instance_id: Optional[str]) -> None:
        if principal.tenant != tenant:
            raise Forbidden("that tenant is not yours")
        if principal.role is Role.TENANT_READONLY and action is not Action.READ:
            raise Forbidden(f"viewers may not {action.value}")
        if action is Action.ADMIN:
            raise Forbidden("platform operations are not exposed here")


class PlatformLoader:
    """Tenant code from the platform's own artifact folder, else from the engine's registry
    (where the mounted API's `POST .../components` stores it). The engine checks the digest."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.engine: Optional[Engine] = None

    async def load(self, tenant: str, workflow: str, digest: str) -> bytes:
        candidate = self.folder / tenant / f"{digest}.wasm"
        if await asyncio.to_thread(candidate.is_file):
            return await asyncio.to_thread(candidate.read_bytes)
        assert self.engine is not None
        return await RegistryLoader(self.engine.components).load(tenant, workflow, digest)


db_path = Path(os.environ.get("TENANTFLOW_EXAMPLE_DB", "example.db"))
artifacts = os.environ.get("TENANTFLOW_EXAMPLE_ARTIFACTS")  # precompiled-component cache (default: ~/.cache)
loader = PlatformLoader(db_path.with_name("platform-components"))
engine = Engine(db_path, loader=loader, artifact_dir=Path(artifacts) if artifacts else None)
loader.engine = engine


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with engine:  # the host app owns the engine: open on startup, graceful close on shutdown
        yield


app = FastAPI(title="Example platform", lifespan=lifespan)
app.mount("/workflows", create_app(engine, StaticTokenAuthorizer()))


@app.get("/")
async def home() -> dict[str, str]:
    """The host app's own routes keep working next to the mounted API."""
    return {"service": "example platform", "workflows_api": "/workflows/docs"}
