"""The WIT contract seen from the host side, with a minimal in-memory journal.

A real component (acme's order approval) is driven through its `run` export by a hand-
written host: we assert the exact sequence of durable calls and how the guest reacts to
each answer (done / execute / failed, sleeps and event waits that unwind by trapping).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import wasmtime
from enginekit import ARTIFACTS, REPO
from wasmtime import component as wc

from tenantflow import capabilities, children, executor
from tenantflow.isolates import IsolateCache
from tenantflow.registry import digest_of
from tenantflow.sandbox import SandboxConfig, make_engine, watch_store

from components import build_component


class Unwind(Exception):
    """Raised by the fake host to leave the guest (as the real engine does)."""


class MemoryHost:
    def __init__(self) -> None:
        self.journal: list[tuple[str, str, Any]] = []  # (kind, name, recorded answer)
        self.calls: list[tuple[str, ...]] = []
        self.seq = 0
        self.events: list[tuple[str, str]] = []
        self.fail_step: str | None = None
        self.now = 1_000

    def _next(self, kind: str, name: str) -> Any:
        seq, self.seq = self.seq, self.seq + 1
        if seq < len(self.journal):
            assert self.journal[seq][:2] == (kind, name), f"non-determinism at {seq}"
            return self.journal[seq][2]
        return None

    def start_step(self, _ctx: Any, name: str, limit: int, delay: int, backoff: str, timeout: int) -> Any:
        self.calls.append(("start-step", name, timeout))
        recorded = self._next("step", name)
        if recorded is not None:
            return recorded  # step-start is untagged: done(json) is the bare string
        return 1  # execute(attempt)

    def idempotency_key(self, _ctx: Any) -> str:
        self.calls.append(("idempotency-key",))
        return f"key-{self.seq - 1}"

    def end_attempt_ok(self, _ctx: Any, name: str, value: str) -> None:
        self.calls.append(("end-attempt-ok", name))
        self.journal.append(("step", name, value))

    def end_attempt(self, _ctx: Any, name: str, outcome: Any) -> Any:
        assert not isinstance(outcome, str), "a successful attempt ends with end-attempt-ok"
        self.calls.append(("end-attempt", name, outcome.name, str(outcome.retryable)))
        error = wc.Record()
        error.name = outcome.name
        error.message = outcome.message
        return wc.Variant("failed", error)

    def begin_step(self, _ctx: Any, name: str, config: Any) -> Any:
        raise AssertionError("the SDK begins steps with start-step")

    def sleep(self, _ctx: Any, name: str, duration: int) -> None:
        self.calls.append(("sleep", name, str(duration)))
        wake = self._next("sleep", name)
        if wake is None:
            self.journal.append(("sleep", name, self.now + duration))
            raise Unwind("sleeping")
        if self.now < wake:
            raise Unwind("sleeping")

    def sleep_until(self, _ctx: Any, name: str, until: int) -> None:
        raise AssertionError("not used by this workflow")

    def wait_for_event(self, _ctx: Any, name: str, event_type: str, timeout: Any) -> Any:
        self.calls.append(("wait-for-event", name, event_type, str(timeout)))
        recorded = self._next("event", name)
        if recorded is None:
            if not self.events:
                raise Unwind("waiting for an event")
            recorded = self.events.pop(0)
            self.journal.append(("event", name, recorded))
        event = wc.Record()
        setattr(event, "event-type", recorded[0])
        event.payload = recorded[1]
        event.timestamp = self.now
        return event

    def log(self, _ctx: Any, level: str, message: str) -> None:
        self.calls.append(("log", str(level), message))

    def recorded_steps(self, _ctx: Any) -> str:
        assert self.seq == 0, "recorded-steps must come first"
        prefix = []
        for kind, name, answer in self.journal:
            if kind != "step":
                break
            prefix.append([name, True, json.loads(answer)])
        self.calls.append(("recorded-steps", str(len(prefix))))
        return json.dumps(prefix)

    def replayed(self, _ctx: Any, count: int) -> None:
        assert self.seq == 0, "replayed must come before any other durable call"
        self.calls.append(("replayed", str(count)))
        self.seq = count


@pytest.fixture(scope="module")
def acme() -> tuple[wasmtime.Engine, wc.Component]:
    # The engine's own wasmtime configuration, so the shared artifact cache saves the compile.
    config = SandboxConfig()
    engine = make_engine(config)
    wasm = build_component(REPO / "tenants" / "acme" / "workflow.py").read_bytes()
    cache = IsolateCache(engine, config, ARTIFACTS)
    return engine, cache.get(digest_of(wasm), lambda: wasm)


def invoke(acme: tuple[wasmtime.Engine, wc.Component], host: MemoryHost, workflow: str, params: Any) -> Any:
    """One invocation: fresh instance, `run` from the top (replaying `host.journal`)."""
    engine, component = acme
    host.seq = 0
    linker = wc.Linker(engine)
    linker.add_wasip2()
    with linker.root() as root:
        with root.add_instance("tenantflow:workflow/durable@0.1.0") as durable:
            for name in executor.HOST_FUNCTIONS:
                durable.add_func(name, getattr(host, name.replace("-", "_")))
        for interface, functions in (("children", children.HOST_FUNCTIONS), ("capabilities", capabilities.HOST_FUNCTIONS)):
            with root.add_instance(f"tenantflow:workflow/{interface}@0.1.0") as unused:  # not called here
                for name, fn in functions.items():
                    unused.add_func(name, fn)
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())
    watch_store(store, lambda: None)  # epoch interruption is on: never stop this guest
    instance = linker.instantiate(store, component)
    names = instance.get_func(store, "workflows")
    assert names is not None
    assert sorted(names(store)) == ["Refund", "order-approval"]
    run = instance.get_func(store, "run")
    assert run is not None
    event = wc.Record()
    for key, value in (("payload", json.dumps(params)), ("instance-id", "i-1"), ("workflow", workflow), ("created-at", 0)):
        setattr(event, key, value)
    try:
        return run(store, workflow, event)
    except Unwind as unwind:
        return f"unwound: {unwind}"


ORDER = {"order_id": "o-7", "items": [{"price": 700, "qty": 2}]}


def test_steps_event_wait_and_sleep_replay_from_the_journal(acme: tuple[wasmtime.Engine, wc.Component]) -> None:
    host = MemoryHost()
    assert invoke(acme, host, "order-approval", ORDER) == "unwound: waiting for an event"
    assert host.calls == [
        ("recorded-steps", "0"),
        ("start-step", "validate order", 600_000),
        ("end-attempt-ok", "validate order"),
        ("start-step", "reserve stock", 600_000),
        ("idempotency-key",),  # only a body that takes a context asks for its key
        ("end-attempt-ok", "reserve stock"),
        ("log", "info", "order o-7 needs approval (1400)"),
        ("wait-for-event", "manager approval", "approval", "172800000"),
    ]
    host.calls.clear()
    host.events.append(("approval", json.dumps({"approved": True, "by": "kim"})))
    assert invoke(acme, host, "order-approval", ORDER) == "unwound: sleeping"
    # The recorded steps are answered by the guest from `recorded-steps`: no start-step or
    # end-attempt-ok for them, bodies not run; the host learns how far it got, then the rest
    # goes through the host (which answers the recorded event from its journal).
    assert host.calls == [
        ("recorded-steps", "2"),
        ("replayed", "2"),
        ("log", "info", "order o-7 needs approval (1400)"),
        ("wait-for-event", "manager approval", "approval", "172800000"),
        ("start-step", "charge card", 30_000),
        ("end-attempt-ok", "charge card"),
        ("sleep", "wait for warehouse pickup", "3600000"),
    ]
    host.calls.clear()
    host.now += 3_600_000
    outcome = invoke(acme, host, "order-approval", ORDER)
    assert host.calls[-3:] == [("sleep", "wait for warehouse pickup", "3600000"), ("start-step", "ship", 600_000), ("end-attempt-ok", "ship")]
    # outcome is untagged in wasmtime-py: complete(json) arrives as the JSON string
    assert json.loads(outcome) == {"order_id": "o-7", "status": "shipped", "charged": 1400, "currency": "EUR", "tracking": "TRK-o-7"}


def test_a_failing_step_reports_its_error_and_the_workflow_fails(acme: tuple[wasmtime.Engine, wc.Component]) -> None:
    host = MemoryHost()
    outcome = invoke(acme, host, "order-approval", {"order_id": "o-8", "items": []})
    assert host.calls == [
        ("recorded-steps", "0"),
        ("start-step", "validate order", 600_000),
        ("end-attempt", "validate order", "NonRetryableError", "False"),
    ]
    assert (outcome.name, outcome.message) == ("NonRetryableError", "order has no items")


def test_unknown_workflow_is_a_failed_outcome_not_a_crash(acme: tuple[wasmtime.Engine, wc.Component]) -> None:
    outcome = invoke(acme, MemoryHost(), "nope", {})
    assert outcome.name == "UnknownWorkflow"
    assert "order-approval" in outcome.message
