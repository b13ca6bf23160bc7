"""Glue between a tenant module and the component's exports (`workflows`, `run`).

The compiler generates an app module that calls `build_world(tenant_module)` at build
time; the returned class is what componentize-py exports as `WitWorld`.
"""

from __future__ import annotations

import inspect
import json
import sys
import traceback
from types import ModuleType
from typing import Any, Callable

from ._durations import from_epoch_ms
from ._entrypoint import WorkflowEntrypoint, workflow_name
from ._errors import NoWorkflowsError, StepFailedError, WorkflowDefinitionError
from ._host import Done, Execute, Failed, Host, WitHost
from ._step import AsyncStep, Step, WorkflowEvent, drive


def find_workflows(module: ModuleType) -> dict[str, type[WorkflowEntrypoint]]:
    """Every WorkflowEntrypoint subclass defined (or imported) in the module, by name."""
    found: dict[str, type[WorkflowEntrypoint]] = {}
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, WorkflowEntrypoint) and value is not WorkflowEntrypoint:
            name = workflow_name(value)
            if name in found and found[name] is not value:
                raise WorkflowDefinitionError(f"two workflow classes are named {name!r}: {found[name].__qualname__} and {value.__qualname__}")
            found[name] = value
    if not found:
        raise NoWorkflowsError(f"module {module.__name__!r} defines no WorkflowEntrypoint subclass")
    return found


def run_workflow(cls: type[WorkflowEntrypoint], host: Callable[[], Host], payload_json: str, instance_id: str, workflow: str, created_at_ms: int) -> tuple[bool, Any]:
    """Run one workflow from the top. Returns (True, result_json) or (False, (name, message))."""
    try:
        event = WorkflowEvent(json.loads(payload_json), instance_id, workflow, from_epoch_ms(created_at_ms))
        instance = cls()
        step = Step(host())
        if inspect.iscoroutinefunction(cls.run):
            result = drive(instance.run(event, AsyncStep(step)))
        else:
            result = instance.run(event, step)
            if inspect.isawaitable(result):
                result = drive(result)
        try:
            return True, json.dumps(result, allow_nan=False)
        except (TypeError, ValueError) as exc:
            return False, ("TypeError", f"workflow {workflow!r} returned a value that is not JSON-serializable: {exc}")
    except StepFailedError as exc:
        return False, (exc.error_name, exc.message)
    except RecursionError as exc:
        return False, ("RecursionError", str(exc))
    except MemoryError as exc:
        # The traceback keeps the frames (and what they hoarded) alive: drop it before
        # anything else allocates. The host reports this as the memory limit.
        exc.__traceback__ = None
        return False, ("MemoryError", str(exc))
    except BaseException as exc:  # noqa: BLE001 - an uncaught guest error must never abort the instance
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            return False, (type(exc).__name__, f"workflow {workflow!r} raised {type(exc).__name__}({exc})")
        # The traceback goes to stderr (the instance's log); the outcome keeps the message.
        traceback.print_exception(exc, file=sys.stderr)
        return False, (type(exc).__name__, str(exc) or type(exc).__name__)


class _RehearsalHost:
    """A host in guest memory, for `rehearse`: runs every step, records nothing."""

    def __init__(self) -> None:
        self._seq = 0

    def begin_step(self, name: str, options: Any) -> Any:
        self._seq += 1
        return Execute(1, None)

    def idempotency_key(self) -> str:
        return f"rehearsal-{self._seq}"

    def end_attempt_ok(self, name: str, result_json: str) -> Any:
        return Done(result_json)

    def end_attempt_err(self, name: str, error_name: str, message: str, retryable: bool) -> Any:
        return Failed(error_name, message)

    def log(self, level: str, message: str) -> None:
        pass


class _Rehearsal(WorkflowEntrypoint):
    def run(self, event: Any, step: Any) -> Any:
        total = 0
        for i in range(event.payload["n"]):
            total += step.do("rehearse", lambda i=i: {"i": i})["i"]
            total += step.do("scalar", lambda ctx: ctx.attempt)  # the other result and body paths
        step.log(str(total))
        return {"total": total}


def rehearse(rounds: int = 40) -> None:
    """Run the SDK's own code paths (not the tenant's) before the snapshot is taken.

    componentize-py snapshots the interpreter after the build-time import, and every
    instance starts from that snapshot. A snapshot whose SDK code has run is warm: its
    bytecode already specialised, lazily built caches and method lookups filled in. The
    first pass of every instance is then that much shorter. Nothing of this reaches a
    workflow: the rehearsal uses its own class, a host in guest memory, and no imports."""
    for _ in range(rounds):
        run_workflow(_Rehearsal, _RehearsalHost, '{"n": 3}', "rehearsal", "rehearsal", 0)


def build_world(module: ModuleType) -> type:
    """The `WitWorld` export class for a tenant module (validated at build time)."""
    workflows = find_workflows(module)
    # componentize-py snapshots the interpreter after this import-time call: modules the
    # guest needs later (the generated bindings included) must be imported now.
    import componentize_py_types  # noqa: F401
    from wit_world.imports import children, durable, types  # noqa: F401

    from ._stdio import install

    install()  # long prints must reach the host whole

    rehearse()
    host = WitHost()  # built now, so every instance starts from it in the snapshot
    from . import _capabilities

    if isinstance(_capabilities._backend, _capabilities._WitBackend):
        _capabilities._WitBackend.before_call = staticmethod(host.sync)

    class WitWorld:
        def workflows(self) -> list[str]:
            return sorted(workflows)

        def run(self, workflow: str, event: Any) -> Any:
            cls = workflows.get(workflow)
            if cls is None:
                known = ", ".join(sorted(workflows))
                return types.Outcome_Failed(types.ErrorInfo("UnknownWorkflow", f"this component defines no workflow {workflow!r} (it defines: {known})"))
            host.start_run()
            ok, value = run_workflow(cls, lambda: host, event.payload, event.instance_id, workflow, event.created_at)
            host.sync()  # the host learns how much was replayed (upgrade checks count it)
            if ok:
                return types.Outcome_Complete(value)
            return types.Outcome_Failed(types.ErrorInfo(*value))

    return WitWorld
