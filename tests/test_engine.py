"""The durable engine end to end: real components, real SQLite files, a manual clock."""

from __future__ import annotations

import asyncio
import hashlib
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from enginekit import open_engine, settle

from tenantflow import executor
from tenantflow.clock import ManualClock, SystemClock
from tenantflow.engine import INLINE_STATUS_STEPS, Engine
from tenantflow.errors import (
    InstanceAlreadyExists,
    InstanceNotFound,
    InvalidInput,
    InvalidState,
    PayloadTooLarge,
    QuotaExceeded,
    UnknownWorkflow,
)
from tenantflow.limits import Limits
from tenantflow.metrics import Metrics


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start_ms=1_800_000_000_000)


async def test_steps_sharing_a_name_are_told_apart_by_order(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        iid = await t.create("Steps", {"n": 5}, id="five")
        assert iid == "five"
        status = await t.wait(iid)
        assert status.status == "complete"
        assert status.output == {"total": 10}
        assert [(s.seq, s.name, s.status, s.output) for s in status.steps] == [(i, "add", "done", i) for i in range(5)]


@pytest.mark.parametrize(
    ("backoff", "delays"),
    [("constant", [1000, 1000, 1000]), ("linear", [1000, 2000, 3000]), ("exponential", [1000, 2000, 4000])],
)
async def test_retries_follow_their_backoff_as_durable_timers(tmp_path: Path, clock: ManualClock, backoff: str, delays: list[int]) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        iid = await t.create("Retry", {"fail": 3, "delay": "1 second", "backoff": backoff})
        for attempt, delay in enumerate(delays, start=1):
            await engine.scheduler.quiesce()
            status = await t.status(iid)
            assert status.status == "waiting"
            step = status.steps[0]
            assert (step.status, step.attempts) == ("retrying", attempt)
            assert step.wake_at is not None
            assert int(step.wake_at.timestamp() * 1000) - clock.now_ms() == delay
            clock.advance((delay - 1) / 1000)  # not yet due: nothing runs
            await engine.scheduler.quiesce()
            assert (await t.status(iid)).steps[0].attempts == attempt
            clock.advance(0.001)
        status = await t.wait(iid)
        assert status.status == "complete"
        assert status.output["attempt"] == 4
        assert [a.error.message for a in status.steps[0].failed_attempts if a.error] == [f"attempt {i} failed" for i in (1, 2, 3)]


def contract_key(tenant: str, instance_id: str, seq: int, generation: int = 0) -> str:
    """The idempotency key the contract derives for a step (see `Invocation.idempotency_key`)."""
    return hashlib.sha256(f"{tenant}\0{instance_id}\0{generation}\0{seq}".encode()).hexdigest()[:32]


async def test_idempotency_key_is_stable_across_retries_and_replays(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        one = await t.create("Retry", {"fail": 1, "delay": 0})
        two = await t.create("Retry", {"fail": 0})
        first, second = (await t.wait(one)).output, (await t.wait(two)).output
        assert first["attempt"] == 2 and second["attempt"] == 1
        assert len(first["key"]) == 32 and first["key"] != second["key"]
        # The derivation is part of the contract: a retry on another host (or after an
        # upgrade of this one) must get the same key.
        assert first["key"] == contract_key("t", one, 0)


async def test_a_guest_on_the_first_step_protocol_still_runs(tmp_path: Path, clock: ManualClock) -> None:
    """Components built before `start-step` call `begin-step` / `end-attempt`: same journal,
    same keys, retries in place and replays answered from the journal."""
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        iid = await t.create("FirstProtocol")
        assert await settle(t, iid) == "waiting"
        clock.advance(1)
        status = await t.wait(iid)
        assert status.status == "complete", status.error
        key = [contract_key("t", iid, seq) for seq in range(4)]
        assert status.output == {"steps": [[1, key[0]], [2, key[1]]], "after": key[3]}
        assert [(s.name, s.status, s.attempts) for s in status.steps] == [("a", "done", 1), ("b", "done", 2), ("rest", "done", 0), ("after", "done", 1)]


async def test_asking_for_a_key_outside_a_step_stops_the_instance(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        status = await t.wait(await t.create("KeyOutsideStep"))
        assert status.status == "errored" and status.error is not None
        assert (status.error.name, status.error.message) == ("InvalidDurableCall", "idempotency-key called while no step is running")


async def test_exhausted_retries_raise_in_the_guest_where_they_can_be_caught(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        iid = await t.create("Exhaust")
        for _ in range(2):
            await engine.scheduler.quiesce()
            clock.advance(1)
        status = await t.wait(iid)
        assert status.output == {"caught": "ValueError", "message": "still broken"}
        assert (status.steps[0].status, status.steps[0].attempts) == ("failed", 3)


async def test_non_retryable_error_fails_at_once_and_errs_the_instance(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        status = await t.wait(await t.create("Uncaught"))
        assert status.status == "errored"
        assert status.error is not None
        assert (status.error.name, status.error.message) == ("NonRetryableError", "card declined")
        assert status.steps[0].attempts == 1


async def test_uncaught_exception_becomes_errored_with_name_and_message(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        status = await t.wait(await t.create("Crash"))
        assert status.status == "errored"
        assert status.error is not None and status.error.name == "KeyError"
        assert "missing-thing" in status.error.message


async def test_a_spinning_step_is_stopped_by_its_timeout(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        iid = await t.create("Spin", {"timeout": "300 ms", "limit": 1})
        status = await t.wait(iid, timeout=60)
        assert status.status == "complete"
        assert status.output["caught"] == "StepTimeoutError"
        assert "exceeded its 300 ms timeout" in status.output["message"]
        assert status.steps[0].attempts == 2


async def test_short_sleeps_are_served_in_place_within_one_invocation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    invocations: list[int] = []
    invoke = executor.Executor.invoke

    def counting(x: executor.Executor, pk: int, *args: Any) -> executor.InvocationResult:
        invocations.append(pk)
        return invoke(x, pk, *args)

    monkeypatch.setattr(executor.Executor, "invoke", counting)
    async with open_engine(tmp_path / "flows.db", clock=SystemClock(), deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        short = await t.wait(await t.create("Sleeper", {"duration": "150 ms"}), timeout=30)
        assert short.output == ["before", "after"] and len(invocations) == 1  # no unwind and replay
        nap = short.steps[1]
        assert nap.name == "nap" and nap.status == "done"
        assert nap.ended_at is not None and nap.started_at is not None
        assert (nap.ended_at - nap.started_at).total_seconds() >= 0.15
        invocations.clear()
        limit = engine.limits.sleep_in_place_ms
        long = await t.wait(await t.create("Sleeper", {"duration": f"{limit + 100} ms"}), timeout=30)
        assert long.output == ["before", "after"] and len(invocations) == 2  # unwound, then woken


async def test_pause_and_terminate_reach_a_sleep_served_in_place(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "flows.db", clock=SystemClock(), limits=Limits(sleep_in_place_ms=5000), deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")

        async def napping(duration: str) -> str:
            iid = await t.create("Sleeper", {"duration": duration})
            while not any(s.name == "nap" for s in (await t.status(iid)).steps):
                await asyncio.sleep(0.01)
            return iid

        paused = await napping("2 seconds")
        assert await t.pause(paused) in ("paused", "waitingForPause")
        assert (await t.wait(paused, timeout=10)).status == "paused"
        await t.resume(paused)
        assert (await t.wait(paused, timeout=30)).output == ["before", "after"]

        stopped = await napping("4 seconds")
        await t.terminate(stopped)
        await engine.scheduler.quiesce(timeout=10)  # the worker let go well before the sleep's end
        status = await t.status(stopped)
        assert status.status == "terminated" and [s.name for s in status.steps] == ["before", "nap"]


async def test_sleep_and_sleep_until_wait_for_the_clock(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        until = (clock.now_ms() + 7_200_000) / 1000
        iid = await t.create("Sleeper", {"duration": "1 hour", "until": until})
        await engine.scheduler.quiesce()
        assert (await t.status(iid)).status == "waiting"
        clock.advance(3599)
        await engine.scheduler.quiesce()
        status = await t.status(iid)
        assert status.status == "waiting" and [s.name for s in status.steps] == ["before", "nap"]
        clock.advance(1)
        await engine.scheduler.quiesce()
        status = await t.status(iid)
        assert [s.name for s in status.steps] == ["before", "nap", "alarm"] and status.status == "waiting"
        clock.advance(3600)
        status = await t.wait(iid)
        assert status.output == ["before", "after"]


async def test_event_sent_after_the_wait_wakes_the_instance(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        iid = await t.create("Waiter", {"timeout": "1 hour"})
        await engine.scheduler.quiesce()
        status = await t.status(iid)
        assert (status.status, status.waiting_for) == ("waiting", "approval")
        await t.send_event(iid, "other", {"ignored": True})  # another type: stays buffered
        await engine.scheduler.quiesce()
        assert (await t.status(iid)).status == "waiting"
        await t.send_event(iid, "approval", {"ok": True})
        status = await t.wait(iid)
        assert status.output == {"type": "approval", "payload": {"ok": True}}


async def test_event_sent_before_the_wait_is_buffered(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        iid = await t.create("Waiter", {"sleep_first": "1 minute"})
        await engine.scheduler.quiesce()
        await t.send_event(iid, "approval", {"early": 1})
        await engine.scheduler.quiesce()
        assert (await t.status(iid)).status == "waiting"
        clock.advance(60)
        status = await t.wait(iid)
        assert status.output == {"type": "approval", "payload": {"early": 1}}


async def test_events_of_one_type_are_delivered_first_in_first_out(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        iid = await t.create("TwoEvents")
        await t.send_event(iid, "tick", 1)
        await t.send_event(iid, "tick", 2)
        await t.send_event(iid, "tick", 3)
        status = await t.wait(iid)
        assert status.output == [1, 2]


async def test_wait_for_event_times_out_into_a_catchable_error(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        iid = await t.create("Waiter", {"timeout": "1 hour"})
        await engine.scheduler.quiesce()
        clock.advance(3600)
        status = await t.wait(iid)
        assert status.output["timed_out"] is True
        assert status.steps[0].status == "timed_out"
        with pytest.raises(InvalidState):
            await t.send_event(iid, "approval", {})  # finished: refused, not buffered forever


async def test_pause_and_resume_while_waiting(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        iid = await t.create("Sleeper", {"duration": "1 minute"})
        await engine.scheduler.quiesce()
        assert await t.pause(iid) == "paused"
        clock.advance(120)  # the timer is due, but a paused instance does not run
        await engine.scheduler.quiesce()
        assert (await t.status(iid)).status == "paused"
        assert await t.resume(iid) == "queued"
        assert (await t.wait(iid)).output == ["before", "after"]


async def test_pause_while_running_takes_effect_at_the_next_durable_call(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        iid = await t.create("Busy", {"ms": 1500, "sleep": 0})
        await t.wait(iid, statuses=frozenset({"running"}))
        assert await t.pause(iid) == "waitingForPause"
        status = await t.wait(iid)
        assert status.status == "paused"
        assert [(s.name, s.status) for s in status.steps] == [("work", "done")]  # the running step finished
        await t.resume(iid)
        assert (await t.wait(iid)).output == ["worked", "after"]


async def test_pause_and_resume_a_queued_instance(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, workers=1, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        busy = await t.create("Busy", {"ms": 1000, "sleep": 0})
        queued = await t.create("Steps", {"n": 1})
        assert (await t.status(queued)).status == "queued"
        assert await t.pause(queued) == "paused"
        await t.wait(busy)
        assert (await t.status(queued)).status == "paused"
        await t.resume(queued)
        assert (await t.wait(queued)).status == "complete"


async def test_terminate_while_running_discards_the_running_step(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        iid = await t.create("Busy", {"ms": 1000})
        await t.wait(iid, statuses=frozenset({"running"}))
        assert await t.terminate(iid) == "terminated"
        await engine.scheduler.quiesce()
        status = await t.status(iid)
        assert status.status == "terminated" and status.steps == []
        with pytest.raises(InvalidState):
            await t.terminate(iid)


async def test_terminate_waiting_and_restart_runs_again_from_the_top(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        iid = await t.create("Sleeper", {"duration": "1 minute"})
        await engine.scheduler.quiesce()
        assert await t.terminate(iid) == "terminated"
        clock.advance(120)
        await engine.scheduler.quiesce()
        assert (await t.status(iid)).status == "terminated"
        assert await t.restart(iid) == "queued"
        await engine.scheduler.quiesce()
        status = await t.status(iid)
        assert status.status == "waiting" and [s.name for s in status.steps] == ["before", "nap"]
        clock.advance(60)
        assert (await t.wait(iid)).output == ["before", "after"]
        # restart a complete instance: the journal is cleared and it runs again
        await t.restart(iid)
        await engine.scheduler.quiesce()
        assert (await t.status(iid)).status == "waiting"


async def test_restart_while_running_abandons_the_old_run(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        iid = await t.create("Busy", {"ms": 800, "sleep": 0})
        await t.wait(iid, statuses=frozenset({"running"}))
        await t.restart(iid)
        status = await t.wait(iid)
        assert status.output == ["worked", "after"]
        assert [s.name for s in status.steps] == ["work", "rest", "after"]


async def test_non_determinism_stops_the_instance_naming_position_and_calls(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        iid = await t.create("Drifting")
        await engine.scheduler.quiesce()
        clock.advance(60)
        status = await t.wait(iid)
        assert status.status == "errored" and status.error is not None
        assert status.error.name == "NonDeterminismError"
        assert "position 0" in status.error.message and "the journal has step 'roll-" in status.error.message


async def test_recorded_steps_are_replayed_in_the_guest_without_a_host_call_each(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []  # the steps the guest asked the host about
    start_step = executor.Invocation.start_step

    def counting(inv: executor.Invocation, name: str, *config: Any) -> object:
        asked.append(name)
        return start_step(inv, name, *config)

    monkeypatch.setattr(executor.Invocation, "start_step", counting)
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        iid = await t.create("ReplayMix", {"n": 20})
        await engine.scheduler.quiesce()
        assert asked == [f"s{i}" for i in range(20)] + ["broken"]
        asked.clear()
        clock.advance(60)
        status = await t.wait(iid)
        assert status.output == {"total": 190, "caught": "ZeroDivisionError", "after": 191}
        assert asked == ["after"]  # the 21 recorded steps (one failed) were answered by the guest
        await engine.scheduler.quiesce()
        await asyncio.sleep(0.1)  # log lines are written after the invocation
        assert [line.message.strip() for line in await t.logs(iid)] == ["total 190"]  # not again on replay


async def test_a_drift_inside_the_recorded_steps_is_caught_at_its_position(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        iid = await t.create("ReplayMix", {"n": 10, "drift_at": 6})
        await engine.scheduler.quiesce()
        clock.advance(60)
        status = await t.wait(iid)
        assert status.status == "errored" and status.error is not None
        assert status.error.name == "NonDeterminismError"
        assert "position 6" in status.error.message and "the journal has step 's6-" in status.error.message


async def test_a_failed_step_write_is_never_followed_by_the_outcome(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step result commits with the next durable call; if its write fails (here: a disk
    error, once), the outcome must not commit without it: the step runs again instead."""
    import sqlite3

    queue = executor.Invocation.commit_at_next_call
    failures = [sqlite3.OperationalError("disk I/O error")]
    queued = []

    def failing_once(inv: executor.Invocation, op: Any) -> None:
        queued.append(op)

        def broken(conn: Any) -> Any:
            if len(queued) == 2 and failures:  # the last step's result, queued with the outcome
                raise failures.pop()
            return op(conn)

        queue(inv, broken)

    monkeypatch.setattr(executor.Invocation, "commit_at_next_call", failing_once)
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        iid = await t.create("Steps", {"n": 2})
        await engine.scheduler.quiesce()
        clock.advance(1)  # an invocation that failed in the host is retried a second later
        status = await t.wait(iid, timeout=30)
        assert not failures
        assert status.status == "complete" and status.output == {"total": 1}
        assert [(s.name, s.status) for s in status.steps] == [("add", "done"), ("add", "done")]


async def test_an_invocation_failing_in_the_host_is_retried_later_each_time(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host fault that persists (a bug, a full disk) is retried after 1 s, then 2, 4, ...
    (up to 5 minutes), not every second forever; a success resets the count."""
    invoke = executor.Executor.invoke
    calls: list[int] = []

    def failing_thrice(self: executor.Executor, pk: int, *args: Any, **kwargs: Any) -> Any:
        calls.append(clock.now_ms())
        if len(calls) <= 3:
            raise RuntimeError("a host bug")
        return invoke(self, pk, *args, **kwargs)

    monkeypatch.setattr(executor.Executor, "invoke", failing_thrice)
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        iid = await t.create("Steps", {"n": 1})
        await engine.scheduler.quiesce()
        start = calls[0]
        for step_s in (0.9, 0.1, 1.9, 0.1, 3.9, 0.1):
            clock.advance(step_s)
            await engine.scheduler.quiesce()
        assert [at - start for at in calls] == [0, 1000, 3000, 7000]
        assert (await t.wait(iid, timeout=30)).output == {"total": 0}


async def test_an_outcome_reaches_its_waiter_before_the_store_is_let_go(tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker publishes an invocation's outcome before it hands the instance's store to
    the closer thread (woken first, the closer preempted the worker on its core for the
    whole store reset while the outcome waited). A release held back here must not hold
    back `wait()`; the store still goes once it is let through."""
    held, entered = threading.Event(), threading.Event()
    release = executor.Executor.release

    def held_release(self: executor.Executor, store: Any, inv: Any = None) -> None:
        if inv is not None:
            entered.set()
            held.wait(30)
        release(self, store, inv)

    monkeypatch.setattr(executor.Executor, "release", held_release)
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        try:
            status = await t.wait(await t.create("Steps", {"n": 2}), timeout=20)
            assert status.status == "complete" and status.output == {"total": 1}
            assert await asyncio.to_thread(entered.wait, 20), "the store was never released"
            deadline = time.monotonic() + 20
            while engine.scheduler.running_count:  # the outcome, not a poll of the database
                assert time.monotonic() < deadline, "the scheduler heard of the outcome only once the store was let go"
                await asyncio.sleep(0.01)
        finally:
            held.set()
        status = await t.wait(await t.create("Steps", {"n": 1}), timeout=20)  # the worker is free again
        assert status.status == "complete"


async def test_step_result_limits_and_serializability(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        big = await t.wait(await t.create("BigResult", {"size": 2 * 1024 * 1024}))
        assert big.output["caught"] == "StepResultTooLarge"
        assert "the limit is 1 MiB" in big.output["message"]
        fits = await t.wait(await t.create("BigResult", {"size": 1000}))
        assert fits.output == "stored"
        not_json = await t.wait(await t.create("NotJson"))
        assert not_json.status == "errored" and not_json.error is not None
        assert "step 'set' returned a value that is not JSON-serializable" in not_json.error.message
        nested = await t.wait(await t.create("Nested"))
        assert nested.error is not None and nested.error.name == "InvalidDurableCall"
        long_name = await t.wait(await t.create("Named", {"name": "x" * 257}))
        assert long_name.error is not None and "at most 256" in long_name.error.message


async def test_a_long_history_is_read_and_built_off_the_event_loop(tmp_path: Path, clock: ManualClock) -> None:
    """A status of more than INLINE_STATUS_STEPS steps lets other tasks run while it is
    built (a 10,000-step one takes ~0.3 s); a short one is built at once, with no trip."""
    n = INLINE_STATUS_STEPS + 44
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        long_id, short_id = await t.create("Steps", {"n": n}), await t.create("Steps", {"n": INLINE_STATUS_STEPS})
        ticks = 0

        async def bystander() -> None:  # counts the event loop's turns given to other tasks
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        waited = {iid: await t.wait(iid, timeout=60) for iid in (long_id, short_id)}
        task = asyncio.create_task(bystander())
        try:
            await asyncio.sleep(0)
            turns = {}
            for iid in (long_id, short_id):
                before = ticks
                status = await t.status(iid)
                turns[iid] = ticks - before
                assert status == waited[iid]
        finally:
            task.cancel()
        assert turns[long_id] > 0 and turns[short_id] == 0
        long = waited[long_id]
        assert long.status == "complete" and long.output == {"total": sum(range(n))}
        assert [(s.seq, s.name, s.output) for s in long.steps] == [(i, "add", i) for i in range(n)]
        assert len(waited[short_id].steps) == INLINE_STATUS_STEPS


async def test_a_status_pages_through_its_history(tmp_path: Path, clock: ManualClock) -> None:
    """`steps_limit` and `steps_from` cut a page of the steps, inline or (past
    INLINE_STATUS_STEPS) on a thread; `next_steps_from` leads through the rest in order."""
    n = INLINE_STATUS_STEPS + 44
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        iid = await t.create("Steps", {"n": n})
        whole = await t.wait(iid, timeout=60)
        assert whole.next_steps_from is None and len(whole.steps) == n
        for limit in (7, INLINE_STATUS_STEPS, INLINE_STATUS_STEPS + 1):
            pages, start = [], 0
            while True:
                page = await t.status(iid, steps_limit=limit, steps_from=start)
                assert page.model_copy(update={"steps": [], "next_steps_from": None}) == whole.model_copy(update={"steps": []})
                assert len(page.steps) <= limit
                pages.append(page.steps)
                if page.next_steps_from is None:
                    break
                assert page.next_steps_from == page.steps[-1].seq + 1
                start = page.next_steps_from
            assert [s for steps in pages for s in steps] == whole.steps, limit
            assert len(pages) == -(-n // limit)  # no empty page at the end
        assert (await t.status(iid, steps_limit=n)).next_steps_from is None
        none = await t.status(iid, steps_limit=0)
        assert none.steps == [] and none.next_steps_from == 0 and none.output == whole.output
        assert (await t.status(iid, steps_limit=0, steps_from=n)).next_steps_from is None  # nothing at or past the end
        assert (await t.status(iid, steps_from=n - 2)).steps == whole.steps[-2:]
        for bad, message in [
            ({"steps_limit": -1}, "steps_limit must be between 0 and 10000, got -1"),
            ({"steps_limit": 10_001}, "steps_limit must be between 0 and 10000, got 10001"),
            ({"steps_from": -1}, "steps_from must be a step's seq (0 or more), got -1"),
        ]:
            with pytest.raises(InvalidInput, match=re.escape(message)):
                await t.status(iid, **bad)


async def test_a_wait_past_the_longest_ends_the_instance_precisely(tmp_path: Path, clock: ManualClock) -> None:
    """A guest may ask for any u64 of milliseconds: past `max_wait_ms` (365 days) a sleep,
    a sleep_until, an event timeout or a retry delay errs the instance at once. It used to
    overflow SQLite's INTEGER in the host (the invocation failing and retrying every second,
    forever) or store a wake-up no status could turn into a date. A backoff grows to the cap."""
    year = 365 * 86_400_000
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        refused = {
            "sleep": ("Sleeper", {"duration": 2**64 - 1}, "sleep 'nap' is 213,503,982,334 days 51951.6 s, longer than the longest wait (365 days)"),
            "just over": ("Sleeper", {"duration": year + 1}, "sleep 'nap' is 365 days 1 ms, longer than the longest wait (365 days)"),
            "until": ("Sleeper", {"duration": 0, "until": 2**62 // 1000}, "sleep_until 'alarm': the time to wait is"),
            "event": ("Waiter", {"timeout": 2**63}, "wait_for_event 'approval': its timeout is 106,751,991,167 days 25975.8 s, longer than"),
            "retry": ("Retry", {"fail": 1, "delay": 2**63}, "step 'flaky': its retry delay is 106,751,991,167 days 25975.8 s, longer than"),
        }
        ids = {case: await t.create(workflow, params) for case, (workflow, params, _) in refused.items()}
        for case, (_, _, message) in refused.items():
            status = await t.wait(ids[case], timeout=30)
            assert status.status == "errored" and status.error is not None, (case, status)
            assert (status.error.name, status.error.message[: len(message)]) == ("InvalidDuration", message), case
        longest = await t.create("Sleeper", {"duration": year})  # the longest wait itself is fine
        backoff = await t.create("Retry", {"fail": 2, "limit": 3, "delay": year, "backoff": "exponential"})
        await engine.scheduler.quiesce()
        waits = []
        for _ in range(2):
            status = await t.status(backoff)
            assert status.status == "waiting" and status.wake_at is not None
            waits.append(round((status.wake_at.timestamp() * 1000 - clock.now_ms()) / year, 6))
            clock.advance(year / 1000)
            await engine.scheduler.quiesce()
        assert waits == [1.0, 1.0]  # 2 years, capped to one
        assert (await t.wait(backoff, timeout=30)).output["attempt"] == 3
        assert (await t.wait(longest, timeout=30)).output == ["before", "after"]


async def test_an_instances_recorded_state_is_bounded(tmp_path: Path, clock: ManualClock) -> None:
    """Step results add up to at most `max_state_bytes_per_instance`, counted over the whole
    journal (a later invocation counts what earlier ones recorded): the step that would pass
    it fails for good, as the guest sees it."""
    async with open_engine(tmp_path / "flows.db", clock=clock, limits=Limits(max_state_bytes_per_instance=14), deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        steps = await t.wait(await t.create("Steps", {"n": 13}))  # "0".."9": 10 bytes, "10" and "11": 14, "12": 16
        assert steps.status == "errored" and steps.error is not None and steps.error.name == "StateLimitExceeded"
        assert [s.status for s in steps.steps] == ["done"] * 12 + ["failed"]
        assert steps.steps[-1].error is not None and steps.steps[-1].error.name == "StateLimitExceeded"
        assert steps.steps[-1].error.message == "step 'add': its result would bring the instance's recorded state to 16 bytes; the limit is 14 bytes"
        caught = await t.wait(await t.create("BigResult", {"size": 13}))
        assert caught.output == {"caught": "StateLimitExceeded", "message": "step 'big': its result would bring the instance's recorded state to 15 bytes; the limit is 14 bytes"}
        # `before` (8 bytes) in one invocation, `after` (7) in the next, after the sleep: 15 in all.
        sleeper = await t.create("Sleeper", {"duration": "1 minute"})
        await engine.scheduler.quiesce()
        assert (await t.status(sleeper)).status == "waiting"
        clock.advance(60)
        slept = await t.wait(sleeper)
        assert slept.status == "errored" and [s.status for s in slept.steps] == ["done", "done", "failed"]
        assert slept.steps[-1].error is not None and "recorded state to 15 bytes" in slept.steps[-1].error.message


async def test_step_count_limit(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, limits=Limits(max_steps_per_instance=5), deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        status = await t.wait(await t.create("Steps", {"n": 10}))
        assert status.status == "errored" and status.error is not None
        assert status.error.name == "StepLimitExceeded" and "5 durable calls" in status.error.message


async def test_bad_input_gets_precise_errors(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        await t.create("Steps", {"n": 1}, id="dup")
        with pytest.raises(InstanceAlreadyExists, match="'dup' already exists"):
            await t.create("Steps", {"n": 1}, id="dup")
        with pytest.raises(InstanceAlreadyExists):  # a batch with a duplicate creates nothing
            await t.create_batch([{"workflow": "Steps", "id": "fresh"}, {"workflow": "Steps", "id": "dup"}])
        with pytest.raises(InstanceNotFound):
            await t.status("fresh")
        for bad in ("", "-leading-dash", "has space", "x" * 101, "semi;colon"):
            with pytest.raises(InvalidInput):
                await t.create("Steps", id=bad)
        assert len(await t.create("Steps", id="a" * 100)) == 100
        # Just over: exact sizes, where rounding would read "1 MiB; the limit is 1 MiB".
        with pytest.raises(PayloadTooLarge, match=r"^params is 1048587 bytes; the limit is 1048576 bytes$"):
            await t.create("Steps", {"blob": "x" * (1024 * 1024)})
        with pytest.raises(PayloadTooLarge, match=r"^params is 2 MiB; the limit is 1 MiB$"):
            await t.create("Steps", {"blob": "x" * (2 * 1024 * 1024 - 11)})
        with pytest.raises(InvalidInput, match="JSON-serializable"):
            await t.create("Steps", {"bad": {1, 2}})
        with pytest.raises(UnknownWorkflow):
            await t.create("NoSuchFlow")
        with pytest.raises(InvalidInput, match="invalid event type"):
            await t.send_event("dup", "bad type!", {})
        with pytest.raises(PayloadTooLarge):
            await t.send_event("dup", "ok", "x" * (1024 * 1024 + 1))
        with pytest.raises(InstanceNotFound):
            await t.pause("missing")
        with pytest.raises(InvalidInput):
            await t.list(status="sleeping")


async def test_list_filters_and_cursor_paging_and_delete(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics", "u": "basics"}) as engine:
        t, u = engine.tenant("t"), engine.tenant("u")
        ids = await t.create_batch([{"workflow": "Steps", "params": {"n": 1}, "id": f"s{i}"} for i in range(7)])
        await t.create("Sleeper", {"duration": "1 hour"}, id="sleepy")
        await u.create("Steps", id="other-tenant")
        await engine.scheduler.quiesce()
        seen, cursor = [], None
        while True:
            page = await t.list(workflow="Steps", limit=3, cursor=cursor)
            seen += [i.id for i in page.instances]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == list(reversed(ids))
        waiting = await t.list(status="waiting")
        assert [i.id for i in waiting.instances] == ["sleepy"]
        with pytest.raises(InstanceNotFound):  # another tenant's instance looks missing
            await t.status("other-tenant")
        await t.delete("s0")
        with pytest.raises(InstanceNotFound):
            await t.status("s0")


async def test_logs_are_captured_once_despite_replays(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        # Records how many log lines an instance has the moment its new status commits:
        # a reader who sees "waiting" or "complete" must see the lines logged before it.
        with sqlite3.connect(tmp_path / "flows.db") as conn:
            conn.executescript(
                "CREATE TABLE seen (status TEXT, lines INTEGER);"
                "CREATE TRIGGER seen_lines AFTER UPDATE OF status ON instances"
                " WHEN NEW.status IN ('waiting', 'complete') AND NEW.status != OLD.status"
                " BEGIN INSERT INTO seen VALUES (NEW.status, (SELECT count(*) FROM logs WHERE instance_pk = NEW.pk)); END;"
            )
        t = engine.tenant("t")
        iid = await t.create("Chatty")
        await engine.scheduler.quiesce()
        clock.advance(1)
        assert (await t.wait(iid)).output == "ok"
        lines = [(line.stream, line.message.strip()) for line in await t.logs(iid)]
        assert lines == [("stdout", "hello from the guest"), ("info", "a log line"), ("stdout", "after the nap")]
        with sqlite3.connect(tmp_path / "flows.db") as conn:
            assert conn.execute("SELECT status, lines FROM seen").fetchall() == [("waiting", 2), ("complete", 3)]
        # A page at a time: each cursor picks up after the last line, the last page has none.
        first = await t.log_page(iid, limit=2)
        assert [line.message.strip() for line in first.logs] == ["hello from the guest", "a log line"] and first.next_cursor
        rest = await t.log_page(iid, limit=2, cursor=first.next_cursor)
        assert [line.message.strip() for line in rest.logs] == ["after the nap"] and rest.next_cursor is None
        exact = await t.log_page(iid, limit=3)
        assert len(exact.logs) == 3 and exact.next_cursor is None  # no empty page after a full one
        for bad, message in [({"limit": 0}, "limit must be between 1 and 10000, got 0"), ({"cursor": "nope"}, "invalid cursor 'nope'")]:
            with pytest.raises(InvalidInput, match=re.escape(message)):
                await t.log_page(iid, **bad)  # type: ignore[arg-type]


async def test_async_workflows_in_cloudflare_style(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        iid = await t.create("async-flow")
        await engine.scheduler.quiesce()
        clock.advance(1)
        status = await t.wait(iid)
        assert status.output == 3
        assert [s.name for s in status.steps] == ["first", "second", "nap"]


async def test_state_survives_closing_and_reopening_the_engine(tmp_path: Path, clock: ManualClock) -> None:
    db = tmp_path / "flows.db"
    async with open_engine(db, clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        sleeper = await t.create("Sleeper", {"duration": "1 minute"}, id="sleeper")
        waiter = await t.create("Waiter", {"sleep_first": "1 minute"}, id="waiter")
        await engine.scheduler.quiesce()
        await t.send_event(waiter, "approval", {"buffered": True})
    clock.advance(60)
    async with open_engine(db, clock=clock) as engine:
        t = engine.tenant("t")
        assert (await t.wait(sleeper)).output == ["before", "after"]
        assert (await t.wait(waiter)).output == {"type": "approval", "payload": {"buffered": True}}


async def test_a_busy_tenant_does_not_starve_another(tmp_path: Path, clock: ManualClock) -> None:
    async with open_engine(tmp_path / "flows.db", clock=clock, workers=2, per_tenant=1, deploy={"noisy": "basics", "quiet": "basics"}) as engine:
        noisy, quiet = engine.tenant("noisy"), engine.tenant("quiet")
        flood = await noisy.create_batch([{"workflow": "Busy", "params": {"ms": 100, "sleep": 0}} for _ in range(20)])
        one = await quiet.create("Steps", {"n": 1})
        await quiet.wait(one, timeout=60)
        unfinished = [i for i in flood if (await noisy.status(i)).status != "complete"]
        assert len(unfinished) >= 15  # the quiet tenant ran long before the flood drained
        for i in flood:
            await noisy.wait(i, timeout=120)


async def test_finished_invocations_free_their_wasm_stores(tmp_path: Path, clock: ManualClock) -> None:
    """A waiting or finished instance holds no Wasm instance: every store is freed, and
    by reference counting alone (a store in a reference cycle keeps its memory until a
    full collection, which an idle host may not run for minutes)."""
    import gc

    import wasmtime

    def live_stores() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, wasmtime.Store))

    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds stays in gc.garbage
        try:
            await t.create_batch([{"workflow": "Sleeper", "params": {"duration": "1 hour"}} for _ in range(30)])
            await t.create_batch([{"workflow": "Crash"} for _ in range(10)] + [{"workflow": "Retry", "params": {"fail": 1}} for _ in range(10)])
            waiter = await t.create("Waiter", {"timeout": "1 hour"})
            await engine.scheduler.quiesce()
            gc.collect()
            cyclic = [o for o in gc.garbage if isinstance(o, wasmtime.Store)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        assert cyclic == [], f"{len(cyclic)} stores were only freed by the cycle collector"
        assert (status := await t.status(waiter)).status == "waiting", status.error
        tiers = 2 if engine.executor.hot is not None else 1  # a warm pool per engine (hot.py)
        assert live_stores() <= engine.warm_instances * tiers  # only warm instances prepared for the next run


async def test_a_long_invocation_keeps_renewing_its_claim(tmp_path: Path) -> None:
    """Past half its lease a running invocation extends it (with its next commit), so a long
    run never looks abandoned; the claim is cleared when it ends."""
    db = tmp_path / "flows.db"
    async with open_engine(db, clock=SystemClock(), deploy={"t": "basics"}) as engine:
        engine.executor.lease_ms = 200
        t = engine.tenant("t")
        iid = await t.create("Steps", {"n": 5000})  # seconds of durable steps, far past 200 ms
        seen: list[tuple[str, int]] = []
        with sqlite3.connect(db) as conn:
            while True:
                status, owner, lease_until = conn.execute("SELECT status, claim_owner, lease_until FROM instances WHERE id=?", (iid,)).fetchone()
                if status != "running" and seen:
                    break
                if status == "running" and lease_until is not None:
                    seen.append((owner, lease_until))
                await asyncio.sleep(0.03)
            assert (status, owner, lease_until) == ("complete", None, None)
        assert (await t.wait(iid)).output == {"total": sum(range(5000))}
        assert {owner for owner, _ in seen} == {engine.host_id}
        leases = [lease for _, lease in seen]
        assert leases == sorted(leases) and len(set(leases)) >= 3, leases  # extended again and again


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often `wait` read each instance's status (by id)."""
    from tenantflow.engine import TenantBinding

    reads: dict[str, int] = {}
    snapshot = TenantBinding._snapshot

    async def counted(self: TenantBinding, instance_id: str, settled: Any = None) -> Any:
        reads[instance_id] = reads.get(instance_id, 0) + 1
        return await snapshot(self, instance_id, settled)

    monkeypatch.setattr(TenantBinding, "_snapshot", counted)
    return reads


async def test_a_status_waiter_reads_its_instance_only_when_its_invocation_ends(tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    # Reads on the event loop compete for the GIL with the guests' host calls: a waiter
    # must not read its instance before it can have settled (it was just created and
    # runs here), nor each time some other instance's invocation ends.
    from tenantflow import engine as engine_module

    monkeypatch.setattr(engine_module, "WAIT_POLL_S", 60.0)  # no periodic re-read within the test
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        reads = _count_reads(monkeypatch)
        quick = await t.create("Steps", {"n": 1})
        assert (await t.wait(quick, timeout=10)).status == "complete"
        assert reads[quick] == 1  # once, after its invocation ended
        parked = await t.create("Waiter", {"timeout": "1 hour"})
        assert (await t.wait(parked, timeout=10, statuses=frozenset({"waiting"}))).status == "waiting"
        reads.clear()
        waiter = asyncio.create_task(t.wait(parked, timeout=10))
        for _ in range(5):
            await asyncio.sleep(0)
        assert reads == {parked: 1}  # parked on its event: read once, then it watches
        others = [await t.create("Steps", {"n": 1}) for _ in range(3)]
        for other in others:
            await t.wait(other, timeout=10)
        assert reads[parked] == 1  # three other invocations ended: not read again
        await t.send_event(parked, "approval", {"ok": True})
        status = await waiter
        assert status.output == {"type": "approval", "payload": {"ok": True}}
        assert reads[parked] == 2


async def test_a_status_waiter_hears_of_a_terminate_while_its_instance_waits(tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    # No invocation ends when a waiting instance is terminated: the scheduler letting it
    # go must wake its waiter (else it would wait for the next periodic re-read).
    from tenantflow import engine as engine_module

    monkeypatch.setattr(engine_module, "WAIT_POLL_S", 60.0)
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        iid = await t.create("Waiter", {"timeout": "1 hour"})
        waiter = asyncio.create_task(t.wait(iid, timeout=30))
        await engine.scheduler.quiesce()
        assert not waiter.done()
        assert await t.terminate(iid) == "terminated"
        status = await asyncio.wait_for(waiter, 10)
        assert status.status == "terminated"


async def test_finished_instances_past_their_retention_are_deleted(tmp_path: Path, clock: ManualClock) -> None:
    """With `retention_days`, an instance that finished longer ago than that goes with its
    journal, events and logs (a batch per transaction); unfinished and recent ones stay, and
    the tenant's quota count is untouched by finished ones leaving."""
    from tenantflow import retention

    db = tmp_path / "flows.db"
    async with open_engine(db, clock=clock, deploy={"t": "basics"}, retention_days=1) as engine:
        assert engine.retention is not None
        t = engine.tenant("t")
        old = [await t.create("Chatty") for _ in range(3)]  # logs lines, sleeps a second, completes
        failed = await t.create("Uncaught")  # errored: finished too
        await engine.scheduler.quiesce()
        clock.advance(1)
        for iid in old:
            assert (await t.wait(iid)).status == "complete"
        waiting = await t.create("Waiter", {"timeout": "30 days"})
        await engine.scheduler.quiesce()
        clock.advance(86_400 / 2)
        assert await engine.retention.sweep() == 0  # half a day: all kept
        assert (await t.status(failed)).status == "errored"
        clock.advance(86_400)
        recent = await t.wait(await t.create("Steps", {"n": 2}))
        retention.SWEEP_BATCH, batch = 2, retention.SWEEP_BATCH  # several batches in one sweep
        try:
            gone = await engine.retention.sweep()
        finally:
            retention.SWEEP_BATCH = batch
        assert gone == 4 and engine.retention.deleted == 4
        assert "tenantflow_retention_deleted_total 4" in (await Metrics().render(engine)).splitlines()
        for iid in (*old, failed):
            with pytest.raises(InstanceNotFound):
                await t.status(iid)
        assert (await t.status(waiting)).status == "waiting" and (await t.status(recent.id)).status == "complete"
        with sqlite3.connect(db) as conn:
            left = {table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in ("instances", "journal", "logs")}
            assert left["instances"] == 2 and left["logs"] == 0
            assert conn.execute("SELECT unfinished FROM tenant_usage WHERE tenant='t'").fetchone()[0] == 1
    clock.advance(2 * 86_400)
    async with open_engine(db, clock=clock, retention_days=1) as engine:  # a host sweeps as it starts
        deadline = time.monotonic() + 10
        while len((await engine.tenant("t").list()).instances) > 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert [i.id for i in (await engine.tenant("t").list()).instances] == [waiting]
    with pytest.raises(ValueError, match="retention_days must be positive, got 0"):
        Engine(db, retention_days=0)


async def test_a_tenants_policy_sets_its_own_retention(tmp_path: Path, clock: ManualClock) -> None:
    """A platform's plans keep history for different periods: a tenant's policy (its
    manifest's `[limits] retention_days`) replaces the engine's period for that tenant, also
    when the engine keeps everything else."""
    from tenantflow.policy import TenantPolicy

    day = 86_400
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"short": "basics", "other": "basics"}) as engine:
        assert engine.retention is not None
        engine.set_policy("short", TenantPolicy(retention_ms=day * 1000))
        short, other = engine.tenant("short"), engine.tenant("other")
        gone, kept = await short.create("Steps", {"n": 1}), await other.create("Steps", {"n": 1})
        await short.wait(gone), await other.wait(kept)
        clock.advance(2 * day)
        assert await engine.retention.sweep() == 1  # the engine keeps everything; "short" keeps a day
        with pytest.raises(InstanceNotFound):
            await short.status(gone)
        assert (await other.status(kept)).status == "complete"
    async with open_engine(tmp_path / "flows.db", clock=clock, retention_days=10) as engine:
        assert engine.retention is not None
        engine.set_policy("short", TenantPolicy(retention_ms=30 * day * 1000))  # longer than the engine's
        short, other = engine.tenant("short"), engine.tenant("other")
        later = await short.wait(await short.create("Steps", {"n": 1}))
        clock.advance(11 * day)
        assert await engine.retention.sweep() == 1  # other's (13 days old) goes, short's (11) stays
        with pytest.raises(InstanceNotFound):
            await other.status(kept)
        assert (await short.status(later.id)).status == "complete"
        clock.advance(20 * day)
        assert await engine.retention.sweep() == 1 and (await short.list()).instances == []


async def test_events_an_instance_does_not_take_are_bounded(tmp_path: Path, clock: ManualClock) -> None:
    """An instance holds at most `max_pending_events_per_instance` events it has not taken:
    more are refused (QuotaExceeded) until a wait takes one, so a sender cannot fill the
    disk through an instance that never waits for its type."""
    async with open_engine(tmp_path / "flows.db", clock=clock, limits=Limits(max_pending_events_per_instance=2), deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        iid = await t.create("TwoEvents")  # takes two "tick" events
        await engine.scheduler.quiesce()
        for payload in ("a", "b"):
            await t.send_event(iid, "other", payload)  # never taken
        with pytest.raises(QuotaExceeded, match=f"instance '{iid}' holds 2 events it has not taken yet, its limit"):
            await t.send_event(iid, "tick", 1)
        await t.delete(iid)
        again = await t.create("TwoEvents")
        await engine.scheduler.quiesce()
        for payload in (1, 2):  # each taken by a wait as it arrives: never two pending
            await t.send_event(again, "tick", payload)
            await engine.scheduler.quiesce()
        assert (await t.wait(again)).output == [1, 2]


async def test_wait_answers_once_the_scheduler_has_the_outcome(tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiter that polls (every 0.25 s) may read `complete` between the invocation's last
    commit and its outcome reaching the scheduler: it then waits for that outcome, so that
    `stats()` and the scheduler agree with what `wait` answered (a slow machine hit it)."""
    invoke = executor.Executor.invoke

    def published_late(self: executor.Executor, pk: int, control: Any, prepared: Any = None, publish: Any = None) -> Any:
        def late(result: Any) -> None:
            time.sleep(0.6)  # on the worker: committed, not yet told; past two of the waiter's polls
            publish(result)

        return invoke(self, pk, control, prepared, late if publish is not None else None)

    monkeypatch.setattr(executor.Executor, "invoke", published_late)
    async with open_engine(tmp_path / "flows.db", clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        status = await t.wait(await t.create("Steps", {"n": 1}), timeout=30)
        assert status.status == "complete" and engine.stats().scheduler.running == 0
