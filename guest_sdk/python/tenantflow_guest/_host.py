"""The durable primitives as plain Python calls.

`Host` is what the SDK needs from the engine; `WitHost` implements it with the
component's imports (the generated `wit_world` bindings exist only inside a component).
Keeping the SDK on this narrow protocol lets it be exercised without Wasm too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Union


@dataclass(frozen=True)
class StepOptions:
    retry_limit: int
    retry_delay_ms: int
    backoff: str  # constant | linear | exponential
    timeout_ms: int


# Step states are made per step: slotted, not frozen (frozen __init__ goes through
# object.__setattr__ per field). Nothing changes them after construction.
@dataclass(slots=True)
class Done:
    result_json: str


class Value:
    """A step result the guest has as a value already: answered from the recorded prefix,
    or a body's scalar result the host recorded as it was sent."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


@dataclass(slots=True)
class Failed:
    name: str
    message: str


@dataclass(slots=True)
class Execute:
    attempt: int
    # None: not fetched yet (`start-step` leaves it out; `Host.idempotency_key` has it).
    idempotency_key: Optional[str]


StepState = Union[Done, Value, Failed, Execute]


@dataclass(frozen=True)
class ReceivedEvent:
    event_type: str
    payload_json: str
    timestamp_ms: int


@dataclass(frozen=True)
class ChildSpec:
    workflow: str
    params_json: str
    id: Optional[str]


@dataclass(frozen=True)
class ChildResult:
    """How a child ended: `ok` with its output (JSON), or its error."""

    ok: bool
    output_json: Optional[str] = None
    error_name: str = ""
    error_message: str = ""


@dataclass(frozen=True)
class ChildState:
    status: str
    output_json: Optional[str]
    error: Optional[tuple[str, str]]


