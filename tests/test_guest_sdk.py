"""The guest SDK's pure-Python logic, against a scripted host (no Wasm needed)."""

from __future__ import annotations

import datetime as dt
import json
import sys
from enum import IntEnum
from typing import Any, Optional

import pytest
from enginekit import REPO

sys.path.insert(0, str(REPO / "guest_sdk" / "python"))

from tenantflow_guest import (  # noqa: E402
    EventTimeoutError,
    NonRetryableError,
    StepFailedError,
    WorkflowDefinitionError,
    WorkflowEntrypoint,
)
from tenantflow_guest._durations import to_epoch_ms, to_ms  # noqa: E402
from tenantflow_guest._host import Done, Execute, Failed, ReceivedEvent, StepOptions, StepState  # noqa: E402
from tenantflow_guest._runtime import find_workflows, run_workflow  # noqa: E402
from tenantflow_guest._step import _encode, step_options  # noqa: E402


class ScriptedHost:
    """Runs every step body once, records what it was told."""

    def __init__(self, events: Optional[list[ReceivedEvent]] = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.events = events or []
        self.running = ""

    def begin_step(self, name: str, options: StepOptions) -> StepState:
        self.calls.append(("begin", name, options))
        self.running = name
        return Execute(1, None)  # as start-step answers: the key only when asked

    def idempotency_key(self) -> str:
        self.calls.append(("key", self.running))
        return f"key-{self.running}"

    def end_attempt_ok(self, name: str, result_json: str) -> StepState:
        self.calls.append(("ok", name, result_json))
        return Done(result_json)

    def end_attempt_err(self, name: str, error_name: str, message: str, retryable: bool) -> StepState:
        self.calls.append(("err", name, error_name, message, retryable))
        return Failed(error_name, message)

    def sleep(self, name: str, duration_ms: int) -> None:
        self.calls.append(("sleep", name, duration_ms))

    def sleep_until(self, name: str, until_ms: int) -> None:
        self.calls.append(("sleep_until", name, until_ms))

    def wait_for_event(self, name: str, event_type: str, timeout_ms: Optional[int]) -> Optional[ReceivedEvent]:
        self.calls.append(("wait", name, event_type, timeout_ms))
        return self.events.pop(0) if self.events else None

    def log(self, level: str, message: str) -> None:
        self.calls.append(("log", level, message))


def run(cls: type, host: ScriptedHost, payload: str = "{}") -> tuple[bool, Any]:
    return run_workflow(cls, lambda: host, payload, "i-1", cls.__name__, 0)


@pytest.mark.parametrize(
    ("text", "ms"),
    [("300 ms", 300), ("10 seconds", 10_000), ("1 second", 1_000), ("5 minutes", 300_000), ("1 hour", 3_600_000),
     ("2 days", 172_800_000), ("1.5 hours", 5_400_000), ("10s", 10_000), (250, 250), (dt.timedelta(minutes=2), 120_000)],
)
def test_durations(text: Any, ms: int) -> None:
    assert to_ms(text) == ms


@pytest.mark.parametrize("bad", ["ten seconds", "5 fortnights", -1, True, None, ""])
def test_bad_durations_are_precise_errors(bad: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        to_ms(bad)


def test_timestamps() -> None:
    when = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    assert to_epoch_ms(when) == to_epoch_ms(when.replace(tzinfo=None)) == to_epoch_ms("2030-01-02T03:04:05+00:00")
    assert to_epoch_ms(when.timestamp()) == int(when.timestamp() * 1000)


def test_defaults_are_cloudflares_and_config_forms_merge() -> None:
    assert step_options(None, None, None) == StepOptions(5, 10_000, "exponential", 600_000)
    merged = step_options(None, None, {"retries": {"limit": 1, "delay": "1 second", "backoff": "linear"}, "timeout": "30 seconds"})
    assert merged == StepOptions(1, 1_000, "linear", 30_000)
    with pytest.raises(WorkflowDefinitionError, match="backoff"):
        step_options({"backoff": "quadratic"}, None, None)
    with pytest.raises(WorkflowDefinitionError, match="unknown retries keys"):
        step_options({"tries": 3}, None, None)


def test_step_bodies_get_context_only_when_they_ask() -> None:
    seen: list[Any] = []

    class Flow(WorkflowEntrypoint):
        def run(self, event, step):  # type: ignore[no-untyped-def]
            step.do("plain", lambda: seen.append("plain"))
            step.do("ctx", lambda ctx: seen.append((ctx.attempt, ctx.step_name, ctx.idempotency_key)))
            step.do("default-arg", lambda i=7: seen.append(i))

            def keyword_only(*, ctx):  # type: ignore[no-untyped-def]
                seen.append(ctx.step_name)

            step.do("kw", keyword_only)

            @step.do
            def decorated() -> int:
                return 41

            return decorated() + 1

    host = ScriptedHost()
    ok, value = run(Flow, host)
    assert (ok, value) == (True, "42")
    assert seen == ["plain", (1, "ctx", "key-ctx"), 7, "kw"]
    # The key costs a host call: only the bodies that take a context make it.
    assert [c for c in host.calls if c[0] == "key"] == [("key", "ctx"), ("key", "kw")]


def test_a_key_the_host_sent_with_the_attempt_is_used_as_is() -> None:
    class Keyed(ScriptedHost):
        def begin_step(self, name: str, options: StepOptions) -> StepState:
            super().begin_step(name, options)
            return Execute(2, "sent-by-begin-step")

    class Flow(WorkflowEntrypoint):
        def run(self, event, step):  # type: ignore[no-untyped-def]
            return step.do("s", lambda ctx: [ctx.attempt, ctx.idempotency_key])

    host = Keyed()
    assert run(Flow, host) == (True, '[2, "sent-by-begin-step"]')
    assert not [c for c in host.calls if c[0] == "key"]


def test_errors_become_attempt_failures_and_outcomes() -> None:
    class Flow(WorkflowEntrypoint):
        def run(self, event, step):  # type: ignore[no-untyped-def]
            try:
                step.do("flaky", lambda: 1 / 0)
            except StepFailedError as exc:
                assert exc.error_name == "ZeroDivisionError"
            try:
                step.do("fatal", lambda: (_ for _ in ()).throw(NonRetryableError("nope")))
            except NonRetryableError as exc:
                assert str(exc) == "nope"
            step.do("unserializable", lambda: object())

    host = ScriptedHost()
    ok, value = run(Flow, host)
    assert not ok and value[0] == "TypeError" and "step 'unserializable'" in value[1]
    errs = [c for c in host.calls if c[0] == "err"]
    assert [(c[1], c[2], c[4]) for c in errs] == [("flaky", "ZeroDivisionError", True), ("fatal", "NonRetryableError", False), ("unserializable", "TypeError", False)]


def test_waits_sleeps_and_timeouts() -> None:
    class Flow(WorkflowEntrypoint):
        def run(self, event, step):  # type: ignore[no-untyped-def]
            step.sleep("nap", "2 minutes")
            step.sleep_until("alarm", dt.datetime(2030, 1, 1))
            got = step.wait_for_event("first", type="go", timeout="1 hour")
            try:
                step.wait_for_event("second", type="go")
            except EventTimeoutError as exc:
                return {"first": got.payload, "type": got.type, "timeout": str(exc)}

    host = ScriptedHost([ReceivedEvent("go", '{"n": 1}', 5)])
    ok, value = run(Flow, host)
    assert ok, value
    assert host.calls[:2] == [("sleep", "nap", 120_000), ("sleep_until", "alarm", 1_893_456_000_000)]
    assert host.calls[2:] == [("wait", "first", "go", 3_600_000), ("wait", "second", "go", None)]


def test_async_workflows_and_foreign_awaits() -> None:
    import asyncio

    class Good(WorkflowEntrypoint):
        async def run(self, event, step):  # type: ignore[no-untyped-def]
            @step.do("one")
            async def one() -> int:
                return 1

            two = await step.do("two", lambda: 2)
            await step.sleep("nap", 10)
            return await one() + two

    class Bad(WorkflowEntrypoint):
        async def run(self, event, step):  # type: ignore[no-untyped-def]
            await asyncio.sleep(1)

    class Yielding:
        def __await__(self):  # type: ignore[no-untyped-def]
            yield "tick"

    class Foreign(WorkflowEntrypoint):
        async def run(self, event, step):  # type: ignore[no-untyped-def]
            await Yielding()

    assert run(Good, ScriptedHost()) == (True, "3")
    for flow in (Bad, Foreign):
        ok, value = run(flow, ScriptedHost())
        assert not ok and value[0] == "WorkflowDefinitionError" and "step.sleep" in value[1]


def test_workflow_discovery_names_and_duplicates() -> None:
    import types

    module = types.ModuleType("tenant")

    class A(WorkflowEntrypoint):
        pass

    class B(WorkflowEntrypoint):
        name = "custom-b"

    module.A, module.B = A, B  # type: ignore[attr-defined]
    assert sorted(find_workflows(module)) == ["A", "custom-b"]

    class C(WorkflowEntrypoint):
        name = "A"

    module.C = C  # type: ignore[attr-defined]
    with pytest.raises(WorkflowDefinitionError, match="two workflow classes"):
        find_workflows(module)


def test_the_build_time_rehearsal_runs_the_sdk_and_leaves_no_workflow_behind() -> None:
    import types

    from tenantflow_guest import _runtime

    module = types.ModuleType("tenant")

    class Only(WorkflowEntrypoint):
        def run(self, event: Any, step: Any) -> Any:
            return step.do("one", lambda: 1)

    module.Only = Only  # type: ignore[attr-defined]
    _runtime.rehearse(rounds=3)  # what build_world does before the snapshot
    assert list(find_workflows(module)) == ["Only"]
    host = ScriptedHost()
    assert run_workflow(Only, lambda: host, "{}", "i-1", "Only", 0) == (True, "1")
    assert [c[:2] for c in host.calls] == [("begin", "one"), ("ok", "one")]


def test_step_results_are_what_their_recorded_json_gives_back() -> None:
    """A scalar comes back as the body returned it (equal to its JSON round trip); anything
    else, or an answer other than the JSON sent, is parsed from what the host recorded."""
    kept: dict[str, Any] = {}

    class Flow(WorkflowEntrypoint):
        def run(self, event, step):  # type: ignore[no-untyped-def]
            bodies = {"int": 3, "big": 2**70, "float": 0.1, "neg-zero": -0.0, "str": "é\ud800\n", "bool": True,
                      "none": None, "tuple": (1, 2), "dict": {1: "a"}, "list": [1]}
            for name, value in bodies.items():
                kept[name] = step.do(name, lambda value=value: value)
            kept["answered"] = step.do("answered", lambda: 5)
            return None

    class Rewriting(ScriptedHost):
        def end_attempt_ok(self, name: str, result_json: str) -> StepState:
            super().end_attempt_ok(name, result_json)
            return Done("6" if name == "answered" else result_json)

    host = Rewriting()
    assert run(Flow, host) == (True, "null")
    recorded = {c[1]: c[2] for c in host.calls if c[0] == "ok"}
    for name, value in kept.items():
        expected = json.loads(recorded[name]) if name != "answered" else 6
        assert (type(value), value) == (type(expected), expected), name
    assert str(kept["neg-zero"]) == "-0.0" and kept["tuple"] == [1, 2] and kept["dict"] == {"1": "a"}


@pytest.mark.parametrize("value", [0, -7, 2**70, True, False, None, "é\n", 0.1, [1, (2,)], {"a": None}, IntEnum("E", "A").A],
                         ids=repr)
def test_step_results_are_encoded_as_json_dumps_would(value: Any) -> None:
    assert _encode(value) == json.dumps(value, allow_nan=False)


def test_unencodable_step_results_fail_as_with_json_dumps() -> None:
    for value in (10**5000, float("nan"), object()):
        with pytest.raises((TypeError, ValueError)):
            _encode(value)
