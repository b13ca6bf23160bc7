"""The `step` object tenant workflows call: durable steps, sleeps and event waits."""

from __future__ import annotations

import datetime as _dt
import inspect
import json
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ._children import Workflows
from ._durations import from_epoch_ms, to_epoch_ms, to_ms
from ._errors import EventTimeoutError, NonRetryableError, StepFailedError, WorkflowDefinitionError
from ._host import Done, Execute, Failed, Host, StepOptions, StepState, Value

# Cloudflare Workflows' defaults.
DEFAULT_RETRY_LIMIT = 5
DEFAULT_RETRY_DELAY = "10 seconds"
DEFAULT_BACKOFF = "exponential"
DEFAULT_TIMEOUT = "10 minutes"
_BACKOFFS = ("constant", "linear", "exponential")


@dataclass(frozen=True)
class StepContext:
    """Passed to a step body that takes an argument."""

    attempt: int
    step_name: str
    idempotency_key: str


@dataclass(frozen=True)
class Event:
    """An event delivered to `wait_for_event`."""

    type: str
    payload: Any
    timestamp: _dt.datetime

    def __getitem__(self, key: str) -> Any:  # Cloudflare-style event["payload"]
        return getattr(self, key)


@dataclass(frozen=True)
class WorkflowEvent:
    """What `run` receives: the params (`payload`) and the instance's identity."""

    payload: Any
    instance_id: str
    workflow: str
    timestamp: _dt.datetime

    def __getitem__(self, key: str) -> Any:
        return getattr(self, {"instanceId": "instance_id"}.get(key, key))


def step_options(retries: Optional[dict[str, Any]], timeout: Any, config: Optional[dict[str, Any]]) -> StepOptions:
    """Merge `retries=`/`timeout=` and a Cloudflare-style `config=` over the defaults."""
    if retries is None and timeout is None and config is None:
        return _DEFAULT_OPTIONS  # the common case: parsed at build time, part of the snapshot
    return _step_options(retries, timeout, config)


def _step_options(retries: Optional[dict[str, Any]], timeout: Any, config: Optional[dict[str, Any]]) -> StepOptions:
    if config is not None:
        if not isinstance(config, dict):
            raise WorkflowDefinitionError("step config must be a dict like {'retries': {...}, 'timeout': '30 seconds'}")
        unknown = set(config) - {"retries", "timeout"}
        if unknown:
            raise WorkflowDefinitionError(f"unknown step config keys: {sorted(unknown)}")
        retries = retries if retries is not None else config.get("retries")
        timeout = timeout if timeout is not None else config.get("timeout")
    retries = dict(retries or {})
    unknown = set(retries) - {"limit", "delay", "backoff"}
    if unknown:
        raise WorkflowDefinitionError(f"unknown retries keys: {sorted(unknown)} (expected limit, delay, backoff)")
    limit = retries.get("limit", DEFAULT_RETRY_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise WorkflowDefinitionError(f"retries.limit must be a non-negative integer, got {limit!r}")
    backoff = retries.get("backoff", DEFAULT_BACKOFF)
    if backoff not in _BACKOFFS:
        raise WorkflowDefinitionError(f"retries.backoff must be one of {', '.join(_BACKOFFS)}, got {backoff!r}")
    return StepOptions(
        retry_limit=limit,
        retry_delay_ms=to_ms(retries.get("delay", DEFAULT_RETRY_DELAY), "retries.delay"),
        backoff=backoff,
        timeout_ms=to_ms(DEFAULT_TIMEOUT if timeout is None else timeout, "step timeout"),
    )


_NO_CONTEXT, _POSITIONAL, _KEYWORD = 0, 1, 2
_context_style_by_code: dict[Any, int] = {}


def _context_style(fn: Callable[..., Any]) -> int:
    code = getattr(fn, "__code__", None)
    if code is not None and not hasattr(fn, "__self__") and isinstance(getattr(fn, "__defaults__", None), (tuple, type(None))):
        # Plain functions and lambdas: read the code object (inspect.signature is slow).
        names = code.co_varnames[: code.co_argcount]
        kwonly = code.co_varnames[code.co_argcount : code.co_argcount + code.co_kwonlyargcount]
        required = code.co_argcount - len(fn.__defaults__ or ())  # type: ignore[attr-defined]
        if "ctx" in kwonly:
            return _KEYWORD
        return _POSITIONAL if required > 0 or "ctx" in names else _NO_CONTEXT
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return _NO_CONTEXT
    if any(p.name == "ctx" and p.kind == p.KEYWORD_ONLY for p in params):
        return _KEYWORD
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind in positional and (p.name == "ctx" or p.default is p.empty) for p in params):
        return _POSITIONAL
    return _NO_CONTEXT


