"""Temporal workflow definitions. Imported inside Temporal's workflow sandbox: temporalio only.

Steps are regular activities (not local activities): each activity's result is recorded in the
workflow history on the server before the workflow goes on.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

STEP_TIMEOUT = timedelta(seconds=60)


async def _steps(steps: int) -> int:
    acc = 0
    for _ in range(steps):
        acc = await workflow.execute_activity("tf_step", acc, start_to_close_timeout=STEP_TIMEOUT, result_type=int)
    return acc


@workflow.defn(name="TfSteps")
class StepsWorkflow:
    @workflow.run
    async def run(self, steps: int) -> int:
        return await _steps(steps)


@workflow.defn(name="TfReplay")
class ReplayWorkflow:
    """n steps, then a final one (replay)."""

    @workflow.run
    async def run(self, steps: int) -> float:
        await _steps(steps)
        stamp: float = await workflow.execute_activity("tf_stamp", start_to_close_timeout=STEP_TIMEOUT, result_type=float)
        return stamp


class _Wakeable:
    """A workflow that a `wake` signal lets go on."""

    def __init__(self) -> None:
        self._woken = False

    @workflow.signal(name="wake")
    def wake(self) -> None:
        self._woken = True


@workflow.defn(name="TfWaitSignal")
class WaitSignalWorkflow(_Wakeable):
    @workflow.run
    async def run(self) -> float:
        await workflow.wait_condition(lambda: self._woken)
        stamp: float = await workflow.execute_activity(
            "tf_stamp", start_to_close_timeout=STEP_TIMEOUT, result_type=float
        )
        return stamp


@workflow.defn(name="TfSleep")
class SleepWorkflow:
    @workflow.run
    async def run(self, sleep_ms: int) -> list[float]:
        t0 = await workflow.execute_activity("tf_stamp", start_to_close_timeout=STEP_TIMEOUT, result_type=float)
        await workflow.sleep(timedelta(milliseconds=sleep_ms))
        t1 = await workflow.execute_activity("tf_stamp", start_to_close_timeout=STEP_TIMEOUT, result_type=float)
        return [t0, t1]


PARK_TIMEOUT = timedelta(days=1)


@workflow.defn(name="TfPark")
class ParkWorkflow(_Wakeable):
    """One step, then an event wait with a day's timeout (footprint_waiting)."""

    @workflow.run
    async def run(self) -> None:
        await workflow.execute_activity("tf_park_step", start_to_close_timeout=STEP_TIMEOUT, result_type=int)
        await workflow.wait_condition(lambda: self._woken, timeout=PARK_TIMEOUT)
