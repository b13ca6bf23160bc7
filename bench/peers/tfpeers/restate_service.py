"""Restate services for the benchmark, served as an ASGI app by hypercorn (HTTP/2 cleartext).

    python -m hypercorn --bind 127.0.0.1:PORT tfpeers.restate_service:app

Steps are ctx.run blocks: the SDK proposes each result to the server and resumes the handler only
once the server acknowledged the journal entry (durably appended to its log).
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

import restate

bench = restate.Service("TfBench")
waiter = restate.Workflow("TfWaitSignal")
parker = restate.Workflow("TfPark")
# footprint_waiting counts park steps across processes: one byte appended per step run.
PARK_COUNTER = os.environ.get("TF_PEERS_PARK_COUNTER", "")
# replay counts its recorded steps' executions the same way: a re-run from the journal adds none.
REPLAY_COUNTER = os.environ.get("TF_PEERS_REPLAY_COUNTER", "")


def _append_byte(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)


async def _step(x: int) -> int:
    return x + 1


async def _stamp() -> float:
    return time.monotonic()


@bench.handler()
async def steps(ctx: restate.Context, n: int) -> int:
    acc = 0
    for _ in range(n):
        acc = await ctx.run_typed("step", _step, x=acc)
    return acc


@bench.handler()
async def sleep(ctx: restate.Context, sleep_ms: int) -> list[float]:
    t0 = await ctx.run_typed("t0", _stamp)
    await ctx.sleep(timedelta(milliseconds=sleep_ms))
    t1 = await ctx.run_typed("t1", _stamp)
    return [t0, t1]


async def _replay_step(x: int) -> int:
    _append_byte(REPLAY_COUNTER)
    return x + 1


@bench.handler()
async def replay(ctx: restate.Context, n: int) -> list[float]:
    """n recorded steps, then "final": the peer restarts it from the journal prefix before "final"."""
    acc = 0
    for _ in range(n):
        acc = await ctx.run_typed("step", _replay_step, x=acc)
    return [acc, await ctx.run_typed("final", _stamp)]


@waiter.main()
async def run(ctx: restate.WorkflowContext) -> float:
    await ctx.promise("wake", type_hint=str).value()
    return await ctx.run_typed("stamp", _stamp)


@waiter.handler()
async def wake(ctx: restate.WorkflowSharedContext) -> None:
    await ctx.promise("wake", type_hint=str).resolve("go")


async def _park_step() -> int:
    _append_byte(PARK_COUNTER)
    return 1


@parker.main()
async def park(ctx: restate.WorkflowContext) -> None:
    """One step, then an event wait with a day's timeout (footprint_waiting)."""
    await ctx.run_typed("step", _park_step)
    await restate.select(woken=ctx.promise("wake", type_hint=str).value(), timeout=ctx.sleep(timedelta(days=1)))


app = restate.app(services=[bench, waiter, parker])
