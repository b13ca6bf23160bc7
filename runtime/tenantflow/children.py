"""Host side of the `children` interface: child workflows bound to the parent's tenant.

Every call is a durable call of the parent: its answer (including an error) is journaled,
so a replay neither creates a child twice nor sees a different status. Children always
belong to the parent's tenant: the tenant comes from the invocation, never from the guest.
A parent waiting in `join` is woken by the scheduler when one of its children finishes.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from typing import Any, Callable, Optional

from . import journal as jn
from .errors import TenantflowError
from .executor import Invocation, Unwind, current_invocation, err, ok, record
from .limits import (
    check_event_type,
    check_instance_id,
    check_size,
    check_workflow_name,
    format_bytes,
    json_problem,
    utf8_size,
)
from .policy import quota_of

FINISHED = ("complete", "errored", "terminated")


class _CallError(Exception):
    """An error answer of a children call (journaled like a result)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name, self.message = name, message


def _check_json(text: str, what: str) -> None:
    """Text a guest hands over as JSON (its raw bindings need not encode it) must be one
    JSON value: it is journaled, and every reader of the instance decodes it."""
    problem = json_problem(text)
    if problem is not None:
        raise _CallError("InvalidInput", f"{what} not JSON: {problem}")


def _answer(compute: Callable[[], Any]) -> str:
    try:
        return json.dumps({"ok": compute()})
    except _CallError as exc:
        return json.dumps({"err": {"name": exc.name, "message": exc.message}})
    except TenantflowError as exc:
        return json.dumps({"err": {"name": type(exc).__name__, "message": str(exc)}})


def _decode(answer: str, tagged: bool, convert: Callable[[Any], Any] = lambda v: v) -> Any:
    data = json.loads(answer)
    if "err" in data:
        return err(data["err"]["name"], data["err"]["message"], tagged)
    return ok(convert(data["ok"]), tagged)


def _child_id(inv: Invocation, seq: int, index: int) -> str:
    digest = hashlib.sha256(f"{inv.row.tenant}\0{inv.row.id}\0{inv.generation}\0{seq}\0{index}".encode()).hexdigest()[:12]
    return f"{inv.row.id[:60]}-{digest}-{index}"


def _digest_for(conn: sqlite3.Connection, inv: Invocation, workflow: str) -> str:
    """A child runs the parent's code when that component defines the workflow (one
    consistent version), else the tenant's current deployment of it."""
    component = jn.component_query(inv.row.digest).run(conn)
    if component is not None and workflow in component[2]:
        return inv.row.digest
    current = jn.current_digest_query(inv.row.tenant, workflow).run(conn)
    if current is None:
        raise _CallError("UnknownWorkflow", f"tenant {inv.row.tenant!r} has no workflow {workflow!r}")
    return current


def _start(_: Any, name: str, specs: list[Any]) -> Any:
    inv = current_invocation()
    entry = inv.next_call("children", name)
    if entry is not None and entry.status == "done":
        return _decode(entry.result or "{}", tagged=False)
    seq, now = inv.seq - 1, inv.now()
    conn = inv.x.readers.sync()
    created: list[jn.NewInstance] = []

    def build() -> list[str]:
        limits = inv.x.limits
        if not specs:
            raise _CallError("InvalidInput", "start needs at least one child")
        if len(specs) > limits.max_children_per_call:
            raise _CallError("InvalidInput", f"start of {len(specs)} children: at most {limits.max_children_per_call} at once")
        started = jn.child_count_query(inv.row.pk).run(conn)
        if started + len(specs) > limits.max_children_per_instance:
            raise _CallError(
                "ChildLimitExceeded",
                f"instance {inv.row.id!r} has started {started} children; {len(specs)} more would pass its limit of {limits.max_children_per_instance}",
            )
        for index, spec in enumerate(specs):
            workflow = check_workflow_name(spec.workflow)
            params = spec.params
            check_size(params, inv.x.limits.max_params_bytes, f"params of child {index}")
            _check_json(params, f"params of child {index} are")
            given = spec.id
            child_id = check_instance_id(given) if given is not None else _child_id(inv, seq, index)
            created.append(jn.NewInstance(inv.row.tenant, child_id, workflow, _digest_for(conn, inv, workflow), params, None, now, inv.row.pk))
        return [c.id for c in created]

    answer = _answer(build)
    new_entry = jn.JournalEntry(seq=seq, kind="children", name=name, status="done", result=answer, started_at=now, ended_at=now)
    children = created if created and "ok" in json.loads(answer) else []
    quota = quota_of(inv.policy, inv.x.limits)
    pks, new_entry.result = inv.commit(jn.start_children(inv.row.pk, inv.generation, new_entry, children, quota))  # children and the entry together
    inv.journal.append(new_entry)
    inv.count_state(new_entry.result)
    for pk in pks:
        inv.x.wake(pk, inv.row.tenant)
    return _decode(new_entry.result, tagged=False)


