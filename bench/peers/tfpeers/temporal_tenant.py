"""One Temporal tenant's worker process (the peers' cold_start workload).

    python -m tfpeers.temporal_tenant ADDRESS TASK_QUEUE SPAWNED_AT

A platform running each tenant's code in a process of its own: this process connects a Client to
the peer's server at ADDRESS and runs a Worker on the tenant's own TASK_QUEUE with the benchmark's
workflow definitions and its own activities, until SIGTERM/SIGINT shuts the worker down. The
harness starts the tenant's first workflow on TASK_QUEUE right after spawning this process.
SPAWNED_AT is the harness's `time.monotonic()` just before the spawn; it only serves the phase
times this process prints to its log (CLOCK_MONOTONIC is system-wide, so the stamps compare).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

from .temporal_defs import ParkWorkflow, ReplayWorkflow, SleepWorkflow, StepsWorkflow, WaitSignalWorkflow

_spawned_at = 0.0


def _phase(what: str) -> None:
    print(f"+{(time.monotonic() - _spawned_at) * 1000.0:.1f} ms since spawn: {what}", flush=True)


@activity.defn(name="tf_step")
async def tf_step(x: int) -> int:
    return x + 1


@activity.defn(name="tf_stamp")
async def tf_stamp() -> float:
    stamp = time.monotonic()
    _phase("tf_stamp runs")
    return stamp


@activity.defn(name="tf_park_step")
async def tf_park_step() -> int:
    return 1


async def main(address: str, task_queue: str) -> None:
    _phase("interpreter up, imports done")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # a clean worker shutdown instead of dying mid-poll
        loop.add_signal_handler(sig, stop.set)
    client = await Client.connect(address, namespace="default")
    _phase("client connected")
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[StepsWorkflow, WaitSignalWorkflow, SleepWorkflow, ParkWorkflow, ReplayWorkflow],
        activities=[tf_step, tf_stamp, tf_park_step],
    )
    _phase("worker built (workflows validated in the sandbox)")
    async with worker:  # runs the worker (validate, then poll) until the block exits, then shuts it down
        _phase("worker started")
        await stop.wait()
    _phase("worker shut down")


if __name__ == "__main__":
    _spawned_at = float(sys.argv[3])
    asyncio.run(main(sys.argv[1], sys.argv[2]))