class HostCallError(Exception):
    """A host call answered with an error (denied, not found, invalid)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


class Host(Protocol):
    def begin_step(self, name: str, options: StepOptions) -> StepState: ...

    def idempotency_key(self) -> str: ...

    def end_attempt_ok(self, name: str, result_json: str) -> StepState: ...

    def end_attempt_err(self, name: str, error_name: str, message: str, retryable: bool) -> StepState: ...

    def sleep(self, name: str, duration_ms: int) -> None: ...

    def sleep_until(self, name: str, until_ms: int) -> None: ...

    def wait_for_event(self, name: str, event_type: str, timeout_ms: Optional[int]) -> Optional[ReceivedEvent]: ...

    def log(self, level: str, message: str) -> None: ...

    def start_children(self, name: str, specs: list[ChildSpec]) -> list[str]: ...

    def join_children(self, name: str, ids: list[str], timeout_ms: Optional[int]) -> list[ChildResult]: ...

    def child_status(self, name: str, child_id: str) -> ChildState: ...

    def child_send_event(self, name: str, child_id: str, event_type: str, payload_json: str) -> None: ...


class WitHost:
    """`Host` over the component's `tenantflow:workflow/durable` imports."""

    def __init__(self) -> None:
        from componentize_py_types import Err
        from wit_world.imports import children, durable, types  # only importable inside a component

        self._durable = durable
        self._children = children
        self._types = types
        self._Err = Err
        # What each step uses, looked up once.
        self._start_step, self._end_attempt_ok = durable.start_step, durable.end_attempt_ok
        self._started = types.StepStart_Execute
        self._backoff = {
            "constant": types.Backoff.CONSTANT,
            "linear": types.Backoff.LINEAR,
            "exponential": types.Backoff.EXPONENTIAL,
        }
        # `start-step`'s arguments after the name, per options object (steps in loops reuse one).
        self._configs: dict[StepOptions, tuple[int, int, Any, int]] = {}
        self._configs_by_id: dict[int, tuple[StepOptions, tuple[int, int, Any, int]]] = {}
        self._prefix: Optional[list[Any]] = None
        self._position = 0
        self._levels = {
            "debug": types.LogLevel.DEBUG,
            "info": types.LogLevel.INFO,
            "warning": types.LogLevel.WARNING,
            "error": types.LogLevel.ERROR,
        }

    # ---- local replay ------------------------------------------------------------------
    # A replay asks the host once for the recorded step results (`recorded-steps`) and
    # answers those steps itself while their names match, then tells the host how far it
    # got (`replayed`) before anything else reaches the host: the host's sequence numbers
    # stay exact, and a diverging call is still checked (non-determinism) by the host.
    def start_run(self) -> None:
        """Called as `run` begins: fetch what the journal records for this instance."""
        self._prefix = json.loads(self._durable.recorded_steps()) or None
        self._position = 0

    def sync(self) -> None:
        """End local replay: the host learns how many steps the guest answered itself."""
        if self._prefix is not None:
            self._prefix = None
            if self._position:
                self._durable.replayed(self._position)

    def _replay(self, prefix: list[Any], name: str) -> Optional[StepState]:
        position = self._position
        record = prefix[position]
        if record[0] != name:  # diverged: the host checks (and reports) this call
            self.sync()
            return None
        self._position = position + 1
        if self._position == len(prefix):  # new code runs next: the host must know
            self.sync()
        if record[1]:
            return Value(record[2])
        return Failed(record[2][0], record[2][1])

    def _state(self, state: object) -> StepState:
        t = self._types
        if isinstance(state, (t.StepStart_Done, t.StepState_Done)):
            return Done(state.value)
        if isinstance(state, (t.StepStart_Failed, t.StepState_Failed)):
            return Failed(state.value.name, state.value.message)
        if isinstance(state, t.StepState_Execute):  # start-step's execute: `begin_step` takes it first
            return Execute(state.value.attempt, state.value.idempotency_key)
        raise AssertionError(f"unknown step state {state!r}")

    def begin_step(self, name: str, options: StepOptions) -> StepState:
        if self._prefix is not None:
            replayed = self._replay(self._prefix, name)
            if replayed is not None:
                return replayed
        cached = self._configs_by_id.get(id(options))
        if cached is not None and cached[0] is options:
            config = cached[1]
        else:
            config = self._configs.get(options) or (
                options.retry_limit, options.retry_delay_ms, self._backoff[options.backoff], options.timeout_ms
            )
            self._configs[options] = config
            self._configs_by_id[id(options)] = (options, config)
        state = self._start_step(name, *config)
        if type(state) is self._started:  # the hot path: a new step to run
            return Execute(state.value, None)
        return self._state(state)

    def idempotency_key(self) -> str:
        return self._durable.idempotency_key()

    def end_attempt_ok(self, name: str, result_json: str) -> StepState:
        failed = self._end_attempt_ok(name, result_json)
        if failed is None:  # recorded as sent
            return Done(result_json)
        return Failed(failed.name, failed.message)

    def end_attempt_err(self, name: str, error_name: str, message: str, retryable: bool) -> StepState:
        t = self._types
        outcome = t.AttemptResult_Err(t.AttemptError(error_name, message, retryable))
        return self._state(self._durable.end_attempt(name, outcome))

    def sleep(self, name: str, duration_ms: int) -> None:
        self.sync()
        self._durable.sleep(name, duration_ms)

    def sleep_until(self, name: str, until_ms: int) -> None:
        self.sync()
        self._durable.sleep_until(name, until_ms)

    def wait_for_event(self, name: str, event_type: str, timeout_ms: Optional[int]) -> Optional[ReceivedEvent]:
        self.sync()
        result = self._durable.wait_for_event(name, event_type, timeout_ms)
        if isinstance(result, self._types.WaitResult_Received):
            ev = result.value
            return ReceivedEvent(ev.event_type, ev.payload, ev.timestamp)
        return None

    def log(self, level: str, message: str) -> None:
        if self._prefix is not None:
            return  # replaying recorded steps: this line was logged when the code first ran
        self._durable.log(self._levels[level], message)

    def _call(self, fn: Any, *args: Any) -> Any:
        self.sync()
        try:
            return fn(*args)
        except self._Err as exc:
            raise HostCallError(exc.value.name, exc.value.message) from None

    def start_children(self, name: str, specs: list[ChildSpec]) -> list[str]:
        wit_specs = [self._children.ChildSpec(s.workflow, s.params_json, s.id) for s in specs]
        return list(self._call(self._children.start, name, wit_specs))

    def join_children(self, name: str, ids: list[str], timeout_ms: Optional[int]) -> list[ChildResult]:
        results = []
        for r in self._call(self._children.join, name, ids, timeout_ms):
            if isinstance(r, self._children.ChildResult_Complete):
                results.append(ChildResult(True, r.value))
            else:
                results.append(ChildResult(False, None, r.value.name, r.value.message))
        return results

    def child_status(self, name: str, child_id: str) -> ChildState:
        st = self._call(self._children.status, name, child_id)
        return ChildState(st.status, st.output, (st.error.name, st.error.message) if st.error else None)

    def child_send_event(self, name: str, child_id: str, event_type: str, payload_json: str) -> None:
        self._call(self._children.send_event, name, child_id, event_type, payload_json)
