"""The HTTP API: a FastAPI app over the tenant bindings, mountable under any prefix.

`create_app(engine, authorizer)` holds no global state and does not open the engine: the
ASGI app that owns the lifespan does (see examples/embed_fastapi). `create_standalone_app`
is that owner for `tenantflow serve`.

Every tenant route authenticates the bearer token, then asks the authorizer about
(principal, action, tenant, instance id) before touching the engine. A key of tenant A
used on tenant B gets 403 whatever the path names (the authorizer sees no instance data),
and an instance of another tenant is a plain 404 (the binding is scoped by the path).
"""

# No `from __future__ import annotations`: FastAPI must see the dependency objects that
# the route signatures close over when it reads their annotations.
import asyncio
import contextlib
import logging
import os
from typing import Annotated, Any, AsyncIterator, Awaitable, Callable, Literal, Optional

from fastapi import Body, Depends, FastAPI, Path, Query, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from . import journal as jn
from .api_models import (
    EVENT_TYPE_PATTERN,
    INSTANCE_ID_PATTERN,
    TENANT_PATTERN,
    WORKFLOW_PATTERN,
    BatchCreated,
    ControlResult,
    CreateBatch,
    Created,
    CreateInstance,
    CreateTenant,
    ErrorResponse,
    EventAccepted,
    Health,
    IssuedKeyInfo,
    IssueKey,
    KeyInfo,
    KeyList,
    TenantDeleted,
    TenantInfo,
    TenantList,
    UpgradeRequest,
    WorkflowInfo,
    WorkflowList,
    WorkflowVersion,
)
from .auth import Action, ApiKeyAuthorizer, Authorizer, KeyAdmin, Principal
from .engine import INLINE_STATUS_STEPS, MAX_LIST_PAGE, MAX_LOG_PAGE, MAX_STATUS_STEPS, Engine, TenantBinding
from .errors import (
    ComponentError,
    Forbidden,
    HostBusy,
    InstanceAlreadyExists,
    InstanceNotFound,
    InvalidInput,
    InvalidState,
    PayloadTooLarge,
    TenantflowError,
    Unauthenticated,
    UnknownWorkflow,
)
from .limits import MiB, format_bytes
from .metrics import Metrics
from .models import ComponentInfo, InstancePage, InstanceStatus, LogPage, Status, UpgradeResults, ts

log = logging.getLogger("tenantflow.server")

TenantName = Annotated[str, Path(pattern=TENANT_PATTERN, description="Tenant name.")]
InstanceId = Annotated[str, Path(pattern=INSTANCE_ID_PATTERN, max_length=100, description="Instance id (unique per tenant).")]
EventType = Annotated[str, Path(pattern=EVENT_TYPE_PATTERN, description="Event type the workflow waits for.")]
WorkflowName = Annotated[str, Path(pattern=WORKFLOW_PATTERN, description="Workflow name.")]

DEFAULT_MAX_BODY = 8 * MiB
DEFAULT_MAX_COMPONENT = 256 * MiB

# HTTP status by error class, most specific first (subclasses of InvalidInput etc. too).
STATUS_BY_ERROR: tuple[tuple[type[TenantflowError], int], ...] = (
    (Unauthenticated, 401),
    (Forbidden, 403),
    (PayloadTooLarge, 413),
    (InvalidInput, 400),
    (ComponentError, 400),
    (InstanceNotFound, 404),
    (UnknownWorkflow, 404),
    (InstanceAlreadyExists, 409),
    (InvalidState, 409),
    (HostBusy, 503),
)
STATUS_BY_CODE = {
    "invalid_input": 400, "payload_too_large": 413, "not_found": 404, "already_exists": 409, "invalid_state": 409, "compile_error": 400,
    "quota_exceeded": 429,
}


