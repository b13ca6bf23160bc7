"""An async HTTP client for the tenantflow API, shaped like the engine's tenant binding.

`ApiClient(url, api_key).tenant("acme")` offers the same calls as `engine.tenant("acme")`
and returns the same pydantic models, so the CLI renders local and remote results with one
code path. API errors come back as the engine's own exception classes (by error code).
"""

from __future__ import annotations

import asyncio
import builtins
import time
from typing import Any, Optional, Sequence
from urllib.parse import quote

import httpx

from .api_models import (
    BatchCreated,
    ControlResult,
    Created,
    IssuedKeyInfo,
    KeyInfo,
    KeyList,
    TenantDeleted,
    TenantInfo,
    TenantList,
    WorkflowList,
)
from .errors import (
    ComponentError,
    Forbidden,
    HostBusy,
    InstanceAlreadyExists,
    InstanceNotFound,
    InvalidInput,
    InvalidState,
    PayloadTooLarge,
    QuotaExceeded,
    TenantflowError,
    Unauthenticated,
    UnknownWorkflow,
)
from .models import (
    DEFAULT_UPGRADE_PAGE,
    MAX_UPGRADE_PAGE,
    SETTLED,
    ComponentInfo,
    InstancePage,
    InstanceStatus,
    LogLine,
    LogPage,
    UpgradeResult,
    UpgradeResults,
    every_upgrade_page,
)

ERRORS: dict[str, type[TenantflowError]] = {
    cls.code: cls
    for cls in (
        InvalidInput, PayloadTooLarge, InstanceNotFound, InstanceAlreadyExists, InvalidState, UnknownWorkflow,
        ComponentError, HostBusy, Unauthenticated, Forbidden, QuotaExceeded,
    )
}