def _context_style_of(fn: Callable[..., Any]) -> int:
    """How a body takes the StepContext: not at all, as a required positional argument or
    one named `ctx`, or as keyword-only `ctx`."""
    code = getattr(fn, "__code__", None)
    # A loop creates a new lambda per iteration with one code object: inspect it once.
    style = _context_style_by_code.get(code) if code is not None else None
    if style is None:
        style = _context_style(fn)
        if code is not None:  # parameter kinds and which have defaults are fixed per code object
            _context_style_by_code[code] = style
    return style


# Never awaitable: a body's result of one of these types skips `inspect.isawaitable`.
_PLAIN = frozenset({int, str, float, bool, type(None), dict, list, tuple})
# Immutable, and given back equal and of the same type by their JSON (finite floats: the
# encoder refuses the others): a step can return the body's value instead of parsing it.
_SCALARS = frozenset({int, str, float, bool, type(None)})


def drive(awaitable: Any) -> Any:
    """Run a coroutine whose awaits all complete at once (tenantflow step methods)."""
    coro = awaitable.__await__() if not inspect.iscoroutine(awaitable) else awaitable
    hint = "use step.sleep / step.wait_for_event instead of asyncio primitives"
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return stop.value
    except RuntimeError as exc:
        if "event loop" not in str(exc):
            raise
        raise WorkflowDefinitionError(f"the workflow used asyncio ({exc}); there is no event loop in a workflow: {hint}") from None
    coro.close()
    raise WorkflowDefinitionError(f"the workflow awaited something other than a tenantflow step method ({yielded!r}); {hint}")


class Step:
    """Durable primitives for synchronous workflows. Every call is journaled by the host."""

    def __init__(self, host: Host) -> None:
        self._host = host
        self.workflows = Workflows(host)

    def do(
        self,
        name: Any = None,
        fn: Optional[Callable[..., Any]] = None,
        *,
        retries: Optional[dict[str, Any]] = None,
        timeout: Any = None,
        config: Optional[dict[str, Any]] = None,
    ) -> Any:
        """Run `fn` as a durable step and return its (JSON) result.

        Also a decorator: `@step.do("name")` turns a function into a step you call
        (`result = my_step()`); `@step.do` alone names the step after the function.
        """
        if fn is not None and type(name) is str and retries is None and timeout is None and config is None:
            return self._run_step(name, fn, _DEFAULT_OPTIONS)  # the common form, checked first
        if callable(name) and fn is None:  # bare @step.do
            return self._decorate(name.__name__, name, retries, timeout, config)
        if fn is None:
            return lambda f: self._decorate(name if name is not None else f.__name__, f, retries, timeout, config)
        if not isinstance(name, str):
            raise WorkflowDefinitionError(f"step name must be a string, got {type(name).__name__}")
        return self._run_step(name, fn, step_options(retries, timeout, config))

    def _decorate(self, name: str, fn: Callable[..., Any], retries: Any, timeout: Any, config: Any) -> "StepFunction":
        return StepFunction(self, name, fn, step_options(retries, timeout, config))

    def _run_step(self, name: str, fn: Callable[..., Any], options: StepOptions) -> Any:
        state: StepState = self._host.begin_step(name, options)
        if type(state) is Value:  # the replay fast path: answered in the guest
            return state.value
        if isinstance(state, Execute):  # not answered from the journal: run the body
            style = _context_style_of(fn)
            while isinstance(state, Execute):
                state = self._attempt(name, fn, style, state)
            if type(state) is Value:  # a scalar, recorded as the body returned it
                return state.value
        if isinstance(state, Done):
            return json.loads(state.result_json)
        assert isinstance(state, Failed)
        raise (NonRetryableError(state.message) if state.name == "NonRetryableError" else StepFailedError(name, state.name, state.message))

    def _context(self, name: str, state: Execute) -> StepContext:
        key = state.idempotency_key
        if key is None:  # only bodies that take a context ask the host for it
            key = self._host.idempotency_key()
        return StepContext(state.attempt, name, key)

    def _attempt(self, name: str, fn: Callable[..., Any], style: int, state: Execute) -> StepState:
        try:
            if style == _NO_CONTEXT:
                value = fn()
            elif style == _POSITIONAL:
                value = fn(self._context(name, state))
            else:
                value = fn(ctx=self._context(name, state))
            if type(value) not in _PLAIN and inspect.isawaitable(value):
                value = drive(value)
        except NonRetryableError as exc:
            return self._host.end_attempt_err(name, type(exc).__name__, str(exc), False)
        except Exception as exc:  # any ordinary error is a failed, retryable attempt
            name_of = exc.error_name if isinstance(exc, StepFailedError) else type(exc).__name__
            return self._host.end_attempt_err(name, name_of, str(exc), True)
        try:
            encoded = _encode(value)
        except (TypeError, ValueError) as exc:
            # Retrying cannot make a value serializable: fail the step for good.
            return self._host.end_attempt_err(name, "TypeError", f"step {name!r} returned a value that is not JSON-serializable: {exc}", False)
        answer = self._host.end_attempt_ok(name, encoded)
        if type(value) in _SCALARS and type(answer) is Done and answer.result_json == encoded:
            return Value(value)
        return answer

    def sleep(self, name: str, duration: Any) -> None:
        """Sleep durably; the instance holds no resources while it sleeps."""
        self._host.sleep(name, to_ms(duration, f"duration of sleep {name!r}"))

    def sleep_until(self, name: str, timestamp: Any) -> None:
        """Sleep until a datetime (naive = UTC), ISO-8601 string, or epoch seconds."""
        self._host.sleep_until(name, to_epoch_ms(timestamp))

    def wait_for_event(self, name: str, type: str, timeout: Any = None) -> Event:
        """Wait for the next event of `type`; raises EventTimeoutError after `timeout` (default 24 hours)."""
        timeout_ms = None if timeout is None else to_ms(timeout, f"timeout of wait {name!r}")
        received = self._host.wait_for_event(name, type, timeout_ms)
        if received is None:
            raise EventTimeoutError(name, type)
        return Event(received.event_type, json.loads(received.payload_json), from_epoch_ms(received.timestamp_ms))

    def log(self, message: str, level: str = "info") -> None:
        """Write a line to the instance's log (not journaled)."""
        self._host.log(level, str(message))


