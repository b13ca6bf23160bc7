"""Workflows that exercise every durable primitive; compiled once per test session."""

import random
import time

from tenantflow_guest import EventTimeoutError, NonRetryableError, StepFailedError, WorkflowEntrypoint


class Steps(WorkflowEntrypoint):
    """`n` trivial steps sharing one name (told apart by order)."""

    def run(self, event, step):
        total = 0
        for i in range(event.payload.get("n", 3)):
            total += step.do("add", lambda i=i: i)
        return {"total": total}


class Retry(WorkflowEntrypoint):
    """Fails the first `fail` attempts, then succeeds."""

    def run(self, event, step):
        p = event.payload

        def flaky(ctx):
            if ctx.attempt <= p["fail"]:
                raise ConnectionError(f"attempt {ctx.attempt} failed")
            return {"attempt": ctx.attempt, "key": ctx.idempotency_key}

        retries = {"limit": p.get("limit", 5), "delay": p.get("delay", "1 second"), "backoff": p.get("backoff", "exponential")}
        return step.do("flaky", flaky, retries=retries)


class Exhaust(WorkflowEntrypoint):
    """A step that always fails; the workflow catches the final failure."""

    def run(self, event, step):
        def broken():
            raise ValueError("still broken")

        try:
            step.do("broken", broken, retries={"limit": 2, "delay": 1000, "backoff": "constant"})
        except StepFailedError as exc:
            return {"caught": exc.error_name, "message": exc.message}
        return {"caught": None}


class Uncaught(WorkflowEntrypoint):
    def run(self, event, step):
        def broken():
            raise NonRetryableError("card declined")

        step.do("charge", broken)
        return "unreachable"


class Crash(WorkflowEntrypoint):
    def run(self, event, step):
        step.do("fine", lambda: 1)
        raise KeyError("missing-thing")


class Spin(WorkflowEntrypoint):
    """A step body that never returns; its timeout must stop it."""

    def run(self, event, step):
        def forever():
            while True:
                pass

        try:
            step.do("spin", forever, timeout=event.payload.get("timeout", "1 second"), retries={"limit": event.payload.get("limit", 0), "delay": 0})
        except StepFailedError as exc:
            return {"caught": exc.error_name, "message": exc.message}
        return "unreachable"


class Busy(WorkflowEntrypoint):
    """A step that works for `ms` milliseconds, then sleeps, then another step."""

    def run(self, event, step):
        def work():
            end = time.monotonic() + event.payload.get("ms", 300) / 1000
            while time.monotonic() < end:
                pass
            return "worked"

        first = step.do("work", work)
        step.sleep("rest", event.payload.get("sleep", "10 seconds"))
        second = step.do("after", lambda: "after")
        return [first, second]


class Sleeper(WorkflowEntrypoint):
    def run(self, event, step):
        before = step.do("before", lambda: "before")
        step.sleep("nap", event.payload.get("duration", "1 hour"))
        step.sleep_until("alarm", event.payload["until"]) if "until" in event.payload else None
        return [before, step.do("after", lambda: "after")]


class Waiter(WorkflowEntrypoint):
    def run(self, event, step):
        if "sleep_first" in event.payload:
            step.sleep("before waiting", event.payload["sleep_first"])
        try:
            got = step.wait_for_event("approval", type=event.payload.get("type", "approval"), timeout=event.payload.get("timeout", "1 hour"))
        except EventTimeoutError as exc:
            return {"timed_out": True, "message": str(exc)}
        return {"type": got.type, "payload": got.payload}


class TwoEvents(WorkflowEntrypoint):
    def run(self, event, step):
        first = step.wait_for_event("first", type="tick")
        second = step.wait_for_event("second", type="tick")
        return [first.payload, second.payload]


class Drifting(WorkflowEntrypoint):
    """Non-deterministic on purpose: its step name changes between replays."""

    def run(self, event, step):
        step.do(f"roll-{random.random()}", lambda: 1)
        step.sleep("nap", "1 minute")
        return "done"


