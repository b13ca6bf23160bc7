"""Request and response bodies of the HTTP API (shared by the server and the HTTP client).

The instance models themselves (status, page, log line, component) are the engine's own
(`tenantflow.models`), so the API and the local CLI render the same objects.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from .models import DEFAULT_UPGRADE_PAGE, MAX_UPGRADE_PAGE, Status

# The engine's validation rules, as JSON Schema patterns (see tenantflow.limits).
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
INSTANCE_ID_PATTERN = r"^[a-zA-Z0-9_][a-zA-Z0-9_-]{0,99}$"
EVENT_TYPE_PATTERN = r"^[A-Za-z0-9_-]{1,100}$"
WORKFLOW_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
DIGEST_PATTERN = r"^[0-9a-f]{64}$"


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. not_found, invalid_state.")
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class CreateInstance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workflow: str = Field(pattern=WORKFLOW_PATTERN)
    params: Any = Field(default=None, description="Any JSON value, passed to the workflow's run as event.payload.")
    id: Optional[str] = Field(default=None, pattern=INSTANCE_ID_PATTERN, description="Instance id (default: generated). Unique per tenant.")
    digest: Optional[str] = Field(default=None, pattern=DIGEST_PATTERN, description="Pin a registered component version (default: the current deployment).")
    metadata: Optional[dict[str, Any]] = Field(default=None, description="Platform-owned data kept in the envelope; never used to authorize.")


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instances: list[CreateInstance] = Field(min_length=1, max_length=1000)


class Created(BaseModel):
    id: str


class BatchCreated(BaseModel):
    ids: list[str]


class ControlResult(BaseModel):
    id: str
    status: Status = Field(description="The instance's status right after the operation.")


class EventAccepted(BaseModel):
    id: str
    type: str


class WorkflowVersion(BaseModel):
    digest: str
    size: int
    deployed_at: dt.datetime


class WorkflowInfo(BaseModel):
    name: str
    current: str = Field(description="Digest new instances of this workflow run.")
    versions: list[WorkflowVersion] = Field(description="Deployments, newest first.")


class WorkflowList(BaseModel):
    workflows: list[WorkflowInfo]


class UpgradeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    digest: str = Field(pattern=DIGEST_PATTERN, description="The registered component version to move the instances to.")
    apply: bool = Field(default=False, description="Switch the instances that replay cleanly (default: a dry run).")
    instance_ids: Optional[list[str]] = Field(
        default=None, min_length=1, max_length=1000, description="Only these instances (default: every in-flight instance of the workflow)."
    )
    limit: int = Field(
        default=DEFAULT_UPGRADE_PAGE, ge=1, le=MAX_UPGRADE_PAGE,
        description="Examine at most this many instances (each replayed against the new code) in this request.",
    )
    cursor: Optional[str] = Field(default=None, min_length=1, max_length=200, description="`next_cursor` of the previous page.")


# ---- platform administration (platform-admin keys) ---------------------------------------
RoleName = Literal["tenant-developer", "tenant-readonly", "platform-admin"]


class CreateTenant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TENANT_PATTERN)


class TenantInfo(BaseModel):
    name: str
    created_at: dt.datetime
    unfinished_instances: int = Field(default=0, description="Its instances not yet complete, errored or terminated.")
    quota: Optional[int] = Field(default=None, description="How many of those it may have (null: no quota).")


class TenantList(BaseModel):
    tenants: list[TenantInfo]


class TenantDeleted(BaseModel):
    """What deleting a tenant removed (all of it: nothing of the tenant is left)."""

    name: str
    instances: int = Field(description="Instances deleted, with their journals, events and logs (running ones were stopped).")
    deployments: int = Field(description="Deployments of its workflows.")
    api_keys: int = Field(description="Its API keys (they no longer authenticate).")
    components: int = Field(description="Component versions deleted with their bytes and artifacts (ones another tenant also deployed are kept).")


class IssueKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: RoleName = "tenant-developer"
    tenant: Optional[str] = Field(default=None, pattern=TENANT_PATTERN, description="The tenant the key acts for (none for platform-admin keys).")
    description: str = Field(default="", max_length=200, description="A note to tell keys apart.")


class KeyInfo(BaseModel):
    id: str
    tenant: Optional[str]
    role: RoleName
    description: str
    created_at: dt.datetime
    revoked_at: Optional[dt.datetime]


class IssuedKeyInfo(BaseModel):
    key: KeyInfo
    token: str = Field(description="The bearer token, shown this once: only its hash is stored.")


class KeyList(BaseModel):
    keys: list[KeyInfo]


class Health(BaseModel):
    status: Literal["ok", "ready", "unavailable"]
    checks: dict[str, bool] = Field(default_factory=dict)
