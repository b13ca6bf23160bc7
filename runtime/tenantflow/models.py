"""What the engine returns to callers (and the HTTP API serializes): pydantic models."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Awaitable, Callable, Literal, Optional

from pydantic import BaseModel, Field

from .journal import InstanceRow, JournalEntry

Status = Literal["queued", "running", "paused", "waitingForPause", "waiting", "errored", "terminated", "complete"]
SETTLED = frozenset({"complete", "errored", "terminated", "paused"})  # what `wait` waits for by default


class ErrorInfo(BaseModel):
    name: str
    message: str


class AttemptInfo(BaseModel):
    attempt: int
    started_at: Optional[dt.datetime] = None
    ended_at: Optional[dt.datetime] = None
    error: Optional[ErrorInfo] = None


class StepInfo(BaseModel):
    """One durable call in the instance's history, in order."""

    seq: int
    # step | sleep | event, children | join | child-status | child-event, fetch
    kind: str
    name: str
    status: str  # running | done | failed | retrying | waiting | timed_out
    attempts: int = 0
    output: Any = None
    error: Optional[ErrorInfo] = None
    started_at: Optional[dt.datetime] = None
    ended_at: Optional[dt.datetime] = None
    wake_at: Optional[dt.datetime] = None
    event_type: Optional[str] = None
    failed_attempts: list[AttemptInfo] = Field(default_factory=list)


class InstanceSummary(BaseModel):
    id: str
    workflow: str
    status: Status
    created_at: dt.datetime
    ended_at: Optional[dt.datetime] = None


class InstanceStatus(BaseModel):
    id: str
    tenant: str
    workflow: str
    digest: str
    status: Status
    params: Any = None
    output: Any = None
    error: Optional[ErrorInfo] = None
    created_at: dt.datetime
    started_at: Optional[dt.datetime] = None
    ended_at: Optional[dt.datetime] = None
    wake_at: Optional[dt.datetime] = None
    waiting_for: Optional[str] = None
    steps: list[StepInfo] = Field(default_factory=list)
    next_steps_from: Optional[int] = Field(
        default=None, description="`steps` holds a page of the history that more steps follow: the `steps_from` of the next page.",
    )
    log_dropped_bytes: int = 0
    parent: Optional[str] = Field(default=None, description="The instance that started this one as a child workflow.")


class InstancePage(BaseModel):
    instances: list[InstanceSummary]
    next_cursor: Optional[str] = None


class LogLine(BaseModel):
    at: dt.datetime
    stream: str
    message: str


class LogPage(BaseModel):
    logs: list[LogLine]
    next_cursor: Optional[str] = Field(default=None, description="More lines follow: pass this as `cursor` for the next page.")


class UpgradeResult(BaseModel):
    """One instance's outcome of an upgrade: `compatible` (dry run), `upgraded`,
    `diverged` (with the first divergence; left untouched) or `busy` (running; retry)."""

    id: str
    from_digest: str
    to_digest: str
    result: Literal["compatible", "upgraded", "diverged", "busy"]
    divergence: Optional[str] = None


# An upgrade replays each instance it examines (milliseconds to a second each): a page
# bounds what one request (or call) does.
DEFAULT_UPGRADE_PAGE = 100
MAX_UPGRADE_PAGE = 1000


class UpgradeResults(BaseModel):
    results: list[UpgradeResult]
    next_cursor: Optional[str] = Field(default=None, description="More instances are left to examine: pass this as `cursor`.")


async def every_upgrade_page(page_from: Callable[[Optional[str]], Awaitable[UpgradeResults]]) -> list[UpgradeResult]:
    """The results of every page of an upgrade, `page_from(cursor)` following `next_cursor`."""
    results: list[UpgradeResult] = []
    cursor = None
    while True:
        page = await page_from(cursor)
        results += page.results
        if page.next_cursor is None:
            return results
        cursor = page.next_cursor


class ComponentInfo(BaseModel):
    digest: str
    size: int
    workflows: list[str]


def ts(ms: Optional[int]) -> Optional[dt.datetime]:
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)


def _json(text: Optional[str]) -> Any:
    return None if text is None else json.loads(text)


def step_info(e: JournalEntry) -> StepInfo:
    return StepInfo(
        seq=e.seq,
        kind=e.kind,
        name=e.name,
        status=e.status,
        attempts=e.attempts,
        output=_json(e.result),
        error=ErrorInfo(name=e.error_name, message=e.error_message or "") if e.error_name and e.status == "failed" else None,
        started_at=ts(e.started_at),
        ended_at=ts(e.ended_at),
        wake_at=ts(e.wake_at) if e.status in ("waiting", "retrying") or e.kind == "sleep" else None,
        event_type=e.event_type,
        failed_attempts=[
            AttemptInfo(attempt=h["attempt"], started_at=ts(h.get("started_at")), ended_at=ts(h.get("ended_at")), error=ErrorInfo(**h["error"]))
            for h in e.history
        ],
    )


def instance_status(
    row: InstanceRow, journal: list[JournalEntry], parent: Optional[str] = None, next_steps_from: Optional[int] = None
) -> InstanceStatus:
    return InstanceStatus(
        id=row.id,
        tenant=row.tenant,
        workflow=row.workflow,
        digest=row.digest,
        status=row.status,  # type: ignore[arg-type]
        params=_json(row.params),
        output=_json(row.output),
        error=ErrorInfo(name=row.error_name, message=row.error_message or "") if row.error_name else None,
        created_at=ts(row.created_at),  # type: ignore[arg-type]
        started_at=ts(row.started_at),
        ended_at=ts(row.ended_at),
        wake_at=ts(row.wake_at),
        waiting_for=row.waiting_for,
        steps=[step_info(e) for e in journal],
        next_steps_from=next_steps_from,
        log_dropped_bytes=row.log_dropped,
        parent=parent,
    )
