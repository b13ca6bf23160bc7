"""The durable primitives as plain Python calls.

`Host` is what the SDK needs from the engine; `WitHost` implements it with the
component's imports (the generated `wit_world` bindings exist only inside a component).
Keeping the SDK on this narrow protocol lets it be exercised without Wasm too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Union


@dataclass(frozen=True)
class StepOptions:
    retry_limit: int
    retry_delay_ms: int
    backoff: str  # constant | linear | exponential
    timeout_ms: int


@dataclass(frozen=True)
class Done:
    result_json: str


@dataclass(frozen=True)
class Failed:
    name: str
    message: str


@dataclass(frozen=True)
class Execute:
    attempt: int
    idempotency_key: str


StepState = Union[Done, Failed, Execute]


@dataclass(frozen=True)
class ReceivedEvent:
    event_type: str
    payload_json: str
    timestamp_ms: int


class Host(Protocol):
    def begin_step(self, name: str, options: StepOptions) -> StepState: ...

    def end_attempt_ok(self, name: str, result_json: str) -> StepState: ...

    def end_attempt_err(self, name: str, error_name: str, message: str, retryable: bool) -> StepState: ...

    def sleep(self, name: str, duration_ms: int) -> None: ...

    def sleep_until(self, name: str, until_ms: int) -> None: ...

    def wait_for_event(self, name: str, event_type: str, timeout_ms: Optional[int]) -> Optional[ReceivedEvent]: ...

    def log(self, level: str, message: str) -> None: ...


class WitHost:
    """`Host` over the component's `tenantflow:workflow/durable` imports."""

    def __init__(self) -> None:
        from wit_world.imports import durable, types  # only importable inside a component

        self._durable = durable
        self._types = types
        self._backoff = {
            "constant": types.Backoff.CONSTANT,
            "linear": types.Backoff.LINEAR,
            "exponential": types.Backoff.EXPONENTIAL,
        }
        self._levels = {
            "debug": types.LogLevel.DEBUG,
            "info": types.LogLevel.INFO,
            "warning": types.LogLevel.WARNING,
            "error": types.LogLevel.ERROR,
        }

    def _state(self, state: object) -> StepState:
        t = self._types
        if isinstance(state, t.StepState_Done):
            return Done(state.value)
        if isinstance(state, t.StepState_Failed):
            return Failed(state.value.name, state.value.message)
        if isinstance(state, t.StepState_Execute):
            return Execute(state.value.attempt, state.value.idempotency_key)
        raise AssertionError(f"unknown step state {state!r}")

    def begin_step(self, name: str, options: StepOptions) -> StepState:
        t = self._types
        config = t.StepConfig(
            t.RetryPolicy(options.retry_limit, options.retry_delay_ms, self._backoff[options.backoff]),
            options.timeout_ms,
        )
        return self._state(self._durable.begin_step(name, config))

    def end_attempt_ok(self, name: str, result_json: str) -> StepState:
        return self._state(self._durable.end_attempt(name, self._types.AttemptResult_Ok(result_json)))

    def end_attempt_err(self, name: str, error_name: str, message: str, retryable: bool) -> StepState:
        t = self._types
        outcome = t.AttemptResult_Err(t.AttemptError(error_name, message, retryable))
        return self._state(self._durable.end_attempt(name, outcome))

    def sleep(self, name: str, duration_ms: int) -> None:
        self._durable.sleep(name, duration_ms)

    def sleep_until(self, name: str, until_ms: int) -> None:
        self._durable.sleep_until(name, until_ms)

    def wait_for_event(self, name: str, event_type: str, timeout_ms: Optional[int]) -> Optional[ReceivedEvent]:
        result = self._durable.wait_for_event(name, event_type, timeout_ms)
        if isinstance(result, self._types.WaitResult_Received):
            ev = result.value
            return ReceivedEvent(ev.event_type, ev.payload, ev.timestamp)
        return None

    def log(self, level: str, message: str) -> None:
        self._durable.log(self._levels[level], message)