def http_status(exc: TenantflowError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    if isinstance(exc, LookupError):
        return 404
    return STATUS_BY_CODE.get(exc.code, 500)


def error_response(status: int, code: str, message: str, headers: Optional[dict[str, str]] = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "Invalid input (bad id, name, params, cursor or component).",
        401: "Missing, invalid or revoked API key.",
        403: "The key may not do this on this tenant.",
        404: "No such instance or workflow in this tenant (another tenant's instance looks the same).",
        409: "The instance already exists, or is in a state that does not allow the operation.",
        413: "The request body, params or payload is over its size limit.",
        429: "A quota is full: the tenant's unfinished instances, or the events an instance has not taken yet.",
        503: "Not ready.",
    }
    return {s: {"model": ErrorResponse, "description": described[s]} for s in statuses}


class BodyLimit:
    """Refuse request bodies over a limit before the app reads them (413), whether the
    client declares a Content-Length or streams chunks. Component uploads get their own,
    larger limit."""

    def __init__(self, app: ASGIApp, max_body: int, max_component: int) -> None:
        self.app, self.max_body, self.max_component = app, max_body, max_component

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_upload = scope["method"] == "POST" and scope["path"].rstrip("/").endswith("/components")
        limit = self.max_component if is_upload else self.max_body
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await error_response(400, "invalid_input", "invalid Content-Length header")(scope, receive, send)
                return
            if size > limit:
                await self._too_large(scope, receive, send, limit)
                return
        chunks, total, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                await self._too_large(scope, receive, send, limit)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, delivered = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = error_response(413, "payload_too_large", f"request body is over the limit of {format_bytes(limit)}", {"Connection": "close"})
        await response(scope, receive, send)


def create_app(
    engine: Engine,
    authorizer: Authorizer,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    max_component_bytes: int = DEFAULT_MAX_COMPONENT,
    public_metrics: bool = False,
    lifespan: Optional[Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]] = None,
) -> FastAPI:
    """The tenantflow API for `engine`, authorized by `authorizer`.

    The caller opens and closes the engine (its own lifespan, or `lifespan=` here).
    `/metrics` needs a platform-admin key unless `public_metrics`."""
    metrics = Metrics()
    app = FastAPI(
        title="tenantflow",
        version=__version__,
        description="Durable workflows from tenant code: instances, events and component versions, per tenant.",
        lifespan=lifespan,
        generate_unique_id_function=lambda route: route.name,
        dependencies=[Depends(_known_query_parameters)],
    )
    _declare_errors_accurately(app)
    app.add_middleware(BodyLimit, max_body=max_body_bytes, max_component=max_component_bytes)
    bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer tf_...`")

    @app.exception_handler(TenantflowError)
    async def tenantflow_error(request: Request, exc: TenantflowError) -> JSONResponse:
        status = http_status(exc)
        if status >= 500:
            log.error("request failed: %s %s: %r", request.method, request.url.path, exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return error_response(status, exc.code, str(exc), headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems: list[str] = []
        for err in exc.errors():
            loc = tuple(err.get("loc", ()))
            if err.get("type") == "json_invalid":
                problem = f"the body is not valid JSON (at character {loc[-1]})"
            else:
                where = ".".join(str(part) for part in loc if part != "body") or "body"
                problem = f"{where}: {err.get('msg', 'invalid')}"
            if problem not in problems:  # a path parameter is checked by a route and its dependency
                problems.append(problem)
        return error_response(400, "invalid_input", "; ".join(problems[:5]) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal error")

    # ---- dependencies -------------------------------------------------------------------
    async def principal(credentials: Annotated[Optional[HTTPAuthorizationCredentials], Depends(bearer)]) -> Principal:
        metrics.attach(engine)
        return await authorizer.authenticate(credentials.credentials if credentials else None)


    def tenant_scope(action: Action) -> Callable[..., Awaitable[TenantBinding]]:
        async def dependency(tenant: TenantName, who: Annotated[Principal, Depends(principal)]) -> TenantBinding:
            await authorizer.authorize(who, action, tenant, None)
            return engine.tenant(tenant, principal=who, authorizer=authorizer)

        return dependency

    def instance_scope(action: Action) -> Callable[..., Awaitable[TenantBinding]]:
        async def dependency(tenant: TenantName, instance_id: InstanceId, who: Annotated[Principal, Depends(principal)]) -> TenantBinding:
            await authorizer.authorize(who, action, tenant, instance_id)
            return engine.tenant(tenant, principal=who, authorizer=authorizer)

        return dependency

    base = "/v1/tenants/{tenant}"
    common = (400, 401, 403, 413)

    # ---- instances ----------------------------------------------------------------------
    @app.post(f"{base}/instances", status_code=201, response_model=Created, tags=["instances"], responses=_errors(*common, 404, 409, 429))
    async def create_instance(spec: CreateInstance, binding: Annotated[TenantBinding, Depends(tenant_scope(Action.CREATE))]) -> Created:
        """Create an instance of a deployed workflow (queued at once)."""
        return Created(id=await binding.create(spec.workflow, spec.params, id=spec.id, digest=spec.digest, metadata=spec.metadata))

    @app.post(f"{base}/instances/batch", status_code=201, response_model=BatchCreated, tags=["instances"], responses=_errors(*common, 404, 409, 429))
    async def create_batch(batch: CreateBatch, binding: Annotated[TenantBinding, Depends(tenant_scope(Action.CREATE))]) -> BatchCreated:
        """Create several instances atomically: one bad or duplicate instance fails them all."""
        ids = await binding.create_batch([item.model_dump(exclude_none=False) for item in batch.instances])
        return BatchCreated(ids=ids)

    @app.get(f"{base}/instances", response_model=InstancePage, tags=["instances"], responses=_errors(*common, 404))
    async def list_instances(
        binding: Annotated[TenantBinding, Depends(tenant_scope(Action.READ))],
        workflow: Annotated[Optional[str], Query(min_length=1, max_length=128, description="Only instances of this workflow.")] = None,
        status: Annotated[Optional[Status], Query(description="Only instances with this status.")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST_PAGE)] = 50,
        cursor: Annotated[Optional[str], Query(min_length=1, max_length=200, description="`next_cursor` of the previous page.")] = None,
        parent: Annotated[Optional[str], Query(pattern=INSTANCE_ID_PATTERN, max_length=100, description="Only the children this instance started.")] = None,
    ) -> InstancePage:
        """Instances of the tenant, newest first, a page at a time."""
        return await binding.list(workflow=workflow, status=status, limit=limit, cursor=cursor, parent=parent)

    @app.get(f"{base}/instances/{{instance_id}}", response_model=InstanceStatus, tags=["instances"], responses=_errors(*common, 404))
    async def get_instance(
        instance_id: InstanceId,
        binding: Annotated[TenantBinding, Depends(instance_scope(Action.READ))],
        steps_limit: Annotated[Optional[int], Query(ge=0, le=MAX_STATUS_STEPS, description="At most this many steps (0: none); all of them when left out.")] = None,
        steps_from: Annotated[int, Query(ge=0, le=jn.MAX_ROW_ID, description="The `seq` of the first step to include: a page's `next_steps_from`.")] = 0,
    ) -> Response:
        """Status, output or error, and the step history (or a page of it)."""
        status = await binding.status(instance_id, steps_limit=steps_limit, steps_from=steps_from)
        # Encoded here, not by FastAPI: a long history (~2 MB at the step cap) is encoded on
        # a thread, so the event loop serves other requests meanwhile (see `_snapshot`).
        body = await asyncio.to_thread(status.model_dump_json) if len(status.steps) > INLINE_STATUS_STEPS else status.model_dump_json()
        return Response(body, media_type="application/json")

    def control_route(name: Literal["pause", "resume", "terminate", "restart"], summary: str) -> None:
        async def control(instance_id: InstanceId, binding: Annotated[TenantBinding, Depends(instance_scope(Action.CONTROL))]) -> ControlResult:
            status = await getattr(binding, name)(instance_id)
            return ControlResult(id=instance_id, status=status)

        control.__doc__ = summary
        app.post(
            f"{base}/instances/{{instance_id}}/{name}", response_model=ControlResult, tags=["instances"],
            responses=_errors(*common, 404, 409, *([429] if name == "restart" else [])), name=f"{name}_instance", operation_id=f"{name}_instance",
        )(control)

    control_route("pause", "Pause (a running instance pauses at its next durable call).")
    control_route("resume", "Resume a paused instance.")
    control_route("terminate", "Terminate an unfinished instance.")
    control_route("restart", "Clear the journal and run again from the top with the same params.")

    @app.delete(f"{base}/instances/{{instance_id}}", status_code=204, response_class=Response, tags=["instances"], responses=_errors(*common, 404))
    async def delete_instance(instance_id: InstanceId, binding: Annotated[TenantBinding, Depends(instance_scope(Action.CONTROL))]) -> Response:
        """Delete an instance and its journal, events and logs."""
        await binding.delete(instance_id)
        return Response(status_code=204)

    @app.post(
        f"{base}/instances/{{instance_id}}/events/{{event_type}}", status_code=202, response_model=EventAccepted,
        tags=["instances"], responses=_errors(*common, 404, 409, 429),
    )
    async def send_event(
        instance_id: InstanceId,
        event_type: EventType,
        binding: Annotated[TenantBinding, Depends(instance_scope(Action.SEND_EVENT))],
        payload: Annotated[Any, Body(description="Any JSON value (the event's payload).")] = None,
    ) -> EventAccepted:
        """Deliver an event: to the waiting step if one waits for its type, else buffered in order."""
        await binding.send_event(instance_id, event_type, payload)
        return EventAccepted(id=instance_id, type=event_type)

    @app.get(f"{base}/instances/{{instance_id}}/logs", response_model=LogPage, tags=["instances"], responses=_errors(*common, 404))
    async def instance_logs(
        instance_id: InstanceId,
        binding: Annotated[TenantBinding, Depends(instance_scope(Action.READ))],
        limit: Annotated[int, Query(ge=1, le=MAX_LOG_PAGE)] = 1000,
        cursor: Annotated[Optional[str], Query(min_length=1, max_length=200, description="`next_cursor` of the previous page.")] = None,
    ) -> LogPage:
        """The instance's captured stdout/stderr and log lines, oldest first, a page at a time."""
        return await binding.log_page(instance_id, limit=limit, cursor=cursor)

    # ---- components and workflows -------------------------------------------------------
    @app.post(
        f"{base}/components", status_code=201, response_model=ComponentInfo, tags=["components"], responses=_errors(*common),
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "The component's bytes (`tenantflow compile` output).",
                "content": {"application/wasm": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def deploy_component(
        request: Request, binding: Annotated[TenantBinding, Depends(tenant_scope(Action.DEPLOY))],
        current: Annotated[bool, Query(description="Make it the current version of its workflows (false: only register it, "
                                                   "for instances to pin or upgrade to).")] = True,
    ) -> ComponentInfo:
        """Register a component version and make it current for the workflows it defines.
        Instances already running stay on the version they started with."""
        wasm = await request.body()
        if not wasm:
            raise InvalidInput("the request body must be the component's bytes")
        return await engine.deploy(binding.name, wasm) if current else await binding.register(wasm)

    @app.get(f"{base}/workflows", response_model=WorkflowList, tags=["components"], responses=_errors(*common))
    async def list_workflows(binding: Annotated[TenantBinding, Depends(tenant_scope(Action.READ))]) -> WorkflowList:
        """The tenant's workflows with their current and earlier versions."""
        deployments = await engine.read(jn.deployments_query(binding.name))
        by_name: dict[str, list[WorkflowVersion]] = {}
        for d in reversed(deployments):
            by_name.setdefault(d.workflow, []).append(WorkflowVersion(digest=d.digest, size=d.size, deployed_at=ts(d.deployed_at)))  # type: ignore[arg-type]
        return WorkflowList(workflows=[WorkflowInfo(name=n, current=v[0].digest, versions=v) for n, v in sorted(by_name.items())])

    @app.post(
        f"{base}/workflows/{{workflow}}/upgrade", response_model=UpgradeResults, tags=["components"],
        responses=_errors(*common, 404),
    )
    async def upgrade_workflow(
        workflow: WorkflowName, spec: UpgradeRequest, binding: Annotated[TenantBinding, Depends(tenant_scope(Action.CONTROL))]
    ) -> UpgradeResults:
        """Move in-flight instances of a workflow to another registered version. Each journal is
        replayed against the new code first (no side effects): `compatible` (dry run) or
        `upgraded` (with `apply`) when every recorded call matches, else `diverged` with the
        first divergence (the instance is left as it was), or `busy` while it runs (retry).
        At most `limit` instances are examined per request, oldest first: while `next_cursor`
        is set, post again with it as `cursor` for the next page."""
        return await binding.upgrade_page(
            workflow, spec.digest, apply=spec.apply, instance_ids=spec.instance_ids, limit=spec.limit, cursor=spec.cursor,
        )

    # ---- platform administration: tenants and keys (platform-admin) ---------------------
    # Only where keys live in this engine's database: another authorizer has its own.
    admin_deps = [Depends(_admin_dependency(authorizer, principal))]
    if isinstance(authorizer, ApiKeyAuthorizer):
        keys = KeyAdmin(engine)

        @app.post("/v1/tenants", status_code=201, response_model=TenantInfo, tags=["admin"], dependencies=admin_deps,
                  responses=_errors(*common, 409))
        async def create_tenant(spec: CreateTenant) -> TenantInfo:
            """Create a tenant (keys are issued per tenant)."""
            return await keys.create_tenant(spec.name)

        @app.get("/v1/tenants", response_model=TenantList, tags=["admin"], dependencies=admin_deps, responses=_errors(400, 401, 403))
        async def list_tenants() -> TenantList:
            """Every tenant, by name."""
            return TenantList(tenants=await keys.tenants())

        @app.delete("/v1/tenants/{name}", response_model=TenantDeleted, tags=["admin"], dependencies=admin_deps,
                    responses=_errors(400, 401, 403, 404))
        async def delete_tenant(name: TenantName) -> TenantDeleted:
            """Delete a tenant and everything it stored: its instances (running ones are
            stopped) with their journals, events and logs, its deployments, its API keys, its
            manifest, and the component versions no other tenant holds. Not undoable."""
            return await keys.delete_tenant(name)

        @app.post("/v1/keys", status_code=201, response_model=IssuedKeyInfo, tags=["admin"], dependencies=admin_deps,
                  responses=_errors(*common))
        async def issue_api_key(spec: IssueKey) -> IssuedKeyInfo:
            """Issue a key; its token is in this answer only (only its hash is stored)."""
            return await keys.issue_key(spec.tenant, spec.role, spec.description)

        @app.get("/v1/keys", response_model=KeyList, tags=["admin"], dependencies=admin_deps, responses=_errors(400, 401, 403))
        async def list_api_keys(
            tenant: Annotated[Optional[str], Query(pattern=TENANT_PATTERN, description="Only this tenant's keys.")] = None,
        ) -> KeyList:
            """Keys with their tenant, role and state; never tokens."""
            return KeyList(keys=await keys.keys(tenant))

        @app.post("/v1/keys/{key_id}/revoke", response_model=KeyInfo, tags=["admin"], dependencies=admin_deps,
                  responses=_errors(400, 401, 403, 404))
        async def revoke_api_key(key_id: Annotated[str, Path(pattern=r"^[0-9a-f]{12}$", description="The key's id.")]) -> KeyInfo:
            """Revoke a key: requests with it fail from the next one on (revoking twice is harmless)."""
            return await keys.revoke_key(key_id)

    # ---- operations ---------------------------------------------------------------------
    @app.get("/healthz", response_model=Health, tags=["operations"], responses=_errors(400))
    async def healthz() -> Health:
        """The process serves requests."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, tags=["operations"], responses={**_errors(400), 503: {"model": Health, "description": "Not ready."}})
    async def readyz() -> JSONResponse:
        """The database takes writes and (if this host runs one) the scheduler runs."""
        checks = {"engine_open": engine.is_open, "database_writable": False, "scheduler_running": True}
        if engine.is_open:
            try:
                await engine.write(lambda conn: None)  # a BEGIN IMMEDIATE ... COMMIT round trip
                checks["database_writable"] = True
            except Exception as exc:  # noqa: BLE001 - reported as not ready
                log.warning("readiness: database not writable: %r", exc)
            if engine.run_scheduler:
                checks["scheduler_running"] = engine.scheduler.active
        ready = all(checks.values())
        body = Health(status="ready" if ready else "unavailable", checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    metrics_deps = [] if public_metrics else admin_deps
    # Errors are JSON even on this text/plain route; with `model=` FastAPI would document them as text/plain.
    error_json = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    metrics_errors = _errors(400) if public_metrics else _errors(400, 401, 403)
    metrics_responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format."},
        **{status: {"description": d["description"], "content": error_json} for status, d in metrics_errors.items()},
    }

    @app.get(
        "/metrics", response_class=PlainTextResponse, tags=["operations"], dependencies=metrics_deps,
        responses=metrics_responses,
    )
    async def prometheus_metrics() -> PlainTextResponse:
        """Prometheus metrics: isolate cache, instances by status, writer commits, step latencies."""
        return PlainTextResponse(await metrics.render(engine), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def _query_names(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def _known_query_parameters(request: Request) -> None:
    """A misspelt filter (`?stauts=`) is an error, not a silently unfiltered list."""
    route = request.scope.get("route")
    allowed = _query_names(route.dependant) if isinstance(route, APIRoute) else set()
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        accepted = f"; accepted: {', '.join(sorted(allowed))}" if allowed else ""
        raise InvalidInput(f"unknown query parameter(s) {', '.join(map(repr, unknown))}{accepted}")


def _declare_errors_accurately(app: FastAPI) -> None:
    """Validation errors answer 400 with the common error body, never FastAPI's 422."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def _admin_dependency(authorizer: Authorizer, principal: Callable[..., Awaitable[Principal]]) -> Callable[..., Awaitable[None]]:
    async def dependency(who: Annotated[Principal, Depends(principal)]) -> None:
        await authorizer.authorize(who, Action.ADMIN, "*", None)

    return dependency


def create_standalone_app(
    db_path: str | os.PathLike[str],
    *,
    authorizer: Optional[Callable[[Engine], Authorizer]] = None,
    public_metrics: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    max_component_bytes: int = DEFAULT_MAX_COMPONENT,
    **engine_options: Any,
) -> FastAPI:
    """The API plus its own lifespan that opens (and gracefully closes) the engine on
    `db_path`; keys come from that database unless `authorizer` builds another."""
    engine = Engine(db_path, **engine_options)
    chosen = (authorizer or ApiKeyAuthorizer)(engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with engine:
            log.info("engine open", extra={"db": str(engine.path), "host_id": engine.host_id})
            yield
            log.info("closing engine: running invocations finish or are left to replay")
        log.info("engine closed")

    app = create_app(
        engine, chosen, max_body_bytes=max_body_bytes, max_component_bytes=max_component_bytes,
        public_metrics=public_metrics, lifespan=lifespan,
    )
    app.state.engine = engine
    return app
