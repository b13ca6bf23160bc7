"""Hostile guests: each tries to escape or exhaust the sandbox in one way."""

import os
import sys

from tenantflow_guest import WorkflowEntrypoint

MiB = 1024 * 1024


class LoopOutside(WorkflowEntrypoint):
    """Spins outside any step: only the invocation budget can stop it."""

    def run(self, event, step):
        while True:
            pass


class LoopInStep(WorkflowEntrypoint):
    """Spins inside a step body: its timeout stops each attempt."""

    def run(self, event, step):
        def forever():
            while True:
                pass

        return step.do("spin", forever, timeout=event.payload.get("timeout", "300 ms"), retries={"limit": 0})


class MemoryBomb(WorkflowEntrypoint):
    """Allocates until something gives."""

    def run(self, event, step):
        hoard = []
        while True:
            hoard.append(bytearray(event.payload.get("chunk", 8 * MiB)))


class MemoryBombInStep(WorkflowEntrypoint):
    def run(self, event, step):
        def bomb():
            hoard = []
            while True:
                hoard.append(bytearray(8 * MiB))

        return step.do("bomb", bomb, retries={"limit": 0})


class DeepRecursion(WorkflowEntrypoint):
    """Recursion through C frames (the wasm stack), with Python's own limit lifted."""

    def run(self, event, step):
        sys.setrecursionlimit(10_000_000)

        def down(n):
            return repr([down(n + 1)]) if event.payload.get("via_c", True) else down(n + 1) + 1

        return down(0)


class ReadPasswd(WorkflowEntrypoint):
    def run(self, event, step):
        try:
            with open("/etc/passwd") as f:
                return {"read": f.read()[:100]}
        except OSError as exc:
            found = {"error": type(exc).__name__}
        try:
            found["listing"] = os.listdir("/")
        except OSError as exc:
            found["listing_error"] = type(exc).__name__
        return found


class ReadEnv(WorkflowEntrypoint):
    def run(self, event, step):
        return {"environ": dict(os.environ), "argv": sys.argv, "getenv_home": os.getenv("HOME")}


class OpenSocket(WorkflowEntrypoint):
    def run(self, event, step):
        try:
            import socket
        except ImportError as exc:
            return {"error": "ImportError", "message": str(exc)}
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.connect(("127.0.0.1", event.payload.get("port", 80)))
        except Exception as exc:  # noqa: BLE001 - whatever it is, it must not connect
            return {"error": type(exc).__name__, "message": str(exc)}
        return {"connected": True}


class HugeStepResult(WorkflowEntrypoint):
    def run(self, event, step):
        return step.do("huge", lambda: "x" * event.payload.get("size", 50 * MiB), retries={"limit": 0})


class Shout(WorkflowEntrypoint):
    """Prints `mib` MiB to stdout in 1 MiB lines (or `lines` of `line_bytes`), then a line to stderr."""

    def run(self, event, step):
        line = "x" * (event.payload.get("line_bytes", MiB) - 1)
        for _ in range(event.payload.get("lines", event.payload.get("mib", 100))):
            print(line)
        print("done shouting", file=sys.stderr)
        return "shouted"


class Abort(WorkflowEntrypoint):
    """Exits the interpreter: must end as a clean error, not take anything down."""

    def run(self, event, step):
        os._exit(3)


class NotJSON(WorkflowEntrypoint):
    """Hands the host text that is not JSON through the component's own bindings: as a
    step's result (`bad`: the text; or `digits` digits, one JSON number too large to
    send as params), or as the workflow's output (`output`: true)."""

    def run(self, event, step):
        from wit_world.imports import durable, types  # the component's own bindings

        bad = event.payload.get("bad") or "1" * event.payload.get("digits", 0)
        if event.payload.get("output"):
            import json

            json.dumps = lambda *args, **kwargs: bad  # what the SDK encodes the output with
            return {"ignored": True}
        state = durable.start_step("raw", 0, 0, types.Backoff.CONSTANT, 60_000)
        if not isinstance(state, types.StepStart_Execute):
            raise AssertionError(f"start-step answered {state!r}")
        failed = durable.end_attempt_ok("raw", bad)
        return {"refused": None if failed is None else [failed.name, failed.message]}


class HugeError(WorkflowEntrypoint):
    """Fails a step with an exception of `mib` MiB (its class name `name_chars` long), then
    fails the workflow with one as large."""

    def run(self, event, step):
        size = event.payload.get("mib", 8) * MiB
        kind = type("E" * event.payload.get("name_chars", 1), (Exception,), {})

        def fail():
            raise kind("x" * size)

        try:
            step.do("fail", fail, retries={"limit": 0})
        except Exception:  # noqa: BLE001 - the workflow fails with its own below
            pass
        raise kind("y" * size)


class RetryForever(WorkflowEntrypoint):
    """A step that always fails with a retry limit no one could wait out, retried in place."""

    def run(self, event, step):
        def fail():
            raise ConnectionError("down again")

        return step.do("forever", fail, retries={"limit": 2**31, "delay": 0, "backoff": "constant"})


class ChildNotJSON(WorkflowEntrypoint):
    """Hands the children interface text that is not JSON through the raw bindings: as a
    child's params, then as an event's payload (`bad`: the text)."""

    def run(self, event, step):
        from componentize_py_types import Err
        from wit_world.imports import children

        bad = event.payload.get("bad", "{not json")
        outcomes = {}
        for label, call in (
            ("start", lambda: children.start("kids", [children.ChildSpec("ChildNotJSON", bad, "kid")])),
            ("send_event", lambda: children.send_event("poke", event.payload.get("target", "nobody"), "tick", bad)),
        ):
            try:
                call()
                outcomes[label] = "accepted"
            except Err as exc:
                outcomes[label] = [exc.value.name, exc.value.message]
        return outcomes
