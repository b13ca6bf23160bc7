"""A host process for the crash test: runs instances until all complete, and logs every
step execution and every recorded step to a file so the test can check that no step runs
again after its result was recorded. Killed with SIGKILL at random moments by the test."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tenantflow import executor
from tenantflow.engine import Engine
from tenantflow.errors import InstanceAlreadyExists


def log_line(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def instrument(trace: Path) -> None:
    """A step result is queued when its attempt ends and durable once the invocation's
    next durable call (or its end) has waited for it: `commit` is logged then."""
    original_execute = executor.Invocation.execute
    original_succeeded = executor.Invocation.attempt_succeeded
    original_await = executor.Invocation.await_durable
    queued: dict[int, int] = {}  # id(invocation) -> seq of the step result in flight

    def execute(self: executor.Invocation, run: executor._StepRun) -> object:
        log_line(trace, f"exec {os.getpid()} {self.row.id} {run.seq}")
        return original_execute(self, run)

    def attempt_succeeded(self: executor.Invocation, run: executor._StepRun, result: str) -> object:
        answer = original_succeeded(self, run, result)
        queued[id(self)] = run.seq
        return answer

    def await_durable(self: executor.Invocation) -> None:
        original_await(self)
        seq = queued.pop(id(self), None)
        if seq is not None:
            log_line(trace, f"commit {os.getpid()} {self.row.id} {seq}")

    executor.Invocation.execute = execute  # type: ignore[method-assign]
    executor.Invocation.attempt_succeeded = attempt_succeeded  # type: ignore[method-assign]
    executor.Invocation.await_durable = await_durable  # type: ignore[method-assign]


async def main(db: Path, component: Path, artifacts: Path, trace: Path, count: int, steps: int) -> None:
    instrument(trace)
    async with Engine(db, artifact_dir=artifacts, workers=4) as engine:
        tenant = engine.tenant("crash")
        if not engine.components.path(executor.hashlib.sha256(component.read_bytes()).hexdigest()).exists():
            await engine.deploy("crash", component.read_bytes())
        for i in range(count):
            try:
                await tenant.create("Marathon", {"n": steps, "sleep": "1 second"}, id=f"c{i}")
            except InstanceAlreadyExists:
                pass
        print("running", flush=True)
        for i in range(count):
            await tenant.wait(f"c{i}", timeout=600)
        print("all settled", flush=True)


if __name__ == "__main__":
    db, component, artifacts, trace = map(Path, sys.argv[1:5])
    asyncio.run(main(db, component, artifacts, trace, int(sys.argv[5]), int(sys.argv[6])))