class BigResult(WorkflowEntrypoint):
    def run(self, event, step):
        try:
            step.do("big", lambda: "x" * event.payload["size"], retries={"limit": 0})
        except StepFailedError as exc:
            return {"caught": exc.error_name, "message": exc.message}
        return "stored"


class NotJson(WorkflowEntrypoint):
    def run(self, event, step):
        return step.do("set", lambda: {1, 2, 3})


class Nested(WorkflowEntrypoint):
    def run(self, event, step):
        return step.do("outer", lambda: step.do("inner", lambda: 1))


class Chatty(WorkflowEntrypoint):
    def run(self, event, step):
        print("hello from the guest")
        step.log("a log line")
        step.sleep("nap", "1 second")
        print("after the nap")
        return "ok"


class AsyncFlow(WorkflowEntrypoint):
    name = "async-flow"

    async def run(self, event, step):
        @step.do("first")
        async def first():
            return 1

        a = await first()
        b = await step.do("second", lambda: 2)
        await step.sleep("nap", "1 second")
        return a + b


class Named(WorkflowEntrypoint):
    """A step named by the caller (for name validation)."""

    def run(self, event, step):
        return step.do(event.payload["name"], lambda: "ok")


class Marathon(WorkflowEntrypoint):
    """Many steps with a short durable sleep in the middle (the crash test's workload)."""

    def run(self, event, step):
        n = event.payload["n"]
        results = []
        for i in range(n):
            results.append(step.do("leg", lambda i=i: i))
            if i == n // 2:
                step.sleep("breather", event.payload.get("sleep", "200 ms"))
        return results


class StepsThenSleep(WorkflowEntrypoint):
    """`n` steps, then a sleep: the invocation after the sleep replays all `n` (benchmarks)."""

    def run(self, event, step):
        for i in range(event.payload["n"]):
            step.do("s", lambda i=i: i)
        step.sleep("rest", "1 second")
        return event.payload["n"]


class ReplayMix(WorkflowEntrypoint):
    """Steps (one failing for good, caught), a log line, a sleep, one more step. With
    `drift_at`, the step at that position gets a new name on every run."""

    def run(self, event, step):
        n, drift_at = event.payload["n"], event.payload.get("drift_at")
        total = 0
        for i in range(n):
            name = f"s{i}-{random.random()}" if i == drift_at else f"s{i}"
            total += step.do(name, lambda i=i: i)
        try:
            step.do("broken", lambda: 1 / 0, retries={"limit": 0, "delay": 0, "backoff": "constant"})
            caught = None
        except StepFailedError as exc:
            caught = exc.error_name
        print(f"total {total}")
        step.sleep("nap", "1 minute")
        return {"total": total, "caught": caught, "after": step.do("after", lambda: total + 1)}


class FirstProtocol(WorkflowEntrypoint):
    """Steps through the first step protocol (`begin-step` / `end-attempt`, the attempt's
    key in the answer), as components built by earlier SDKs call it; "b" fails once and
    is retried in place, then a sleep makes the next invocation replay both steps."""

    def run(self, event, step):
        import json

        from wit_world.imports import durable, types  # the component's own bindings

        config = types.StepConfig(types.RetryPolicy(2, 0, types.Backoff.CONSTANT), 60_000)
        results = []
        for name in ("a", "b"):
            state = durable.begin_step(name, config)
            while isinstance(state, types.StepState_Execute):
                attempt = state.value
                if name == "b" and attempt.attempt == 1:
                    outcome = types.AttemptResult_Err(types.AttemptError("Flaky", "first try", True))
                else:
                    outcome = types.AttemptResult_Ok(json.dumps([attempt.attempt, attempt.idempotency_key]))
                state = durable.end_attempt(name, outcome)
            if not isinstance(state, types.StepState_Done):
                raise AssertionError(f"step {name}: {state!r}")
            results.append(json.loads(state.value))
        step.sleep("rest", "1 second")
        return {"steps": results, "after": step.do("after", lambda ctx: ctx.idempotency_key)}


class KeyOutsideStep(WorkflowEntrypoint):
    """Asks for an idempotency key while no step runs: an invalid durable call."""

    def run(self, event, step):
        from wit_world.imports import durable

        return durable.idempotency_key()
