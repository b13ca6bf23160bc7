"""Isolation: hostile guests compiled from real source, limits reported as what they are,
and a bystander tenant that keeps running normally beside each of them. Plus the isolate
cache (eviction, disk artifacts across restarts, corrupt artifacts) and engine stats."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest
import wasmtime
from enginekit import component, open_engine
from sandboxkit import BYSTANDER, check_bystander, start_bystander

from tenantflow.clock import ManualClock
from tenantflow.engine import Engine
from tenantflow.errors import ComponentError
from tenantflow.isolates import IsolateCache
from tenantflow.limits import Limits, MiB
from tenantflow.policy import TenantPolicy
from tenantflow.sandbox import OutputSink, SandboxConfig, make_engine

HOSTILE = "hostile"
DEPLOY = {HOSTILE: "hostile", BYSTANDER: "basics"}


@dataclass
class Case:
    workflow: str
    params: dict[str, Any]
    status: str
    error: Optional[tuple[str, str]] = None  # (name, message)
    output: Any = None
    limits: Limits = field(default_factory=Limits)
    policy: Optional[TenantPolicy] = None
    bystander_ms: int = 300


CASES = [
    pytest.param(
        Case("LoopOutside", {}, "errored", ("InvocationTimeoutError", "the invocation exceeded its 500 ms budget"),
             limits=Limits(invocation_timeout_ms=500), bystander_ms=50),
        id="infinite-loop-outside-a-step",
    ),
    pytest.param(
        Case("LoopInStep", {"timeout": "300 ms"}, "errored", ("StepTimeoutError", "step 'spin' exceeded its 300 ms timeout")),
        id="infinite-loop-in-a-step",
    ),
    pytest.param(
        Case("LoopInStep", {"timeout": "1 hour"}, "errored", ("StepTimeoutError", "step 'spin' exceeded its 300 ms timeout"),
             policy=TenantPolicy(max_step_timeout_ms=300)),
        id="step-timeout-capped-by-tenant-policy",
    ),
    pytest.param(
        Case("MemoryBomb", {}, "errored", ("MemoryLimitExceeded", "memory limit 256 MiB reached")),
        id="memory-bomb-default-cap",
    ),
    pytest.param(
        Case("MemoryBomb", {"chunk": 1024}, "errored", ("MemoryLimitExceeded", "memory limit 64 MiB reached"),
             policy=TenantPolicy(memory_bytes=64 * MiB)),
        id="memory-bomb-small-pieces-tenant-cap",
    ),
    pytest.param(
        Case("MemoryBombInStep", {}, "errored", ("MemoryLimitExceeded", "memory limit 64 MiB reached"),
             policy=TenantPolicy(memory_bytes=64 * MiB)),
        id="memory-bomb-in-a-step",
    ),
    pytest.param(
        Case("MemoryBomb", {}, "errored",
             ("MemoryLimitExceeded", "memory limit 8 MiB is below what the component needs to start (memory minimum size of 204 pages exceeds memory limits)"),
             policy=TenantPolicy(memory_bytes=8 * MiB)),
        id="memory-cap-below-the-component-minimum",
    ),
    pytest.param(
        Case("DeepRecursion", {"via_c": True}, "errored", ("WorkflowCrashed", "the workflow exhausted its stack (deep recursion)")),
        id="deep-recursion-through-c",
    ),
    pytest.param(
        Case("DeepRecursion", {"via_c": False}, "errored", ("WorkflowCrashed", "the workflow exhausted its stack (deep recursion)")),
        id="deep-recursion-python-limit-lifted",
    ),
    pytest.param(
        Case("ReadPasswd", {}, "complete", output={"error": "FileNotFoundError", "listing_error": "FileNotFoundError"}),
        id="read-etc-passwd",
    ),
    pytest.param(
        Case("ReadEnv", {}, "complete", output={"environ": {}, "argv": [], "getenv_home": None}),
        id="read-the-environment",
    ),
    pytest.param(
        Case("OpenSocket", {}, "complete", output={"error": "ImportError", "message": "No module named 'socket'"}),
        id="open-a-socket",
    ),
    pytest.param(
        Case("HugeStepResult", {}, "errored", ("StepResultTooLarge", "step 'huge' returned 50 MiB; the limit is 1 MiB")),
        id="50-MiB-step-result",
    ),
    pytest.param(
        Case("NotJSON", {"bad": "{not json"}, "complete",
             output={"refused": ["StepResultNotJSON", "step 'raw' returned text that is not JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"]}),
        id="step-result-not-json",
    ),
    pytest.param(
        Case("NotJSON", {"bad": "NaN"}, "complete", output={"refused": ["StepResultNotJSON", "step 'raw' returned text that is not JSON: NaN is not JSON"]}),
        id="step-result-nan",
    ),
    pytest.param(
        Case("NotJSON", {"bad": "[1, 2", "output": True}, "errored",
             ("OutputNotJSON", "the workflow returned text that is not JSON: Expecting ',' delimiter: line 1 column 6 (char 5)")),
        id="output-not-json",
    ),
    pytest.param(
        Case("NotJSON", {"digits": 2 * MiB, "output": True}, "errored", ("OutputTooLarge", "the workflow returned 2 MiB; the limit is 1 MiB")),
        id="output-over-the-limit",
    ),
    pytest.param(
        Case("Abort", {}, "errored", ("WorkflowCrashed", "the workflow exited the interpreter (exit status 1)")),
        id="exit-the-interpreter",
    ),
]


@pytest.mark.parametrize("case", CASES)
async def test_hostile_guest_gets_a_precise_error_and_a_bystander_runs_normally(tmp_path: Path, case: Case) -> None:
    async with open_engine(tmp_path / "flows.db", limits=case.limits, deploy=DEPLOY) as engine:
        if case.policy is not None:
            engine.set_policy(HOSTILE, case.policy)
        hostile = engine.tenant(HOSTILE)
        iid = await hostile.create(case.workflow, case.params)
        bystander = await start_bystander(engine, case.bystander_ms)
        status = await hostile.wait(iid, timeout=120)
        await check_bystander(engine, bystander)
        assert status.status == case.status, status
        if case.error is not None:
            assert status.error is not None
            assert (status.error.name, status.error.message) == case.error
        else:
            assert status.output == case.output
        await engine.scheduler.quiesce()  # the outcome is committed before the invocation has wound down
        assert engine.stats().isolates.live_instances == 0  # nothing leaked, even after traps


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


async def test_printing_100_MiB_keeps_a_bounded_log_and_bounded_host_memory(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "flows.db", deploy=DEPLOY) as engine:
        hostile = engine.tenant(HOSTILE)
        # The process's peak resident memory, reset here (not tracemalloc: on Python 3.11 its
        # allocation hook crashes when wasmtime's output threads enter a ctypes callback).
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = rss_kib("VmRSS")
        iid = await hostile.create("Shout", {"mib": 100})
        bystander = await start_bystander(engine)
        status = await hostile.wait(iid, timeout=120)
        await engine.scheduler.quiesce()
        peak = (rss_kib("VmHWM") - before) * 1024
        await check_bystander(engine, bystander)
        assert status.output == "shouted"
        await engine.write(lambda conn: None)  # the log lines were submitted before: now they are durable
        status = await hostile.status(iid)
        lines = await hostile.logs(iid, limit=10_000)
        kept = sum(len(line.message.encode()) for line in lines)
        assert kept <= engine.limits.max_log_bytes_per_instance
        assert kept + status.log_dropped_bytes == 100 * (MiB - 1) + len("done shouting")  # every byte but newlines
        assert all(line.stream == "stdout" for line in lines)  # stderr came last: over the budget
        # The host buffered at most the log budget (plus one partial line), never the 100 MiB
        # (the peak includes the guest's own memory, and the bystander's).
        assert peak < 48 * MiB, f"the host's resident memory grew by {peak / MiB:.1f} MiB at its peak"


async def test_empty_lines_count_against_a_log_budget_of_lines(tmp_path: Path) -> None:
    """An empty line costs no bytes, yet a row (and host memory while its invocation runs):
    an instance keeps at most `max_log_lines_per_instance` lines, over all its invocations."""
    async with open_engine(tmp_path / "flows.db", deploy=DEPLOY) as engine:
        hostile = engine.tenant(HOSTILE)
        iid = await hostile.create("Shout", {"lines": 30_000, "line_bytes": 1})  # 30,000 print("")
        assert (await hostile.wait(iid, timeout=120)).output == "shouted"
        await engine.write(lambda conn: None)  # the log lines were submitted before: now they are durable
        with sqlite3.connect(tmp_path / "flows.db") as conn:
            stored = conn.execute("SELECT COUNT(*) FROM logs").fetchone()[0]
        assert stored == engine.limits.max_log_lines_per_instance == 10_000
        page = await hostile.log_page(iid, limit=10_000)
        assert len(page.logs) == 10_000 and page.next_cursor is None and {line.message for line in page.logs} == {""}
    clock = ManualClock()
    async with open_engine(tmp_path / "chatty.db", limits=Limits(max_log_lines_per_instance=2), clock=clock, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        iid = await t.create("Chatty")  # two lines, a sleep, a line in the next invocation
        await engine.scheduler.quiesce()
        clock.advance(1)
        status = await t.wait(iid)
        assert status.output == "ok" and status.log_dropped_bytes == len("after the nap")
        assert [line.message for line in await t.logs(iid)] == ["hello from the guest", "a log line"]


async def test_a_guests_errors_and_retries_are_recorded_within_bounds(tmp_path: Path) -> None:
    """A guest's exception may be as large as its memory and a retry limit beyond waiting
    out: what is journaled (and sent with every status) stays bounded. Errors are cut to
    `max_error_name_bytes` / `max_error_message_bytes`, saying so; a step keeps its last
    `max_attempt_history` failed attempts while `attempts` counts them all."""
    db = tmp_path / "flows.db"
    limits = Limits(invocation_timeout_ms=3000)
    async with open_engine(db, limits=limits, deploy=DEPLOY) as engine:
        hostile = engine.tenant(HOSTILE)
        huge = await hostile.wait(await hostile.create("HugeError", {"mib": 8, "name_chars": 1000}), timeout=120)
        assert huge.status == "errored" and huge.error is not None
        [step] = huge.steps
        assert step.error is not None and len(step.failed_attempts) == 1
        for error, filler in ((huge.error, "y"), (step.error, "x"), (step.failed_attempts[0].error, "x")):
            assert len(error.name.encode()) <= limits.max_error_name_bytes and error.name.endswith(" ... [cut: 1000 bytes in all]")
            assert error.name.startswith("E" * 200)
            assert len(error.message.encode()) <= limits.max_error_message_bytes and error.message.startswith(filler * 16_000)
            assert error.message.endswith(" ... [cut: 8 MiB in all]")
        forever = await hostile.wait(await hostile.create("RetryForever"), timeout=120)  # until its invocation's budget ends
        assert forever.status == "errored", forever.error
        [step] = forever.steps
        assert step.attempts > limits.max_attempt_history == len(step.failed_attempts)
        assert [a.attempt for a in step.failed_attempts] == list(range(step.attempts - 24, step.attempts + 1))
        assert {a.error.message for a in step.failed_attempts} == {"down again"}
    with sqlite3.connect(db) as conn:
        [(longest_message, longest_history)] = conn.execute("SELECT MAX(LENGTH(error_message)), MAX(LENGTH(history)) FROM journal")
        assert longest_message <= limits.max_error_message_bytes and longest_history < 25 * limits.max_error_message_bytes


async def test_invalid_components_are_refused_precisely_and_the_engine_keeps_working(tmp_path: Path) -> None:
    real = component("basics").read_bytes()
    async with open_engine(tmp_path / "flows.db") as engine:
        with pytest.raises(ComponentError, match=r"is not WebAssembly: it does not start with the '\\0asm' magic"):
            await engine.deploy("t", b"this is not wasm")
        with pytest.raises(ComponentError, match="is a core WebAssembly module, not a component"):
            await engine.deploy("t", b"\0asm\x01\0\0\0")
        with pytest.raises(ComponentError, match="is not a valid WebAssembly component: .*"):
            await engine.deploy("t", real[: len(real) // 2])
        await engine.deploy("t", real)
        status = await engine.tenant("t").wait(await engine.tenant("t").create("Steps", {"n": 3}))
        assert status.output == {"total": 3}


async def test_components_survive_engine_restarts_as_disk_artifacts(tmp_path: Path) -> None:
    artifacts, db, clock = tmp_path / "artifacts", tmp_path / "flows.db", ManualClock()
    wasm = component("basics").read_bytes()

    async def run(expect_output: int, deploy: bool = False) -> Engine:
        engine = Engine(db, clock=clock, artifact_dir=artifacts)
        async with engine:
            t = engine.tenant("t")
            if deploy:
                await engine.deploy("t", wasm)
            status = await t.wait(await t.create("Steps", {"n": expect_output}))
            assert status.output == {"total": sum(range(expect_output))}
            stats = engine.stats()
            assert stats.isolates.live_instances == 0 and stats.scheduler.running == 0
            assert stats.writer.commits > 0 and stats.writer.operations >= stats.writer.commits
        return engine

    first = (await run(3, deploy=True)).stats().isolates
    assert (first.compiles, first.disk_hits, first.corrupt_artifacts) == (1, 0, 0)
    assert first.instantiations >= 2 and first.instantiate_seconds_mean > 0

    second = (await run(4)).stats().isolates  # a new process would see the same: no compile
    assert (second.compiles, second.disk_hits, second.misses) == (0, 1, 1)

    (artifact,) = artifacts.glob("*.cwasm")
    damage(artifact, artifact.read_bytes()[:4096])
    third = (await run(5)).stats().isolates
    assert (third.corrupt_artifacts, third.compiles, third.disk_hits) == (1, 1, 0)
    assert artifact.stat().st_size > 4096  # rewritten


def damage(artifact: Path, data: bytes) -> None:
    """Replace an artifact's content (a new file, as any writer must: loaded artifacts are
    memory-mapped, and truncating one in place under a live component crashes the process)."""
    tmp = artifact.with_name(artifact.name + ".damaged")
    tmp.write_bytes(data)
    os.replace(tmp, artifact)


# ---- the isolate cache on its own, with tiny components (milliseconds to compile) ----


def tiny(n: int) -> bytes:
    return bytes(wasmtime.wat2wasm(f'(component (core module (func (export "f{n}"))))'))


class Loader:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, n: int) -> Any:
        def load() -> bytes:
            self.calls.append(n)
            return tiny(n)

        return load


def cache(artifacts: Optional[Path], **kwargs: Any) -> IsolateCache:
    config = SandboxConfig()
    return IsolateCache(make_engine(config), config, artifacts, **kwargs)


def key(n: int) -> str:
    return f"{n:064x}"


def test_cache_evicts_least_recently_used_by_count() -> None:
    c, load = cache(None, max_count=2), Loader()
    for n in (1, 2, 3):
        c.get(key(n), load(n))
    assert key(1) not in c and key(2) in c and key(3) in c
    c.get(key(2), load(2))  # a hit refreshes 2: 3 is now the least recently used
    c.get(key(4), load(4))
    assert [key(n) in c for n in (2, 3, 4)] == [True, False, True]
    assert (c.stats.hits, c.stats.misses, c.stats.compiles, c.stats.evictions) == (1, 4, 4, 2)
    assert load.calls == [1, 2, 3, 4]  # the loader only ever ran on a miss


def test_cache_evicts_by_bytes() -> None:
    c, load = cache(None), Loader()
    c.get(key(1), load(1))
    one = c.resident_bytes
    c.max_bytes = int(one * 2.5)
    c.get(key(2), load(2))
    c.get(key(3), load(3))
    assert c.resident_count == 2 and c.resident_bytes <= c.max_bytes and key(1) not in c
    assert c.stats.evictions == 1


def test_cache_evicts_idle_components() -> None:
    now = [1000.0]
    c, load = cache(None, idle_seconds=60, clock=lambda: now[0]), Loader()
    c.get(key(1), load(1))
    now[0] += 30
    c.get(key(2), load(2))
    now[0] += 31  # 1 idle for 61 s, 2 for 31 s
    assert c.evict_idle() == 1 and key(1) not in c and key(2) in c
    now[0] += 60
    c.get(key(3), load(3))  # a lookup also drops what idled out
    assert key(2) not in c and c.resident_count == 1 and c.stats.evictions == 2


def test_concurrent_misses_compile_once(tmp_path: Path) -> None:
    c, load = cache(tmp_path), Loader()
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        c.get(key(7), load(7))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert load.calls == [7] and c.stats.compiles == 1 and c.stats.hits + c.stats.misses == 8


def test_disk_artifacts_are_reused_and_corrupt_ones_recompiled(tmp_path: Path) -> None:
    first, load = cache(tmp_path), Loader()
    first.get(key(1), load(1))
    path = first.artifact_path(key(1))
    assert path is not None and path.is_file()

    second = cache(tmp_path)  # another engine (process) on the same artifact directory
    second.get(key(1), load(1))
    assert (second.stats.disk_hits, second.stats.compiles) == (1, 0) and load.calls == [1]

    for bad in (b"", b"garbage" * 100, path.read_bytes()[:100]):
        damage(path, bad)
        third = cache(tmp_path)
        third.get(key(1), load(1))
        assert (third.stats.corrupt_artifacts, third.stats.compiles, third.stats.disk_hits) == (1, 1, 0)
    assert cache(tmp_path).get(key(1), load(1)) is not None and path.stat().st_size > 100


def test_artifacts_of_another_engine_configuration_are_not_used(tmp_path: Path) -> None:
    load = Loader()
    IsolateCache(make_engine(SandboxConfig()), SandboxConfig(), tmp_path).get(key(1), load(1))
    other = SandboxConfig(max_wasm_stack=512 * 1024)
    c = IsolateCache(make_engine(other), other, tmp_path)
    c.get(key(1), load(1))
    assert (c.stats.disk_hits, c.stats.compiles) == (0, 1) and len(list(tmp_path.glob("*.cwasm"))) == 2


async def test_engine_stats_report_the_scheduler_and_cache(tmp_path: Path) -> None:
    async with open_engine(tmp_path / "flows.db", workers=1, deploy={"t": "basics"}) as engine:
        t = engine.tenant("t")
        busy = await t.create("Busy", {"ms": 1500, "sleep": 0})
        queued = await t.create("Steps", {"n": 1})
        await t.wait(busy, statuses=frozenset({"running"}))
        stats = engine.stats()
        assert (stats.scheduler.running, stats.scheduler.queued) == (1, 1)
        await t.wait(queued)
        await asyncio.sleep(0)
        stats = engine.stats()
        assert stats.isolates.hits >= 2 and stats.isolates.resident_components == 1
        assert stats.model_dump()["isolates"]["instantiations"] >= 3


def test_output_sinks_reach_their_consumer_weakly() -> None:
    """wasmtime-wasi writes a guest's output from its own threads and drops the callback
    there, maybe after the store is gone: the callback must not keep the invocation (and
    what it holds) alive, and a late write must go nowhere."""

    class Consumer:
        def __init__(self) -> None:
            self.got: list[tuple[str, bytes]] = []

        def write_output(self, stream: str, data: bytes) -> None:
            self.got.append((stream, data))

    consumer = Consumer()
    sink = OutputSink(consumer.write_output, "stderr")
    writer = threading.Thread(target=sink, args=(b"from another thread",))
    writer.start()
    writer.join()
    assert consumer.got == [("stderr", b"from another thread")]
    gone = weakref.ref(consumer)
    del consumer
    assert gone() is None
    sink(b"late")  # no consumer: dropped, no error


@pytest.mark.parametrize("bad", ["{not json", "NaN", "[1] [2]"])
async def test_text_that_is_not_json_handed_to_the_children_interface_is_refused(tmp_path: Path, bad: str) -> None:
    """A child's params and an event's payload from a guest's raw bindings are checked like
    a step's result: a precise, catchable error, nothing created or sent (before, a parse
    error escaped the host call and the invocation failed in the host, retried forever)."""
    async with open_engine(tmp_path / "flows.db", deploy=DEPLOY) as engine:
        hostile = engine.tenant(HOSTILE)
        target = await hostile.create("Shout", {"lines": 0})  # an instance to send to
        status = await hostile.wait(await hostile.create("ChildNotJSON", {"bad": bad, "target": target}), timeout=120)
        assert status.status == "complete", status.error
        assert status.output["start"][0] == "InvalidInput" and status.output["start"][1].startswith("params of child 0 are not JSON: ")
        assert status.output["send_event"][0] == "InvalidInput" and status.output["send_event"][1].startswith("event payload is not JSON: ")
        assert [i.id for i in (await hostile.list()).instances if i.workflow == "ChildNotJSON"] == [status.id]
