"""Workflows the HTTP API tests drive (through a real server)."""

import time

from tenantflow_guest import NonRetryableError, WorkflowEntrypoint


class Echo(WorkflowEntrypoint):
    """One step; returns the params."""

    def run(self, event, step):
        print("echo", event.payload)
        return {"echo": step.do("echo", lambda: event.payload)}


class Nap(WorkflowEntrypoint):
    """A step, a real sleep (default 2 seconds), another step."""

    def run(self, event, step):
        before = step.do("before", lambda: "before")
        step.sleep("nap", (event.payload or {}).get("duration", "2 seconds"))
        return [before, step.do("after", lambda: "after")]


class Approval(WorkflowEntrypoint):
    def run(self, event, step):
        got = step.wait_for_event("approval", type="approval", timeout="1 hour")
        return {"approved_by": got.payload}


class Grind(WorkflowEntrypoint):
    """`n` steps that each work for `ms` milliseconds (keeps invocations running)."""

    def run(self, event, step):
        p = event.payload or {}

        def work(i):
            end = time.monotonic() + p.get("ms", 200) / 1000
            while time.monotonic() < end:
                pass
            return i

        return [step.do("work", lambda i=i: work(i)) for i in range(p.get("n", 10))]


class Fail(WorkflowEntrypoint):
    def run(self, event, step):
        def broken():
            raise NonRetryableError("card declined")

        step.do("charge", broken)
        return "unreachable"
