"""The workflows `bench/run.py` measures, compiled into one component.

Kept here (not shared with tests/) so a change to the test suite's workflows never moves
a benchmark. Step bodies are trivial on purpose: the suite measures the engine, not guest
work. Every step returns a small JSON value that the host commits before the guest goes on.
"""

import time

from tenantflow_guest import EventTimeoutError, WorkflowEntrypoint


class Steps(WorkflowEntrypoint):
    """`n` sequential trivial steps (workloads 1-3, churn)."""

    def run(self, event, step):
        total = 0
        for i in range(event.payload.get("n", 1)):
            total += step.do("add", lambda i=i: i)
        return {"total": total}


class StepsThenSleep(WorkflowEntrypoint):
    """`n` steps, then a long sleep: invoking it again replays all `n` (replay cost)."""

    def run(self, event, step):
        for i in range(event.payload["n"]):
            step.do("s", lambda i=i: i)
        step.sleep("rest", "1 hour")
        return event.payload["n"]


class Nap(WorkflowEntrypoint):
    """step, durable sleep of `ms`, step (timer wake-up)."""

    def run(self, event, step):
        step.do("before", lambda: 1)
        step.sleep("nap", event.payload.get("ms", 100))
        return step.do("after", lambda: 2)


class Signal(WorkflowEntrypoint):
    """step, wait for an event, step (event wake-up)."""

    def run(self, event, step):
        step.do("before", lambda: 1)
        got = step.wait_for_event("wake", type=event.payload.get("type", "wake"), timeout="1 hour")
        return step.do("after", lambda: got.payload)


class Park(WorkflowEntrypoint):
    """One step, then waits a day for an approval that never comes (footprint)."""

    def run(self, event, step):
        step.do("start", lambda: event.payload.get("k", 0))
        try:
            step.wait_for_event("approval", type="approval", timeout="1 day")
        except EventTimeoutError:
            return "expired"
        return "approved"


class Hold(WorkflowEntrypoint):
    """A step whose body blocks for `ms` without burning CPU: a live instance (footprint)."""

    def run(self, event, step):
        def hold():
            time.sleep(event.payload.get("ms", 1000) / 1000)
            return "held"

        return step.do("hold", hold)