class StepFunction:
    """A step defined with the decorator form; call it to run the step."""

    def __init__(self, step: Step, name: str, fn: Callable[..., Any], options: StepOptions) -> None:
        self._step, self.name, self._fn, self._options = step, name, fn, options

    def __call__(self) -> Any:
        return self._step._run_step(self.name, self._fn, self._options)


class _Ready:
    """An awaitable that is already complete (async workflows await step methods)."""

    __slots__ = ("_value",)

    def __init__(self, value: Any) -> None:
        self._value = value

    def __await__(self) -> Any:
        return self._value
        yield  # pragma: no cover - makes this a generator


class AsyncStep:
    """`step` for `async def run`: the same primitives, awaitable (Cloudflare Python style)."""

    def __init__(self, step: Step) -> None:
        self._step = step
        self.workflows = step.workflows  # synchronous: results are ready when returned

    def do(self, name: Any = None, fn: Optional[Callable[..., Any]] = None, **kwargs: Any) -> Any:
        if fn is not None:
            return _Ready(self._step.do(name, fn, **kwargs))
        if callable(name):  # bare @step.do
            return _AsyncStepFunction(self._step.do(name, **kwargs))
        factory = self._step.do(name, **kwargs)
        return lambda f: _AsyncStepFunction(factory(f))

    def sleep(self, name: str, duration: Any) -> _Ready:
        return _Ready(self._step.sleep(name, duration))

    def sleep_until(self, name: str, timestamp: Any) -> _Ready:
        return _Ready(self._step.sleep_until(name, timestamp))

    def wait_for_event(self, name: str, type: str, timeout: Any = None) -> _Ready:
        return _Ready(self._step.wait_for_event(name, type, timeout))

    def log(self, message: str, level: str = "info") -> None:
        self._step.log(message, level)


class _AsyncStepFunction:
    def __init__(self, fn: StepFunction) -> None:
        self._fn = fn
        self.name = fn.name

    def __call__(self) -> _Ready:
        return _Ready(self._fn())


_DEFAULT_OPTIONS = _step_options(None, None, None)
# json.dumps(..., allow_nan=False) builds a new encoder per call: one is enough (hot path).
_ENCODER = json.JSONEncoder(allow_nan=False)
_CONSTANTS = {None: "null", True: "true", False: "false"}


def _encode(value: Any) -> str:
    """A step result's JSON text. `JSONEncoder.encode` sets up an iterator per call, which
    costs more than the step itself for an int or a constant: those are written here, as
    the encoder writes them."""
    if type(value) is int:
        return int.__repr__(value)
    if value is None or type(value) is bool:
        return _CONSTANTS[value]
    return _ENCODER.encode(value)