def _child_rows(inv: Invocation, ids: list[str], check_outputs: Optional[Callable[[int], None]] = None) -> list[jn.InstanceRow]:
    """The children's rows; `check_outputs` hears the size of their outputs so far after
    each, so that it can stop the read before they are all in memory."""
    conn = inv.x.readers.sync()
    rows, outputs = [], 0
    for child_id in ids:
        row = jn.instance_query(inv.row.tenant, child_id).run(conn)
        if row is None:
            raise _CallError("InstanceNotFound", f"instance {child_id!r} not found")
        if check_outputs is not None and row.output is not None:
            outputs += utf8_size(row.output)
            check_outputs(outputs)
        rows.append(row)
    return rows


def _result_of(row: jn.InstanceRow) -> dict[str, Any]:
    if row.status == "complete":
        return {"complete": row.output or "null"}
    if row.status == "terminated":
        return {"failed": {"name": "Terminated", "message": f"child {row.id!r} was terminated"}}
    return {"failed": {"name": row.error_name or "Error", "message": row.error_message or ""}}


def _to_child_results(values: list[dict[str, Any]]) -> list[Any]:
    out = []
    for value in values:  # child-result is untagged: complete(json) is a str, failed a record
        out.append(value["complete"] if "complete" in value else record(name=value["failed"]["name"], message=value["failed"]["message"]))
    return out


def _join(_: Any, name: str, ids: list[str], timeout: Optional[int]) -> Any:
    inv = current_invocation()
    entry = inv.next_call("join", name)
    now = inv.now()
    if entry is not None and entry.status == "done":
        return _decode(entry.result or "{}", tagged=False, convert=_to_child_results)
    if entry is None:
        if timeout is not None:
            inv.check_wait(f"join {name!r}: its timeout", timeout)
        wake = now + timeout if timeout is not None else None
        entry = jn.JournalEntry(seq=inv.seq - 1, kind="join", name=name, status="waiting", wake_at=wake, started_at=now)
        inv.journal.append(entry)
    try:
        most = inv.x.limits.max_children_per_instance  # each id is a row read on every wake-up
        if len(ids) > most:
            raise _CallError("InvalidInput", f"join {name!r} of {len(ids)} instances: at most {most}, as many as an instance may start")
        rows = _child_rows(inv, list(ids), _room_for_results(inv, name))
    except _CallError as exc:
        answer = json.dumps({"err": {"name": exc.name, "message": exc.message}})
    else:
        if all(row.status in FINISHED for row in rows):
            answer = json.dumps({"ok": [_result_of(row) for row in rows]})
        elif entry.wake_at is not None and entry.wake_at <= now:
            pending = [row.id for row in rows if row.status not in FINISHED]
            answer = json.dumps({"err": {"name": "ChildTimeoutError", "message": f"children still running after the join timeout: {', '.join(pending)}"}})
        else:
            raise inv.suspend(entry, entry.wake_at, "children")
    entry.status, entry.result, entry.ended_at = "done", answer, now
    inv.count_state(answer)
    inv.commit(jn.record_entry(inv.row.pk, inv.generation, entry, now=now))
    return _decode(answer, tagged=False, convert=_to_child_results)


def _room_for_results(inv: Invocation, name: str) -> Callable[[int], None]:
    """A check of the children's outputs read so far against the room left in the
    instance's state budget: a join records them all, and 10,000 children of 1 MiB each
    would otherwise be read into host memory and journaled as one 10 GiB answer."""
    budget = inv.limits.max_state_bytes_per_instance
    recorded = inv.recorded_state()
    room = max(budget - recorded, 0)

    def check(size: int) -> None:
        if size > room:
            raise _CallError(
                "StateLimitExceeded",
                f"join {name!r}: the children's outputs add up to more than the {format_bytes(room)} left in the instance's "
                f"state budget ({format_bytes(recorded)} of {format_bytes(budget)} recorded)",
            )

    return check


def _status(_: Any, name: str, child_id: str) -> Any:
    inv = current_invocation()

    def compute() -> dict[str, Any]:
        row = _child_rows(inv, [child_id])[0]
        return {"status": row.status, "output": row.output, "error": {"name": row.error_name, "message": row.error_message or ""} if row.error_name else None}

    answer = inv.durable_call("child-status", name, lambda: _answer(compute))

    def convert(value: dict[str, Any]) -> Any:
        error = value["error"]
        return record(status=value["status"], output=value["output"], error=record(**error) if error else None)

    return _decode(answer, tagged=True, convert=convert)


def _send_event(_: Any, name: str, child_id: str, event_type: str, payload: str) -> Any:
    inv = current_invocation()

    def compute() -> None:
        check_event_type(event_type)
        check_size(payload, inv.x.limits.max_event_payload_bytes, "event payload")
        _check_json(payload, "event payload is")
        check_instance_id(child_id)
        try:
            limit = inv.x.limits.max_pending_events_per_instance
            sent = inv.x.writer.run(jn.send_event(inv.row.tenant, child_id, event_type, payload, inv.now(), limit))
        except TenantflowError as exc:
            raise _CallError(type(exc).__name__, str(exc)) from None
        inv.x.wake(sent.pk, sent.tenant)

    return _decode(inv.durable_call("child-event", name, lambda: _answer(compute)), tagged=False)


HOST_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "start": _start,
    "join": _join,
    "status": _status,
    "send-event": _send_event,
}

__all__ = ["HOST_FUNCTIONS", "Unwind"]