class ApiError(TenantflowError):
    """An error response whose code this client does not know, or no usable response."""

    def __init__(self, message: str, code: str = "internal", status: Optional[int] = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def _error(status: int, body: Any) -> TenantflowError:
    detail = body.get("error") if isinstance(body, dict) else None
    if not isinstance(detail, dict):
        return ApiError(f"server answered {status} without an error body", status=status)
    code, message = str(detail.get("code", "internal")), str(detail.get("message", ""))
    cls = ERRORS.get(code)
    if cls is None:
        return ApiError(message, code, status)
    exc = cls.__new__(cls)  # the message as the server wrote it (some __init__s build their own)
    Exception.__init__(exc, message)
    return exc


class ApiClient:
    def __init__(self, url: str, api_key: Optional[str] = None, *, timeout: float = 120.0, transport: Optional[httpx.AsyncBaseTransport] = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    async def __aenter__(self) -> "ApiClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def tenant(self, name: str) -> "RemoteTenant":
        return RemoteTenant(self, name)

    # Platform administration (a platform-admin key): the calls of `auth.KeyAdmin`.
    async def create_tenant(self, name: str) -> TenantInfo:
        return TenantInfo.model_validate((await self.request("POST", "/v1/tenants", json={"name": name})).json())

    async def tenants(self) -> list[TenantInfo]:
        return TenantList.model_validate((await self.request("GET", "/v1/tenants")).json()).tenants

    async def delete_tenant(self, name: str) -> TenantDeleted:
        return TenantDeleted.model_validate((await self.request("DELETE", f"/v1/tenants/{_q(name)}")).json())

    async def issue_key(self, tenant: Optional[str], role: str, description: str = "") -> IssuedKeyInfo:
        body = {"tenant": tenant, "role": role, "description": description}
        return IssuedKeyInfo.model_validate((await self.request("POST", "/v1/keys", json=body)).json())

    async def keys(self, tenant: Optional[str] = None) -> list[KeyInfo]:
        params = {"tenant": tenant} if tenant is not None else {}
        return KeyList.model_validate((await self.request("GET", "/v1/keys", params=params)).json()).keys

    async def revoke_key(self, key_id: str) -> KeyInfo:
        return KeyInfo.model_validate((await self.request("POST", f"/v1/keys/{_q(key_id)}/revoke")).json())

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach tenantflow at {self.url}: {exc}", "unavailable") from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            raise _error(response.status_code, body)
        return response


def _q(segment: str) -> str:
    return quote(segment, safe="")


class RemoteTenant:
    """The tenant binding's operations over HTTP."""

    def __init__(self, client: ApiClient, tenant: str) -> None:
        self.client = client
        self.name = tenant
        self._base = f"/v1/tenants/{_q(tenant)}"

    def _instance(self, instance_id: str, suffix: str = "") -> str:
        return f"{self._base}/instances/{_q(instance_id)}{suffix}"

    async def create(
        self, workflow: str, params: Any = None, *, id: Optional[str] = None, digest: Optional[str] = None, metadata: Optional[dict[str, Any]] = None
    ) -> str:
        body = {"workflow": workflow, "params": params, "id": id, "digest": digest, "metadata": metadata}
        response = await self.client.request("POST", f"{self._base}/instances", json=body)
        return Created.model_validate(response.json()).id

    async def create_batch(self, items: Sequence[dict[str, Any]]) -> list[str]:
        response = await self.client.request("POST", f"{self._base}/instances/batch", json={"instances": list(items)})
        return BatchCreated.model_validate(response.json()).ids

    async def status(self, instance_id: str, *, steps_limit: Optional[int] = None, steps_from: int = 0) -> InstanceStatus:
        params = {"steps_from": steps_from} if steps_from else {}
        if steps_limit is not None:
            params["steps_limit"] = steps_limit
        return InstanceStatus.model_validate((await self.client.request("GET", self._instance(instance_id), params=params)).json())

    async def wait(
        self, instance_id: str, *, timeout: float = 60.0, statuses: frozenset[str] = SETTLED, poll_seconds: float = 0.2
    ) -> InstanceStatus:
        """Poll until the instance reaches one of `statuses` (default: finished or paused),
        reading the status without its steps meanwhile; the answer has them all."""
        deadline = time.monotonic() + timeout
        while True:
            if (await self.status(instance_id, steps_limit=0)).status in statuses:
                status = await self.status(instance_id)
                if status.status in statuses:  # it may have moved on between the two reads
                    return status
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                current = (await self.status(instance_id, steps_limit=0)).status
                raise TimeoutError(f"instance {instance_id!r} is still {current} after {timeout} s")
            await asyncio.sleep(min(poll_seconds, remaining))

    async def _control(self, instance_id: str, action: str) -> str:
        response = await self.client.request("POST", self._instance(instance_id, f"/{action}"))
        return ControlResult.model_validate(response.json()).status

    async def pause(self, instance_id: str) -> str:
        return await self._control(instance_id, "pause")

    async def resume(self, instance_id: str) -> str:
        return await self._control(instance_id, "resume")

    async def terminate(self, instance_id: str) -> str:
        return await self._control(instance_id, "terminate")

    async def restart(self, instance_id: str) -> str:
        return await self._control(instance_id, "restart")

    async def delete(self, instance_id: str) -> None:
        await self.client.request("DELETE", self._instance(instance_id))

    async def send_event(self, instance_id: str, event_type: str, payload: Any = None) -> None:
        await self.client.request("POST", self._instance(instance_id, f"/events/{_q(event_type)}"), json=payload)

    async def list(
        self, *, workflow: Optional[str] = None, status: Optional[str] = None, limit: int = 50, cursor: Optional[str] = None,
        parent: Optional[str] = None,
    ) -> InstancePage:
        given = {"workflow": workflow, "status": status, "limit": limit, "cursor": cursor, "parent": parent}
        params = {k: v for k, v in given.items() if v is not None}
        return InstancePage.model_validate((await self.client.request("GET", f"{self._base}/instances", params=params)).json())

    async def logs(self, instance_id: str, limit: int = 1000) -> builtins.list[LogLine]:
        return (await self.log_page(instance_id, limit=limit)).logs

    async def log_page(self, instance_id: str, *, limit: int = 1000, cursor: Optional[str] = None) -> LogPage:
        params: dict[str, Any] = {"limit": limit} if cursor is None else {"limit": limit, "cursor": cursor}
        return LogPage.model_validate((await self.client.request("GET", self._instance(instance_id, "/logs"), params=params)).json())

    async def deploy(self, wasm: bytes, *, current: bool = True) -> ComponentInfo:
        response = await self.client.request(
            "POST", f"{self._base}/components", content=wasm, headers={"Content-Type": "application/wasm"}, params={"current": str(current).lower()},
        )
        return ComponentInfo.model_validate(response.json())

    async def register(self, wasm: bytes) -> ComponentInfo:
        """A version to pin or upgrade to, not made current (`TenantBinding.register`)."""
        return await self.deploy(wasm, current=False)

    async def workflows(self) -> WorkflowList:
        return WorkflowList.model_validate((await self.client.request("GET", f"{self._base}/workflows")).json())

    async def upgrade(
        self, workflow: str, digest: str, *, apply: bool = False, instance_ids: Optional[Sequence[str]] = None
    ) -> builtins.list[UpgradeResult]:
        """Every in-flight instance, a page per request."""
        return await every_upgrade_page(
            lambda cursor: self.upgrade_page(workflow, digest, apply=apply, instance_ids=instance_ids, limit=MAX_UPGRADE_PAGE, cursor=cursor)
        )

    async def upgrade_page(
        self, workflow: str, digest: str, *, apply: bool = False, instance_ids: Optional[Sequence[str]] = None,
        limit: int = DEFAULT_UPGRADE_PAGE, cursor: Optional[str] = None,
    ) -> UpgradeResults:
        body = {"digest": digest, "apply": apply, "instance_ids": list(instance_ids) if instance_ids is not None else None, "limit": limit, "cursor": cursor}
        response = await self.client.request("POST", f"{self._base}/workflows/{_q(workflow)}/upgrade", json=body)
        return UpgradeResults.model_validate(response.json())
