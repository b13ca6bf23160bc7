"""Child workflows: `step.workflows` creates, awaits and signals instances of the same tenant.

Each call is durable: replays return what the first run saw and never create a child
twice. Children run concurrently, each in its own isolate.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence, Union

from ._durations import to_ms
from ._errors import WorkflowDefinitionError
from ._host import ChildResult, ChildSpec, Host, HostCallError

MAX_NAME = 256


class ChildWorkflowError(Exception):
    """A child workflow call failed (unknown workflow, missing instance, timeout...)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.error_name = name
        self.message = message


class ChildFailedError(Exception):
    """A child ended errored or terminated; `error_name`/`message` are the child's error."""

    def __init__(self, child_id: str, error_name: str, message: str) -> None:
        super().__init__(f"child {child_id!r} failed: {error_name}: {message}")
        self.child_id = child_id
        self.error_name = error_name
        self.message = message


@dataclass(frozen=True)
class ChildOutcome:
    id: str
    ok: bool
    output: Any = None
    error_name: str = ""
    error_message: str = ""

    def unwrap(self) -> Any:
        if not self.ok:
            raise ChildFailedError(self.id, self.error_name, self.error_message)
        return self.output


@dataclass(frozen=True)
class ChildStatus:
    status: str
    output: Any
    error: Optional[tuple[str, str]]


def _name(text: str) -> str:
    """Durable call names are at most 256 characters: long ones end in a digest."""
    if len(text) <= MAX_NAME:
        return text
    return text[: MAX_NAME - 13] + "~" + hashlib.sha256(text.encode()).hexdigest()[:12]


def _guard(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except HostCallError as exc:
        raise ChildWorkflowError(exc.name, exc.message) from None


class ChildHandle:
    def __init__(self, workflows: "Workflows", child_id: str) -> None:
        self._workflows = workflows
        self.id = child_id

    def __repr__(self) -> str:
        return f"ChildHandle({self.id!r})"

    def status(self, *, name: Optional[str] = None) -> ChildStatus:
        return self._workflows.status(self.id, name=name)

    def send_event(self, type: str, payload: Any = None, *, name: Optional[str] = None) -> None:
        self._workflows.send_event(self.id, type, payload, name=name)

    def result(self, *, timeout: Any = None, name: Optional[str] = None) -> Any:
        """Wait for this child and return its output (raises ChildFailedError if it failed)."""
        return self._workflows.join([self], timeout=timeout, name=name)[0].unwrap()


Spec = Union[str, tuple, dict]


class Workflows:
    """Create and await child workflows of this tenant (`step.workflows`)."""

    def __init__(self, host: Host) -> None:
        self._host = host

    @staticmethod
    def _spec(spec: Any) -> ChildSpec:
        if isinstance(spec, str):
            workflow, params, child_id = spec, None, None
        elif isinstance(spec, tuple):
            workflow, params, child_id = (tuple(spec) + (None, None))[:3]
        elif isinstance(spec, dict):
            unknown = set(spec) - {"workflow", "params", "id"}
            if unknown:
                raise WorkflowDefinitionError(f"unknown child spec keys: {sorted(unknown)}")
            workflow, params, child_id = spec.get("workflow"), spec.get("params"), spec.get("id")
        else:
            raise WorkflowDefinitionError(f"a child spec is a workflow name, a (workflow, params[, id]) tuple or a dict, not {type(spec).__name__}")
        if not isinstance(workflow, str):
            raise WorkflowDefinitionError("a child spec needs a workflow name")
        try:
            params_json = json.dumps(params, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise WorkflowDefinitionError(f"params of child {workflow!r} must be JSON-serializable: {exc}") from None
        return ChildSpec(workflow, params_json, child_id)

    def create(self, workflow: str, params: Any = None, *, id: Optional[str] = None, name: Optional[str] = None) -> ChildHandle:
        """Start one child; returns its handle at once."""
        return self.create_batch([(workflow, params, id)], name=name or _name(f"create {workflow}"))[0]

    def create_batch(self, specs: Sequence[Spec], *, name: Optional[str] = None) -> list[ChildHandle]:
        """Start several children atomically."""
        parsed = [self._spec(s) for s in specs]
        label = name or _name(f"create {len(parsed)} children: {', '.join(p.workflow for p in parsed)}")
        ids = _guard(self._host.start_children, label, parsed)
        return [ChildHandle(self, child_id) for child_id in ids]

    def get(self, child_id: str) -> ChildHandle:
        return ChildHandle(self, child_id)

    def join(self, children: Iterable[Union[ChildHandle, str]], *, timeout: Any = None, name: Optional[str] = None) -> list[ChildOutcome]:
        """Wait until every child has finished; one outcome per child, in order."""
        ids = [c.id if isinstance(c, ChildHandle) else c for c in children]
        timeout_ms = None if timeout is None else to_ms(timeout, "join timeout")
        results: list[ChildResult] = _guard(self._host.join_children, name or _name(f"join {', '.join(ids)}"), ids, timeout_ms)
        return [
            ChildOutcome(child_id, r.ok, json.loads(r.output_json) if r.ok and r.output_json else None, r.error_name, r.error_message)
            for child_id, r in zip(ids, results)
        ]

    def run(self, workflow: str, params: Any = None, *, id: Optional[str] = None, timeout: Any = None) -> Any:
        """Start a child and return its output (raises ChildFailedError if it failed)."""
        return self.create(workflow, params, id=id).result(timeout=timeout)

    def run_all(self, specs: Sequence[Spec], *, timeout: Any = None) -> list[Any]:
        """Fan out: start all children, await them all, return their outputs in order."""
        handles = self.create_batch(specs)
        return [outcome.unwrap() for outcome in self.join(handles, timeout=timeout)]

    def status(self, child_id: str, *, name: Optional[str] = None) -> ChildStatus:
        state = _guard(self._host.child_status, name or _name(f"status {child_id}"), child_id)
        return ChildStatus(state.status, json.loads(state.output_json) if state.output_json else None, state.error)

    def send_event(self, child_id: str, type: str, payload: Any = None, *, name: Optional[str] = None) -> None:
        try:
            payload_json = json.dumps(payload, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise WorkflowDefinitionError(f"event payload must be JSON-serializable: {exc}") from None
        _guard(self._host.child_send_event, name or _name(f"event {type} to {child_id}"), child_id, type, payload_json)
